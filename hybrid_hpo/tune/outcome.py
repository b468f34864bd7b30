"""What a finished (or interrupted) sweep produced: :class:`SweepOutcome` and its rows, one per Ray
trial, built from Ray's ResultGrid."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hybrid_hpo.objective import BEST_SUFFIX, best_key
from hybrid_hpo.tune.plan import base_config
from hybrid_hpo.tune.spec import SweepSpec


@dataclass
class SweepOutcome:
    """What a finished (or interrupted) sweep produced."""

    results_dir: Path
    storage_url: str
    study_name: str
    rows: list[dict[str, Any]]  # one per Ray trial, best first
    wall_s: float
    errors: int
    interrupted: bool
    histories: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # trial id -> every result, in order
    budget_spent: bool = False  # the spec's time_budget_s ended the sweep
    stopped_because: str | None = None  # why the sweep stopped itself early (trials PENDING too long)


def result_rows(grid, spec: SweepSpec, budget_spent: bool = False) -> list[dict[str, Any]]:
    """One row per Ray trial (searched settings, metrics, epochs, seconds, status), best first.

    status: done (ran all epochs), pruned (stopped early by ASHA), unfinished (interrupted; "budget"
    when the sweep's time budget stopped it), ERROR.
    """
    rows, budget = [], base_config(spec)["epochs"]
    objective = best_key(spec.metric)
    shown = table_metrics([result.metrics or {} for result in grid], objective)
    for result in grid:
        metrics, config = result.metrics or {}, result.config or {}
        row: dict[str, Any] = {"trial": metrics.get("trial_id", "?")}
        row.update({key: config.get(key) for key in spec.search})
        row.update({key: metrics.get(key, math.nan) for key in shown})
        row["epochs"] = metrics.get("training_iteration", 0)
        row["time_s"] = metrics.get("time_total_s", math.nan)
        row["status"] = trial_status(result.error, metrics, budget, budget_spent)
        rows.append(row)
    sign = 1.0 if spec.mode == "min" else -1.0
    rows.sort(key=lambda r: (math.isnan(r[objective]), sign * r[objective] if not math.isnan(r[objective]) else 0))
    return rows


def table_metrics(results: list[dict[str, Any]], objective: str) -> list[str]:
    """The metric columns of the table: the objective (the trial's best epoch), then the sel_*,
    val_* and test_* metrics of its last epoch any trial reported (loss and the task's metrics,
    e.g. sel_acc or test_mae; balanced accuracies and best-so-far values left out)."""
    prefixes = ("sel_", "val_", "test_")
    reported = dict.fromkeys(key for metrics in results for key in metrics
                             if key.startswith(prefixes) and not key.endswith(("balanced_acc", BEST_SUFFIX)))
    ordered = [key for prefix in prefixes for key in reported if key.startswith(prefix)]
    return list(dict.fromkeys((objective, *ordered)))


def trial_status(error: Any, metrics: dict[str, Any], budget: int, budget_spent: bool = False) -> str:
    """done, pruned, unfinished, budget or ERROR (see :func:`result_rows`) from a trial's error and last result."""
    if error is not None:
        return "ERROR"
    if not metrics.get("done"):
        return "budget" if budget_spent else "unfinished"
    return "done" if metrics.get("training_iteration", 0) >= budget else "pruned"


def trial_history(result) -> list[dict[str, Any]]:
    """Every result a trial reported (one per epoch), oldest first, as plain dicts."""
    frame = result.metrics_dataframe
    return [] if frame is None else frame.to_dict("records")

