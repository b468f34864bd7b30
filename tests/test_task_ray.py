"""A user's own model, data, loss and metric under real Ray Tune (tune.run and tune.Tuner) through
``tune.with_parameters(IFTTrainable, task=...)``, recorded in a real SQLite Optuna study.

Run inside a loopback-only network namespace (README's test command)."""
from __future__ import annotations

import sys

import optuna
import pytest
import ray.cloudpickle
from optuna.trial import TrialState
from ray import tune

from hybrid_hpo import Task
from hybrid_hpo.tune import IFTTrainable, IntRange, LogUniform, make_search

import test_task  # noqa: E402 - the user's model, dataset and factory, defined in a test file

# Ray's workers cannot import the tests folder: ship the test modules' classes and functions by value,
# as cloudpickle does for a user's __main__ script.
ray.cloudpickle.register_pickle_by_value(test_task)
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])

FIXED = {"family": "weight_decay", "epochs": 2, "batch_size": 32, "inner_steps": 2, "solver.terms": 2, "device": "cpu",
         "val_fraction": 0.25}


@pytest.fixture(autouse=True)
def _quiet_optuna():
    optuna.logging.set_verbosity(optuna.logging.WARNING)


def _study_holds_test_metrics(search, results: list[dict]) -> None:
    study = optuna.load_study(study_name=search.study.study_name, storage=search.study._storage)
    by_ray_id = {trial.user_attrs["ray_trial_id"]: trial for trial in study.trials}
    assert len(study.trials) == len(results) == len(by_ray_id)
    for result in results:
        trial = by_ray_id[result["trial_id"]]
        assert trial.state == TrialState.COMPLETE and trial.value == result["sel_loss_best"]
        for key in ("test_mae", "test_loss", "val_mae"):
            assert trial.user_attrs[key] == result[key], key


def test_tune_run_with_a_task_factory_and_tuner_with_a_task_object(ray_session, tmp_path):
    storage = f"sqlite:///{tmp_path}/optuna.sqlite3"
    search = make_search({"inner_lr": LogUniform(low=1e-2, high=0.1), "hidden": IntRange(low=4, high=32)},
                         storage=storage, seed=0, n_startup_trials=2, results_dir=tmp_path)
    analysis = tune.run(tune.with_parameters(IFTTrainable, task=test_task.make_task), config=dict(FIXED),
                        search_alg=search, num_samples=2, metric="sel_loss_best", mode="min",
                        resources_per_trial={"cpu": 1}, storage_path=str(tmp_path / "run"), name="factory",
                        verbose=0, reuse_actors=True)
    results = [trial.last_result for trial in analysis.trials]
    assert all(trial.status == "TERMINATED" for trial in analysis.trials)
    for trial, result in zip(analysis.trials, results):
        width = trial.config["hidden"]  # the factory built the network this wide
        assert result["num_hparams"] == test_task.FEATURES * width + width
        assert result["training_iteration"] == 2 and "test_acc" not in result
    _study_holds_test_metrics(search, results)

    task = Task(model=test_task.Regressor(8), data=test_task.regression_data(160, 0),
                test=test_task.regression_data(80, 1), loss=test_task.squared_error,
                metrics={"mae": test_task.absolute_error})
    search = make_search({"inner_lr": LogUniform(low=1e-2, high=0.1)}, storage=storage, seed=1,
                         n_startup_trials=2, results_dir=tmp_path)
    grid = tune.Tuner(tune.with_parameters(IFTTrainable, task=task), param_space={**FIXED, "hidden": [8]},
                      tune_config=tune.TuneConfig(search_alg=search, num_samples=2, metric="sel_loss_best", mode="min",
                                                  reuse_actors=True),
                      run_config=tune.RunConfig(storage_path=str(tmp_path / "tuner"), name="object", verbose=0)).fit()
    results = [result.metrics for result in grid]
    assert not grid.errors and all(r["num_hparams"] == test_task.FEATURES * 8 + 8 for r in results)
    _study_holds_test_metrics(search, results)
