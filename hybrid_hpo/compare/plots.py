"""Pictures of a comparison: test metric versus wall time, and the hybrid's parameter importances.

``test_vs_time.png``: for each strategy, the test metric of its incumbent (best selection metric so far,
:func:`hybrid_hpo.compare.summary.incumbents`) against seconds since the strategy started; the
line is the mean over seeds, the band spans the seeds' minimum to maximum; both start once every
seed's run has reported a finite selection metric.

``hybrid_importances.png``: Optuna's fANOVA importance of each searched meta-setting for the
selection objective, computed per seed's hybrid study (completed trials only) and shown as mean
± std over the seeds whose study has at least ``MIN_TRIALS`` completed trials.
"""
from __future__ import annotations

import logging
import math
import statistics
from collections.abc import Sequence
from pathlib import Path

from hybrid_hpo.compare.run import StrategyRun
from hybrid_hpo.compare.spec import STRATEGIES, CompareSpec
from hybrid_hpo.compare.summary import LABELS, incumbent_at, incumbents

logger = logging.getLogger(__name__)

MIN_TRIALS = 3
_GRID_POINTS = 200


def _figure(size: tuple[float, float]):
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    return Figure(figsize=size, dpi=100)


def plot_test_vs_time(runs: Sequence[StrategyRun], spec: CompareSpec, path: Path) -> Path:
    """Write the test-metric-versus-wall-time PNG (module docstring) to ``path``."""
    figure = _figure((6.4, 4.0))
    axes = figure.add_subplot(1, 1, 1)
    grid = [spec.budget_s * i / (_GRID_POINTS - 1) for i in range(_GRID_POINTS)]
    scale = 100.0 if spec.report.endswith("acc") else 1.0  # accuracies in %, losses and task metrics as they are
    finals = []
    for strategy in STRATEGIES:
        chains = [incumbents(run.records, spec.metric, spec.mode, spec.budget_s)
                  for run in runs if run.strategy == strategy]
        curves = [[scale * incumbent_at(chain, t, spec.report) for t in grid] for chain in chains]
        mean, low, high, times = [], [], [], []
        for i, t in enumerate(grid):
            values = [curve[i] for curve in curves]
            if values and all(math.isfinite(v) for v in values):  # once every seed has a pick
                times.append(t)
                mean.append(statistics.fmean(values))
                low.append(min(values))
                high.append(max(values))
        if not times:
            continue
        finals.append(mean[-1])
        line, = axes.step(times, mean, where="post", label=f"{LABELS[strategy]} (n={len(curves)})")
        axes.fill_between(times, low, high, step="post", alpha=0.2, color=line.get_color())
    if finals and scale != 1.0:  # accuracies: zoom on where the strategies end, not the first epochs
        axes.set_ylim(max(0.0, min(finals) - 15.0), min(100.0, max(finals) + 3.0))
    axes.set_xlabel("wall time since the strategy started (s)")
    axes.set_ylabel(f"{spec.report} of the best-{spec.metric} pick" + ("" if scale == 1.0 else " (%)"))
    axes.set_title(f"{spec.name}: budget {spec.budget_s:g} s per strategy and seed", fontsize=10)
    axes.grid(alpha=0.3)
    if finals:  # a comparison without any pick has no line to label
        axes.legend(fontsize=8, loc="lower right" if spec.report_mode == "max" else "upper right")
    figure.tight_layout()
    figure.savefig(path)
    return path


def hybrid_importances(runs: Sequence[StrategyRun], storage_url: str) -> dict[str, list[float]]:
    """Meta-setting -> fANOVA importances, one per seed whose hybrid study has enough completed trials."""
    import optuna
    from optuna.importance import FanovaImportanceEvaluator, get_param_importances
    from optuna.trial import TrialState

    per_setting: dict[str, list[float]] = {}
    for run in runs:
        if run.strategy != "hybrid" or run.study_name is None:
            continue
        study = optuna.load_study(study_name=run.study_name, storage=storage_url)
        complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if len(complete) < MIN_TRIALS:
            logger.warning("seed %d: %d completed hybrid trials, fewer than %d; no importances", run.seed,
                           len(complete), MIN_TRIALS)
            continue
        importances = get_param_importances(study, evaluator=FanovaImportanceEvaluator(seed=run.seed))
        for name, value in importances.items():
            per_setting.setdefault(name, []).append(float(value))
    return per_setting


def plot_importances(per_setting: dict[str, list[float]], spec: CompareSpec, path: Path) -> Path | None:
    """Bar chart of :func:`hybrid_importances` (mean ± std over seeds); None when there is nothing."""
    if not per_setting:
        return None
    names = sorted(per_setting, key=lambda n: statistics.fmean(per_setting[n]))
    means = [statistics.fmean(per_setting[n]) for n in names]
    stds = [statistics.stdev(per_setting[n]) if len(per_setting[n]) > 1 else 0.0 for n in names]
    figure = _figure((6.0, 0.5 + 0.45 * len(names)))
    axes = figure.add_subplot(1, 1, 1)
    axes.barh(names, means, xerr=stds, color="tab:green", alpha=0.8, capsize=3)
    seeds = max(len(v) for v in per_setting.values())
    axes.set_xlabel(f"fANOVA importance for {spec.metric} (Optuna; mean ± std over {seeds} seeds)")
    axes.set_title(f"{spec.name}: which meta-settings of the hybrid matter", fontsize=10)
    axes.grid(axis="x", alpha=0.3)
    figure.tight_layout()
    figure.savefig(path)
    return path
