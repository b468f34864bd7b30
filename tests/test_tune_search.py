"""RecordingOptunaSearch without a Ray cluster: the Tune callbacks driven by hand on a SQLite study."""
from __future__ import annotations

import math
import warnings

import optuna
import pytest
from optuna.trial import TrialState
from ray import tune

from hybrid_hpo.errors import ConfigError
from hybrid_hpo.tune import Choice, IntRange, LogUniform, Uniform, make_search
from hybrid_hpo.tune.search import close_running


def _search(tmp_path, **kwargs):
    space = {"inner_lr": LogUniform(low=1e-3, high=0.3), "solver.terms": IntRange(low=1, high=8)}
    return make_search(space, "val_loss", "min", storage=f"sqlite:///{tmp_path}/s.db", seed=0, **kwargs)


def _result(step, val_loss, epochs=2, **extra):
    return {"val_loss": val_loss, "training_iteration": step, "config/epochs": epochs, "hostname": "h",
            "pid": 1, "time_total_s": 0.5 * step, "done": step == epochs, "trial_id": "x", **extra}


def _trial(search, number=0):
    return search.study.get_trials()[number]


def test_complete_trial_has_every_epoch_and_metrics_as_user_attrs(tmp_path):
    search = _search(tmp_path)
    config = search.suggest("ray-a")
    assert set(config) == {"inner_lr", "solver.terms"} and 1e-3 <= config["inner_lr"] <= 0.3
    search.on_trial_result("ray-a", _result(1, 0.9, test_acc=0.5))
    # Tune sends the last result only to on_trial_complete, never to on_trial_result.
    search.on_trial_complete("ray-a", _result(2, 0.4, test_acc=0.8, test_loss=0.6, solver_residual=math.nan))
    trial = optuna.load_study(study_name=search.study.study_name, storage=f"sqlite:///{tmp_path}/s.db").trials[0]
    assert trial.state == TrialState.COMPLETE and trial.value == 0.4
    assert trial.intermediate_values == {1: 0.9, 2: 0.4}
    assert trial.user_attrs["ray_trial_id"] == "ray-a"
    assert trial.user_attrs["test_acc"] == 0.8 and trial.user_attrs["test_loss"] == 0.6
    assert trial.user_attrs["solver_residual"] == "nan"  # non-finite kept readable, JSON stays valid
    assert trial.user_attrs["time_total_s"] == 1.0 and trial.user_attrs["training_iteration"] == 2
    assert not {"hostname", "pid", "done", "val_loss", "config/epochs"} & set(trial.user_attrs)


def test_scheduler_stop_is_pruned_error_and_nan_are_fail(tmp_path):
    search = _search(tmp_path)
    for ray_id in ("early", "error", "nan"):
        search.suggest(ray_id)
    search.on_trial_result("early", _result(1, 0.7, epochs=4))
    search.on_trial_complete("early", _result(1, 0.7, epochs=4))  # ASHA stopped it after epoch 1 of 4
    search.on_trial_complete("error", None, error=True)
    search.on_trial_complete("nan", _result(2, math.nan))
    states = {t.user_attrs["ray_trial_id"]: t for t in search.study.get_trials()}
    assert states["early"].state == TrialState.PRUNED and states["early"].intermediate_values == {1: 0.7}
    assert "stopped by the scheduler at iteration 1 of 4" in states["early"].user_attrs["end_reason"]
    assert states["error"].state == TrialState.FAIL
    assert states["nan"].state == TrialState.FAIL and states["nan"].user_attrs["end_reason"] == "val_loss is nan"


def test_close_running_closes_only_this_sweeps_running_trials(tmp_path):
    search = _search(tmp_path)
    other = make_search(search._space, "val_loss", "min", storage=search.study._storage,
                        study_name=search.study.study_name, seed=1)  # a second driver on the same study
    assert other.sweep_id != search.sweep_id
    search.suggest("done")
    search.on_trial_complete("done", _result(2, 0.3))
    search.suggest("orphan")
    other.suggest("live")  # the other driver's trial, still running
    assert close_running(search.study._storage, search.study.study_name, search.sweep_id) == 1
    states = {t.user_attrs["ray_trial_id"]: (t.state, t.user_attrs["sweep_id"]) for t in search.study.get_trials()}
    assert states == {"done": (TrialState.COMPLETE, search.sweep_id), "orphan": (TrialState.FAIL, search.sweep_id),
                      "live": (TrialState.RUNNING, other.sweep_id)}
    other.on_trial_complete("live", _result(2, 0.4))  # the other driver can still tell its trial
    assert [t.state for t in other.study.get_trials()] == [TrialState.COMPLETE, TrialState.FAIL, TrialState.COMPLETE]


def test_initial_point_with_a_key_left_out_is_sampled(tmp_path):
    search = _search(tmp_path, points_to_evaluate=[{"inner_lr": 0.05}])
    config = search.suggest("warm")
    assert config["inner_lr"] == 0.05 and 1 <= config["solver.terms"] <= 8


def test_space_accepts_ours_ray_domains_and_optuna_distributions(tmp_path):
    search = make_search(
        {"inner_lr": tune.loguniform(1e-3, 1e-1), "inner_steps": tune.randint(1, 5),
         "val_fraction": Uniform(low=0.2, high=0.6), "inner_optimizer": Choice(values=["sgd", "adam"]),
         "solver.alpha": optuna.distributions.FloatDistribution(0.01, 0.5)},
        storage=f"sqlite:///{tmp_path}/s.db", sampler="gp",
    )
    assert search._space == {
        "inner_lr": optuna.distributions.FloatDistribution(1e-3, 1e-1, log=True),
        "inner_steps": optuna.distributions.IntDistribution(1, 4),  # Ray's randint excludes the upper end
        "val_fraction": optuna.distributions.FloatDistribution(0.2, 0.6),
        "inner_optimizer": optuna.distributions.CategoricalDistribution(("sgd", "adam")),
        "solver.alpha": optuna.distributions.FloatDistribution(0.01, 0.5),
    }
    assert isinstance(search.study.sampler, optuna.samplers.GPSampler)


def test_the_study_names_its_objective_after_the_metric(tmp_path):
    url = f"sqlite:///{tmp_path}/s.db"
    search = make_search({"inner_lr": LogUniform(low=1e-3, high=0.3)}, "val_acc", "max", storage=url)
    stored = optuna.load_study(study_name=search.study.study_name, storage=url)
    assert stored.metric_names == ["val_acc"]  # what optuna-dashboard shows instead of "Objective 0"


def test_default_storage_and_unique_study_names(tmp_path):
    first, second = (make_search({"inner_lr": LogUniform(low=1e-3, high=0.3)}, results_dir=tmp_path) for _ in range(2))
    assert (tmp_path / "optuna.sqlite3").is_file()
    assert first.study.study_name != second.study.study_name
    assert len(optuna.get_all_study_names(f"sqlite:///{tmp_path}/optuna.sqlite3")) == 2


@pytest.mark.parametrize("space, message", [
    ({"inner_lr": 0.1}, "space.inner_lr: float is not a distribution"),
    ({}, "space: empty search space"),
])
def test_bad_space_is_a_config_error(tmp_path, space, message):
    with pytest.raises(ConfigError, match=message):
        make_search(space, storage=f"sqlite:///{tmp_path}/s.db")


def test_make_search_refuses_a_test_metric_like_specs_do(tmp_path):
    with pytest.raises(ConfigError, match="metric: test_acc would tune on the test set; use sel_loss_best or sel_acc_best"):
        make_search({"inner_lr": LogUniform(low=1e-2, high=0.3)}, metric="test_acc", mode="max",
                    storage=f"sqlite:///{tmp_path}/s.db")
    assert not (tmp_path / "s.db").exists()


def test_restarted_trial_does_not_report_an_epoch_twice(tmp_path):
    search = _search(tmp_path)
    search.suggest("r")
    search.on_trial_result("r", _result(1, 0.9))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # Optuna warns when a step is reported twice
        search.on_trial_result("r", _result(1, 0.9))  # the trial restarted from scratch on resume
        search.on_trial_complete("r", _result(2, 0.5))
    assert _trial(search).intermediate_values == {1: 0.9, 2: 0.5}


@pytest.mark.parametrize("storage", ["sqlite", "memory"])
def test_user_attributes_are_written_in_one_transaction_and_all_arrive(tmp_path, storage):
    from sqlalchemy import event

    from hybrid_hpo.tune.search import set_user_attrs

    url = f"sqlite:///{tmp_path}/s.db"
    study = optuna.create_study(storage=url if storage == "sqlite" else None)
    trial = study.ask()
    commits = []
    if storage == "sqlite":
        event.listen(study._storage._backend.engine, "commit", lambda connection: commits.append(1))
    attrs = {f"metric_{i}": i / 4 for i in range(40)} | {"node_id": "abc", "end_reason": "stopped"}
    set_user_attrs(trial, attrs)
    assert trial.user_attrs == attrs
    if storage == "sqlite":
        assert len(commits) == 1
        assert optuna.load_study(study_name=study.study_name, storage=url).trials[0].user_attrs == attrs
    study.tell(trial, 1.0)
    with pytest.raises(RuntimeError):  # a finished trial takes no more attributes, batched or not
        set_user_attrs(trial, {"late": 1})


def test_a_batch_that_meets_a_concurrent_write_falls_back_to_one_write_per_key(tmp_path, monkeypatch):
    """Nothing is lost when the one transaction is rolled back (a row written meanwhile)."""
    from sqlalchemy.exc import IntegrityError

    from hybrid_hpo.tune.search import set_user_attrs

    url = f"sqlite:///{tmp_path}/s.db"
    study = optuna.create_study(storage=url)
    trial = study.ask()
    rdb = study._storage._backend
    write = rdb._set_trial_attr_without_commit
    calls = []

    def collide_once(session, model, trial_id, key, value):
        calls.append(key)
        if len(calls) == 3:
            raise IntegrityError("INSERT", {}, Exception("UNIQUE constraint failed"))
        return write(session, model, trial_id, key, value)

    monkeypatch.setattr(rdb, "_set_trial_attr_without_commit", collide_once)
    attrs = {f"metric_{i}": float(i) for i in range(6)}
    set_user_attrs(trial, attrs)
    assert len(calls) == 3 + len(attrs)  # the batch stopped at its third key, then each key on its own
    assert optuna.load_study(study_name=study.study_name, storage=url).trials[0].user_attrs == attrs
