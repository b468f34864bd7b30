"""`hybrid-hpo compare` for real: Ray Tune + Optuna sweeps (shared Ray instance, real SQLite), the
one-trial IFT run, the table, the paired tests, the plots and the studies; the same torch threads
for every strategy and a searcher told exactly what the pick uses.

No assertion depends on the machine's speed: the budget is one no machine reaches (each sweep is
capped at MAX_TRIALS trials instead), and the budget's own effect is tested with one every machine
reaches at once (tests/test_sweep.py). Run inside a loopback-only network namespace (README's test
command)."""
from __future__ import annotations

import functools
import json
import math

import optuna
import yaml
from optuna.trial import TrialState

from hybrid_hpo import cli
from hybrid_hpo.compare.spec import CompareSpec
from hybrid_hpo.compare.summary import LABELS, SHORT

BUDGET_S = 24 * 3600  # never reached: the sweeps end after MAX_TRIALS trials, the IFT run after its epochs
MAX_TRIALS = 3  # importances need 3 completed trials
SPEC = {
    "name": "tiny-compare",
    "task": {"dataset": "digits", "train_size": 64, "val_size": 64, "model": "mlp", "hidden": [16],
             "batch_size": 32, "epochs": 6},
    "seeds": [0, 1],
    "max_concurrent": 2,
    "budget_s": 600,  # overridden on the command line
    "strategies": {
        "bo_only": {"settings": {"family": "fixed"},
                    "search": {"inner_lr": {"type": "loguniform", "low": 0.01, "high": 0.3},
                               "fixed_dropout": {"type": "uniform", "low": 0.0, "high": 0.5}}},
        "bo_asha": {"settings": {"family": "fixed", "fixed_decay": 0}, "asha": {"grace_period": 2},
                    "search": {"layer_decay.0": {"type": "loguniform", "low": 1e-5, "high": 0.1},
                               "layer_decay.1": {"type": "loguniform", "low": 1e-5, "high": 0.1}}},
        "ift_defaults": {"settings": {"family": "weight_decay", "solver.terms": 2}},
        "hybrid": {"settings": {"family": "weight_decay"}, "startup_trials": 2, "warm_start": True,
                   "search": {"hyper_lr": {"type": "loguniform", "low": 0.001, "high": 0.1},
                              "solver.terms": {"type": "int", "low": 1, "high": 6}}},
        "pbt": {"settings": {"family": "weight_decay"}, "population": 2, "pbt": {"perturbation_interval": 2},
                "search": {"hyper_lr": {"type": "loguniform", "low": 0.001, "high": 0.1}}},
    },
}


def test_compare_runs_every_strategy_and_writes_a_finite_table(ray_session, tmp_path, monkeypatch, capsys):
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    monkeypatch.setattr(CompareSpec, "sweep_spec", functools.partialmethod(CompareSpec.sweep_spec,
                                                                           max_trials=MAX_TRIALS))
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(SPEC))
    out = tmp_path / "out"
    code = cli.main(["compare", str(tmp_path / "tiny.yaml"), "--budget-s", str(BUDGET_S), "--seeds", "3",
                     "--results-dir", str(out)])
    printed = capsys.readouterr().out
    assert code == 0, printed[-3000:]
    assert "Configuration for experiment" not in printed  # a line per run, not Tune's boxes (no --verbose)

    starts = ("| BO-only (", "| BO + ASHA (", "| IFT with", "| Hybrid (", "| PBT (")
    table = [line for line in printed.splitlines() if line.startswith(starts)]
    assert len(table) == 5 and all("nan" not in line for line in table), table
    written = (out / "table.md").read_text().splitlines()
    assert [line for line in written if line.startswith(starts)] == table

    saved = json.loads((out / "compare.json").read_text())
    rows = {row["strategy"]: row for row in saved["rows"]}
    assert list(rows) == ["bo_only", "bo_asha", "ift_defaults", "hybrid", "pbt"]
    for row in rows.values():
        assert row["seeds"] == 1 and 0.0 < row["test_acc_mean"] <= 1.0 and math.isfinite(row["sel_loss_mean"])
        assert row["wall_s"] > 0 and row["epochs"] >= 1
    runs = {run["strategy"]: run for run in saved["runs"]}
    assert all(run["seed"] == 3 and len(run["load"]) == 2 for run in runs.values())
    assert saved["seeds"] == [3] and saved["budget_s"] == BUDGET_S and len(saved["machine"]["load_start"]) == 3
    # the strongest baseline: the better mean of the two without hypergradients (bo_only on a tie);
    # table.md opens with the hybrid against it, and its pairs with the hybrid's and PBT's against it
    best = "bo_asha" if rows["bo_asha"]["test_acc_mean"] > rows["bo_only"]["test_acc_mean"] else "bo_only"
    assert saved["strongest_baseline"] == best and written[0].startswith(f"Strongest baseline: {LABELS[best]}")
    assert written[1].startswith(f"Hybrid vs {SHORT[best]}: ") and written[1].endswith("(n/a).")
    pairs = [(p["a"], p["b"]) for p in saved["pairs"]]
    assert pairs[:2] == [("hybrid", best), ("pbt", best)] and len(set(pairs)) == 10
    assert {p["verdict"] for p in saved["pairs"]} == {"n/a"}  # one seed: no test
    assert runs["pbt"]["trials"] == 2 and runs["pbt"]["guided"] == 0  # PBT's population, no sampler model
    # BO + ASHA: its trials ran under ASHA (never past the epochs) in their own study
    asha = runs["bo_asha"]
    assert asha["trials"] == MAX_TRIALS and asha["study_name"] not in (runs["bo_only"]["study_name"], None)
    assert 1 <= len(asha["records"]) <= MAX_TRIALS * SPEC["task"]["epochs"]
    assert runs["ift_defaults"]["trials"] == 1 and runs["ift_defaults"]["study_name"] is None
    assert len(runs["ift_defaults"]["records"]) == SPEC["task"]["epochs"]
    # one process kind and thread count for all: every epoch of every strategy ran in a Ray actor
    # with resources.cpu (1) torch threads (the driver has more: the IFT run used to run there)
    assert {r["torch_threads"] for run in runs.values() for r in run["records"]} == {1.0}

    url = f"sqlite:///{out}/optuna.sqlite3"
    for strategy in ("bo_only", "hybrid"):
        run = runs[strategy]
        study = optuna.load_study(study_name=run["study_name"], storage=url)
        # every Ray trial is in the study once, ran all its epochs and is COMPLETE
        assert {r["trial"] for r in run["records"]} == {t.user_attrs["ray_trial_id"] for t in study.trials}
        assert run["trials"] == len(study.trials) == MAX_TRIALS
        assert len(run["records"]) == MAX_TRIALS * SPEC["task"]["epochs"]
        assert set(study.trials[0].params) == set(SPEC["strategies"][strategy]["search"])
        if strategy == "hybrid":  # warm start: the first trial runs RunConfig's defaults
            assert study.trials[0].params == {"hyper_lr": 0.03, "solver.terms": 5}
        assert all(t.state == TrialState.COMPLETE and "test_acc" in t.user_attrs for t in study.trials)
        # the searcher is told each trial's best epoch on the selection split, the rule the pick uses
        for trial in study.trials:
            epochs = [r["sel_loss"] for r in run["records"] if r["trial"] == trial.user_attrs["ray_trial_id"]]
            assert trial.value == min(epochs)
        best = min((r for r in run["records"] if math.isfinite(r["sel_loss"])), key=lambda r: r["sel_loss"])
        assert best["sel_loss"] == study.best_value
        assert rows[strategy]["test_acc_mean"] == best["test_acc"]  # the pick is the best selection record

    assert (out / "test_vs_time.png").stat().st_size > 10_000
    assert saved["importances"] and set(saved["importances"]) <= set(SPEC["strategies"]["hybrid"]["search"])
    assert (out / "hybrid_importances.png").stat().st_size > 5_000
