"""Run the strategies of a :class:`~hybrid_hpo.compare.spec.CompareSpec` under one budget.

For every seed (a replicate: data split, initialisation and sampler seed), each strategy gets
``budget_s`` seconds of wall clock on the same machine, one after the other; the order rotates
with the seed, so slow drifts of the machine's load do not always hit the same strategy:

- ``bo_only``, ``hybrid`` and (optional) ``bo_asha`` and ``pbt``: a Ray Tune sweep
  (:func:`hybrid_hpo.tune.sweep.run_sweep`) with Optuna's sampler, as many trials as fit (Ray's
  ``time_budget_s``: at the deadline running trials stop where they are), ``max_concurrent`` at a
  time; ``bo_asha`` under Ray Tune's ASHA scheduler, which stops trials that trail at its rungs.
  Their Optuna studies share one storage, ``<results_dir>/optuna.sqlite3``. ``pbt`` runs its population side by side under Ray
  Tune's PopulationBasedTraining (:mod:`hybrid_hpo.tune.pbt`) until its epochs or the budget end.
- ``ift_defaults``: one bilevel run with the default meta-settings as a one-trial Ray Tune run
  (:func:`run_single`), cut at the budget the same way.

Every strategy runs the same trainable (:func:`hybrid_hpo.tune.sweep.sweep_trainable`) in the same
kind of process (a Ray actor) with the same resources per trial, so the same torch thread count
(one per CPU of ``resources.cpu``; every record carries ``torch_threads``), and each strategy's clock
starts before its Tuner is built: actor start, imports and data loading are inside every
strategy's budget. Ray itself starts once, before the first strategy, and is charged to none.

Every epoch any trial reports becomes a record: ``t`` (seconds since the strategy started, the
same clock for all strategies), the trial, the epoch, ``torch_threads`` and the split metrics (sel_*,
val_*, ...). Records after ``budget_s`` are kept in the file but never count (see
:mod:`hybrid_hpo.compare.summary`).
"""
from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from hybrid_hpo.compare.spec import STRATEGIES, CompareSpec

SPLIT_PREFIXES: tuple[str, ...] = ("train_", "val_", "sel_", "test_")
"""A record keeps every reported metric of a split (loss, the task's metrics, balanced accuracy)."""
RECORDED: tuple[str, ...] = ("torch_threads",)
"""Other result keys a record keeps."""


@dataclass
class StrategyRun:
    """What one strategy did on one seed."""

    strategy: str
    seed: int
    wall_s: float  # from the strategy's start to its last process or trial ending
    trials: int
    records: list[dict[str, Any]] = field(default_factory=list)  # one per reported epoch, by time
    study_name: str | None = None  # the Optuna study (sweep strategies)
    results_dir: str | None = None  # the sweep's (or the single run's) results folder
    startup_trials: int = 0  # random trials before the sampler's model (sweep strategies)
    load: list[float] = field(default_factory=list)  # the machine's 1-minute load average before and after

    @property
    def guided(self) -> int:
        """Trials the sampler's model suggested (after its random start-up trials)."""
        return max(0, self.trials - self.startup_trials) if self.study_name else 0


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
            for strategy in rotated(tuple(s for s in STRATEGIES if s in spec.strategies), index):
                load_before = os.getloadavg()[0]
                if strategy == "ift_defaults":
                    run = run_single(spec, seed, results_dir, verbose)
                else:
                    run = run_search(spec, strategy, seed, results_dir, storage, verbose)
                run.load = [load_before, os.getloadavg()[0]]
                runs.append(run)
                if on_run is not None:
                    on_run(run)
    finally:
        if own_ray:
            ray.shutdown()
    return runs


def rotated(items: tuple[str, ...], shift: int) -> tuple[str, ...]:
    """``items`` rotated left by ``shift`` (seed i starts with strategy i mod len(items))."""
    shift %= len(items)
    return items[shift:] + items[:shift]


def run_search(spec: CompareSpec, strategy: str, seed: int, results_dir: Path, storage: str,
               verbose: bool) -> StrategyRun:
    """A budgeted Ray Tune + Optuna sweep of the searched ``strategy`` for ``seed``."""
    from hybrid_hpo.tune.plan import default_study_name, plan_sweep, startup_trials
    from hybrid_hpo.tune.sweep import run_sweep

    sweep = spec.sweep_spec(strategy, seed)
    plan = plan_sweep(sweep, storage=storage, study_name=default_study_name(sweep.name),
                      results_dir=results_dir / f"{strategy}-seed{seed}")
    start_clock, start = time.time(), time.perf_counter()
    outcome = run_sweep(sweep, plan, verbose=verbose, progress=False)  # compare prints a line per run
    wall = time.perf_counter() - start
    return StrategyRun(strategy, seed, wall, trials=len(outcome.histories),
                       records=_records(outcome.histories, start_clock), study_name=outcome.study_name,
                       results_dir=str(plan.results_dir),
                       startup_trials=len(outcome.histories) if sweep.scheduler == "pbt" else startup_trials(sweep, plan))


def run_single(spec: CompareSpec, seed: int, results_dir: Path, verbose: bool = False) -> StrategyRun:
    """One bilevel run with the default meta-settings: a one-trial Ray Tune run of the sweeps'
    trainable with their resources per trial, stopped by Ray's ``time_budget_s`` = ``budget_s``."""
    from ray import tune

    from hybrid_hpo.config import RunConfig
    from hybrid_hpo.tune.console import quiet_console
    from hybrid_hpo.tune.outcome import trial_history
    from hybrid_hpo.tune.plan import EXPERIMENT_NAME, trial_resources
    from hybrid_hpo.tune.sweep import sweep_trainable

    settings = spec.run_settings("ift_defaults", seed)
    folder = results_dir / f"ift_defaults-seed{seed}"
    start_clock, start = time.time(), time.perf_counter()
    tuner = tune.Tuner(
        sweep_trainable(spec.metric, spec.mode, trial_resources(spec), epoch_logs=verbose),
        param_space={**settings, "epochs": RunConfig.from_mapping(settings).epochs},
        tune_config=tune.TuneConfig(num_samples=1, time_budget_s=spec.budget_s),
        run_config=tune.RunConfig(name=EXPERIMENT_NAME, storage_path=str(folder), verbose=1 if verbose else 0,
                                  checkpoint_config=tune.CheckpointConfig(checkpoint_at_end=False)))
    with quiet_console(not verbose):  # compare prints a line per run, not Tune's configuration box
        grid = tuner.fit()
    wall = time.perf_counter() - start
    histories = {str(index): trial_history(result) for index, result in enumerate(grid)}
    return StrategyRun("ift_defaults", seed, wall, trials=1, records=_records(histories, start_clock),
                       results_dir=str(folder))


def _records(histories: dict[str, list[dict[str, Any]]], start_clock: float) -> list[dict[str, Any]]:
    """Every result of every trial as a record (module docstring), by time."""
    records = [_record(result, trial, result.get("reported_at", math.nan) - start_clock)
               for trial, history in histories.items() for result in history]
    return sorted(records, key=lambda r: r["t"])


def _record(result: dict[str, Any], trial: str, t: float) -> dict[str, Any]:
    record = {"t": float(t), "trial": str(trial), "epoch": int(result.get("epoch", result.get("training_iteration", 0)))}
    record.update({key: float(value) for key, value in result.items()
                   if key.startswith(SPLIT_PREFIXES + RECORDED) and isinstance(value, (int, float))
                   and not isinstance(value, bool)})
    return record


def runs_as_json(runs: list[StrategyRun]) -> list[dict[str, Any]]:
    """Plain dicts of ``runs`` (non-finite floats stay floats: json writes NaN)."""
    return [{**asdict(run), "guided": run.guided} for run in runs]
