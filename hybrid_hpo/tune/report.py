"""The text a sweep ends with: the table of its best trials, where its time went, and the command
that opens optuna-dashboard on it."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from hybrid_hpo.objective import best_key
from hybrid_hpo.tune.outcome import SweepOutcome
from hybrid_hpo.tune.plan import ARTIFACTS_DIR
from hybrid_hpo.tune.spec import SweepSpec
from hybrid_hpo.tune.urls import redact


def format_table(rows: list[dict[str, Any]], limit: int = 10) -> str:
    """A plain fixed-width table of the first ``limit`` rows."""
    if not rows:
        return "(no trials)"
    shown = rows[:limit]
    columns = list(shown[0])
    cells = [[_cell(row[c]) for c in columns] for row in shown]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.rjust(w) for c, w in zip(columns, widths))]
    lines += ["  ".join(v.rjust(w) for v, w in zip(r, widths)) for r in cells]
    if len(rows) > limit:
        lines.append(f"... {len(rows) - limit} more trials in the study")
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def dashboard_command(storage_url: str, artifact_dir: str | Path | None = None) -> str:
    """The command that opens optuna-dashboard on a sweep (password hidden: see the README)."""
    command = f"hybrid-hpo dashboard --storage {redact(storage_url)}"
    return command + (f" --artifact-dir {artifact_dir}" if artifact_dir is not None else "")


def overhead_summary(outcome: SweepOutcome, max_concurrent: int) -> str:
    """Wall time against the trials' own time (sum of time_total_s) at the given concurrency."""
    trial_s = sum(r["time_s"] for r in outcome.rows if not math.isnan(r["time_s"]))
    ideal = trial_s / max_concurrent
    return (f"wall {outcome.wall_s:.1f} s; trials' own time {trial_s:.1f} s in total "
            f"({ideal:.1f} s at {max_concurrent} concurrent); outer overhead ~{outcome.wall_s - ideal:.1f} s "
            "(Ray start, trial actors, imports, data loading, Optuna sampling and storage)")


def sweep_summary(spec: SweepSpec, outcome: SweepOutcome) -> str:
    """What ``hybrid-hpo sweep`` prints at the end: how the sweep ended, its best trials, where its
    time went and the command that opens the dashboard (with the sweep's pictures)."""
    state = "interrupted; continue with --resume --results-dir " + str(outcome.results_dir) if outcome.interrupted \
        else f"stopped by its time_budget_s ({spec.time_budget_s:g} s)" if outcome.budget_spent else "finished"
    return "\n".join([
        f"\nSweep {spec.name} {state}: {len(outcome.rows)} trials, {outcome.errors} errors, "
        f"study {outcome.study_name!r} in {redact(outcome.storage_url)}, results in {outcome.results_dir}",
        f"Best trials by {best_key(spec.metric)} ({spec.mode}: the best epoch of each trial):",
        format_table(outcome.rows),
        overhead_summary(outcome, spec.max_concurrent),
        f"Open the dashboard:\n  {dashboard_command(outcome.storage_url, outcome.results_dir / ARTIFACTS_DIR)}",
    ])
