"""``scheduler: pbt``: an exploited trial continues from the better trial's weights and λ with its own,
perturbed meta-settings; the study records every trial. One real PBT sweep on the shared Ray
instance (loopback-only network namespace, README's test command); the rest without Ray."""
from __future__ import annotations

import json
import math

import optuna
import pytest
import torch
import yaml
from optuna.trial import TrialState

from hybrid_hpo import cli
from hybrid_hpo.bilevel import BilevelTrainer
from hybrid_hpo.config import RunConfig
from hybrid_hpo.errors import ConfigError
from hybrid_hpo.tune.pbt import ClipToSpace
from hybrid_hpo.tune.plan import plan_sweep
from hybrid_hpo.tune import sweep
from hybrid_hpo.tune.spec import validate_spec
from hybrid_hpo.tune.sweep import run_sweep

EPOCHS = 8
SPEC = {
    "task": {"dataset": "digits", "train_size": 64, "val_size": 64, "model": "mlp", "hidden": [16],
             "batch_size": 32, "epochs": EPOCHS},
    "solver": {"name": "neumann", "terms": 2},
    "search": {"inner_lr": {"type": "loguniform", "low": 1.0e-4, "high": 0.5},
               "hyper_lr": {"type": "loguniform", "low": 1.0e-3, "high": 0.1}},
    # synchronous PBT: every perturbation point waits for the whole population (the test session's Ray has
    # 2 CPUs for 4 trials), so which trials exploit does not depend on how fast actors start
    "num_trials": 4, "max_concurrent": 4, "scheduler": "pbt",
    "pbt": {"perturbation_interval": 2, "quantile_fraction": 0.5, "resample_probability": 0.0, "synch": True},
    # the second trial learns almost nothing: it is in the bottom half at the first perturbation point
    "initial_points": [{"inner_lr": 0.3}, {"inner_lr": 1.0e-4}],
    "resources": {"cpu": 1, "gpu": 0},
}


def _clip(value: float, low: float, high: float) -> float:
    return min(max(value, low), high)


def test_an_exploited_trial_restores_the_source_trials_lambda_and_perturbs_its_meta_settings(ray_session, tmp_path,
                                                                                             capsys, monkeypatch):
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    (tmp_path / "pbt.yaml").write_text(yaml.safe_dump(SPEC))
    results = tmp_path / "results"
    outcomes = []
    monkeypatch.setattr(sweep, "run_sweep", lambda *a, **k: outcomes.append(run_sweep(*a, **k)) or outcomes[-1])
    code = cli.main(["sweep", str(tmp_path / "pbt.yaml"), "--results-dir", str(results)])
    assert code == 0, capsys.readouterr().out[-3000:]
    # the sweep's histories hold every epoch each trial reported, across its restarts (synchronous PBT:
    # an exploit restores the source's checkpoint of the same epoch, so each trial reports epochs 1..8 once)
    assert len(outcomes[0].histories) == 4
    for history in outcomes[0].histories.values():
        assert [row["training_iteration"] for row in history] == list(range(1, EPOCHS + 1))
        assert all(math.isfinite(row["sel_loss"]) for row in history)
    # Ray starts a trial's result.json afresh when it restarts the trial on a new actor (PBT pauses and
    # restarts trials): earlier rows may be missing, the last row is always there
    rows = {path.parent.name.split("_")[1] + "_" + path.parent.name.split("_")[2]:
            [json.loads(line) for line in path.read_text().splitlines()] for path in (results / "tune").glob("*/result.json")}
    assert len(rows) == 4
    study = optuna.load_study(study_name=None, storage=f"sqlite:///{results}/optuna.sqlite3")
    assert len(study.trials) == 4 and {t.state for t in study.trials} == {TrialState.COMPLETE}
    by_ray = {t.user_attrs["ray_trial_id"]: t for t in study.trials}
    recorded = {trial: next(t for ray_id, t in by_ray.items() if ray_id.endswith(trial)) for trial in rows}
    # the study holds each trial's first settings (the initial points among them), its final ones and lineage
    assert {0.3, 1.0e-4} <= {t.params["inner_lr"] for t in recorded.values()}
    for trial, results_of in rows.items():
        assert recorded[trial].user_attrs["final.inner_lr"] == results_of[-1]["config"]["inner_lr"]
        assert recorded[trial].user_attrs["lineage"] == results_of[-1]["lineage"]
    slow = next(trial for trial in rows if recorded[trial].params["inner_lr"] == pytest.approx(1e-4))
    assert recorded[slow].user_attrs["final.inner_lr"] != pytest.approx(1e-4)  # it took a perturbed copy

    # every exploit behind the trials' final weights: the λ loaded equal the λ the source saved
    exploits = {(e["into"], e["epoch"], e["source"]): e for t in recorded.values() for e in json.loads(t.user_attrs["lineage"])}
    assert exploits, "no trial's final weights came from another trial's checkpoint"
    assert json.loads(recorded[slow].user_attrs["lineage"])[-1]["into"] == slow  # its last restore
    bounds = {key: (dist["low"], dist["high"]) for key, dist in SPEC["search"].items()}
    for (into, epoch, source), exploit in exploits.items():
        assert source != into and epoch % SPEC["pbt"]["perturbation_interval"] == 0
        assert exploit["restored_digest"] == exploit["source_digest"]
        # explore with resample_probability 0: each searched setting of the source times 0.8 or 1.2, clipped
        for key, (low, high) in bounds.items():
            assert any(_clip(exploit["source_settings"][key] * f, low, high) == pytest.approx(exploit["settings"][key])
                       for f in (0.8, 1.2)), (key, exploit)
        # where the source's row of that epoch survived, it reported the same λ digest
        for row in rows[source]:
            if row["training_iteration"] == epoch:
                assert row["hparams_digest"] == exploit["source_digest"]


def test_load_state_dict_keeps_lambda_and_weights_but_takes_the_new_learning_rates():
    settings = {"hidden": [16], "epochs": 2, "train_size": 64, "device": "cpu", "inner_lr": 0.2, "hyper_lr": 0.01}
    source = BilevelTrainer(RunConfig.from_mapping(settings))
    source.train_epoch()
    target = BilevelTrainer(RunConfig.from_mapping({**settings, "inner_lr": 0.05, "hyper_lr": 0.02}))
    target.load_state_dict(source.state_dict())
    for name, tensor in source.family.state_dict().items():
        assert torch.equal(tensor, target.family.state_dict()[name])
    assert all(torch.equal(a, b) for a, b in zip(source.model.parameters(), target.model.parameters()))
    assert [g["lr"] for g in target.inner_optimizer.param_groups] == [0.05]
    assert [g["lr"] for g in target.hyper_optimizer.param_groups] == [0.02]
    assert [g["lr"] for g in source.inner_optimizer.param_groups] == [0.2]


def test_pbt_refuses_settings_that_change_data_or_shapes_and_resume():
    spec = dict(SPEC, search={**SPEC["search"], "val_fraction": {"type": "uniform", "low": 0.2, "high": 0.5}})
    with pytest.raises(ConfigError, match=r"search.val_fraction: scheduler pbt copies one trial's weights and λ"):
        validate_spec(spec)
    with pytest.raises(ConfigError, match="--resume: a scheduler pbt sweep cannot be resumed"):
        plan_sweep(validate_spec(SPEC), resume=True)
    assert validate_spec(dict(SPEC, search={**SPEC["search"], "solver.alpha": {"type": "uniform", "low": 0.01, "high": 0.5}}))


def test_a_perturbed_value_is_clipped_to_its_range_and_integers_stay_integers():
    spec = validate_spec(dict(SPEC, search={**SPEC["search"], "inner_steps": {"type": "int", "low": 1, "high": 4}}))
    clip = ClipToSpace(spec.search)
    assert clip({"inner_lr": 0.6, "hyper_lr": 5e-4, "inner_steps": 4.8}) == {"inner_lr": 0.5, "hyper_lr": 1e-3,
                                                                            "inner_steps": 4}
    assert type(clip({"inner_lr": 0.1, "hyper_lr": 0.01, "inner_steps": 2.4})["inner_steps"]) is int
