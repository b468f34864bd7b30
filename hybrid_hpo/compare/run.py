"""Run the three strategies of a :class:`~hybrid_hpo.compare.spec.CompareSpec` under one budget.

For every seed (a replicate: data split, initialisation and sampler seed), each strategy gets
``budget_s`` seconds of wall clock on the same machine, one after the other; the order rotates
with the seed, so slow drifts of the machine's load do not always hit the same strategy:

- ``bo_only`` and ``hybrid``: a Ray Tune sweep (:func:`hybrid_hpo.tune.sweep.run_sweep`) with
  Optuna's sampler, as many trials as fit (Ray's ``time_budget_s``: at the deadline running
  trials stop where they are), ``max_concurrent`` at a time. Their Optuna studies share one
  storage, ``<results_dir>/optuna.sqlite3``.
- ``ift_defaults``: one bilevel run in this process (with ``--address``: on the driver's machine),
  epoch by epoch until its ``epochs`` are done or the budget is spent.

Every epoch any trial reports becomes a record: ``t`` (seconds since the strategy started, the
same clock for all three), the trial, the epoch and the metrics. Records after ``budget_s`` are
kept in the file but never count (see :mod:`hybrid_hpo.compare.summary`). Ray starts once, before
the first sweep, and is not charged to any strategy.
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from hybrid_hpo.compare.spec import STRATEGIES, CompareSpec

SPLIT_PREFIXES: tuple[str, ...] = ("train_", "val_", "test_")
"""A record keeps every reported metric of a split (loss, the task's metrics, balanced accuracy)."""


@dataclass
class StrategyRun:
    """What one strategy did on one seed."""

    strategy: str
    seed: int
    wall_s: float  # from the strategy's start to its last process or trial ending
    trials: int
    records: list[dict[str, Any]] = field(default_factory=list)  # one per reported epoch, by time
    study_name: str | None = None  # the Optuna study (sweep strategies)
    results_dir: str | None = None  # the sweep's results folder (sweep strategies)


def run_comparison(spec: CompareSpec, results_dir: Path, *, address: str | None = None, verbose: bool = False,
                   on_run: Callable[[StrategyRun], None] | None = None) -> list[StrategyRun]:
    """Run every (seed, strategy) pair of ``spec``; ``on_run`` gets each run as it ends."""
    import ray

    from hybrid_hpo.tune.ray_start import init_ray
    from hybrid_hpo.tune.urls import results_dir_storage

    results_dir.mkdir(parents=True, exist_ok=True)
    storage = results_dir_storage(results_dir)
    own_ray = not ray.is_initialized()
    if own_ray:
        init_ray(address, quiet=not verbose)
    runs = []
    try:
        for index, seed in enumerate(spec.seeds):
            for strategy in rotated(STRATEGIES, index):
                if strategy == "ift_defaults":
                    run = run_single(spec, seed)
                else:
                    run = run_search(spec, strategy, seed, results_dir, storage, verbose)
                runs.append(run)
                if on_run is not None:
                    on_run(run)
    finally:
        if own_ray:
            ray.shutdown()
    return runs


def rotated(items: tuple[str, ...], shift: int) -> tuple[str, ...]:
    """``items`` rotated left by ``shift`` (seed i starts with strategy i mod 3)."""
    shift %= len(items)
    return items[shift:] + items[:shift]


def run_search(spec: CompareSpec, strategy: str, seed: int, results_dir: Path, storage: str,
               verbose: bool) -> StrategyRun:
    """A budgeted Ray Tune + Optuna sweep of ``strategy`` (bo_only or hybrid) for ``seed``."""
    from hybrid_hpo.tune.plan import default_study_name, plan_sweep
    from hybrid_hpo.tune.sweep import run_sweep

    sweep = spec.sweep_spec(strategy, seed)
    plan = plan_sweep(sweep, storage=storage, study_name=default_study_name(sweep.name),
                      results_dir=results_dir / f"{strategy}-seed{seed}")
    start_clock, start = time.time(), time.perf_counter()
    outcome = run_sweep(sweep, plan, verbose=verbose, progress=False)  # compare prints a line per run
    wall = time.perf_counter() - start
    records = []
    for trial, history in outcome.histories.items():
        for result in history:
            records.append(_record(result, trial, result.get("reported_at", math.nan) - start_clock))
    records.sort(key=lambda r: r["t"])
    return StrategyRun(strategy, seed, wall, trials=len(outcome.histories), records=records,
                       study_name=outcome.study_name, results_dir=str(plan.results_dir))


def run_single(spec: CompareSpec, seed: int) -> StrategyRun:
    """One bilevel run with the default meta-settings, cut at the budget (epoch granularity)."""
    from hybrid_hpo.bilevel import BilevelTrainer
    from hybrid_hpo.config import RunConfig

    start = time.perf_counter()
    config = RunConfig.from_mapping(spec.run_settings("ift_defaults", seed))
    trainer = BilevelTrainer(config)
    records = []
    while trainer.epoch < config.epochs and time.perf_counter() - start < spec.budget_s:
        metrics = trainer.train_epoch()
        records.append(_record(metrics, "0", time.perf_counter() - start))
    return StrategyRun("ift_defaults", seed, time.perf_counter() - start, trials=1, records=records)


def _record(result: dict[str, Any], trial: str, t: float) -> dict[str, Any]:
    record = {"t": float(t), "trial": str(trial), "epoch": int(result.get("epoch", result.get("training_iteration", 0)))}
    record.update({key: float(value) for key, value in result.items()
                   if key.startswith(SPLIT_PREFIXES) and isinstance(value, (int, float)) and not isinstance(value, bool)})
    return record


def runs_as_json(runs: list[StrategyRun]) -> list[dict[str, Any]]:
    """Plain dicts of ``runs`` (non-finite floats stay floats: json writes NaN)."""
    return [asdict(run) for run in runs]
