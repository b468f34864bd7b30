"""`hybrid-hpo compare` for real on a tiny budget: Ray Tune + Optuna sweeps (shared Ray instance,
real SQLite), the in-process IFT run, the table, the plots and the studies.

Run inside a loopback-only network namespace (README's test command)."""
from __future__ import annotations

import json
import math

import optuna
import yaml
from optuna.trial import TrialState

from hybrid_hpo import cli

BUDGET_S = 15
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
        "ift_defaults": {"settings": {"family": "weight_decay", "terms": 2}},
        "hybrid": {"settings": {"family": "weight_decay"}, "startup_trials": 2, "warm_start": True,
                   "search": {"hyper_lr": {"type": "loguniform", "low": 0.001, "high": 0.1},
                              "terms": {"type": "int", "low": 1, "high": 6}}},
    },
}


def test_compare_runs_three_strategies_and_writes_a_finite_table(ray_session, tmp_path, capsys):
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(SPEC))
    out = tmp_path / "out"
    code = cli.main(["compare", str(tmp_path / "tiny.yaml"), "--budget-s", str(BUDGET_S), "--seeds", "3",
                     "--results-dir", str(out)])
    printed = capsys.readouterr().out
    assert code == 0, printed[-3000:]

    table = [line for line in printed.splitlines() if line.startswith(("| BO-only", "| IFT", "| Hybrid"))]
    assert len(table) == 3 and all("nan" not in line for line in table), table
    assert (out / "table.md").read_text().splitlines()[2:] == table  # header, separator, the same 3 rows

    saved = json.loads((out / "compare.json").read_text())
    rows = {row["strategy"]: row for row in saved["rows"]}
    assert list(rows) == ["bo_only", "ift_defaults", "hybrid"]
    for row in rows.values():
        assert row["seeds"] == 1 and 0.0 < row["test_acc_mean"] <= 1.0 and math.isfinite(row["val_loss_mean"])
        assert row["wall_s"] > 0 and row["epochs"] >= 1
    runs = {run["strategy"]: run for run in saved["runs"]}
    assert all(run["seed"] == 3 for run in runs.values())
    assert runs["ift_defaults"]["trials"] == 1 and runs["ift_defaults"]["study_name"] is None
    assert len(runs["ift_defaults"]["records"]) == SPEC["task"]["epochs"]  # 6 tiny epochs fit in the budget

    url = f"sqlite:///{out}/optuna.sqlite3"
    for strategy in ("bo_only", "hybrid"):
        run = runs[strategy]
        study = optuna.load_study(study_name=run["study_name"], storage=url)
        # every Ray trial that reported is in the study; the study may hold one more per free slot:
        # suggested as the budget ran out, never started by Ray, closed PRUNED below
        assert {r["trial"] for r in run["records"]} <= {t.user_attrs["ray_trial_id"] for t in study.trials}
        assert 2 <= run["trials"] <= len(study.trials) <= run["trials"] + SPEC["max_concurrent"]
        assert set(study.trials[0].params) == set(SPEC["strategies"][strategy]["search"])
        if strategy == "hybrid":  # warm start: the first trial runs RunConfig's defaults
            assert study.trials[0].params == {"hyper_lr": 0.03, "terms": 5}
        assert not [t for t in study.trials if t.state == TrialState.RUNNING]  # the budget's trials are closed
        complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
        assert complete and all("test_acc" in t.user_attrs for t in complete)
        for trial in study.trials:
            if trial.state == TrialState.PRUNED:
                assert trial.user_attrs["end_reason"] == "stopped by the sweep's time_budget_s"
        counted = [r for r in run["records"] if r["t"] <= BUDGET_S]
        best = min((r for r in counted if math.isfinite(r["val_loss"])), key=lambda r: r["val_loss"])
        assert rows[strategy]["test_acc_mean"] == best["test_acc"]  # the pick is the best validation record

    assert (out / "test_vs_time.png").stat().st_size > 10_000
    assert saved["importances"] and set(saved["importances"]) <= set(SPEC["strategies"]["hybrid"]["search"])
    assert (out / "hybrid_importances.png").stat().st_size > 5_000
