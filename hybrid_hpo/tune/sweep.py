"""Run a planned sweep on Ray Tune: IFTTrainable per trial, RecordingOptunaSearch outside.

The jobs around it live next door: :mod:`~hybrid_hpo.tune.plan` (paths, names, the results dir,
resume metadata), :mod:`~hybrid_hpo.tune.preflight` (one-line errors before Ray starts),
:mod:`~hybrid_hpo.tune.ray_start` (local Ray or ``--address``), :mod:`~hybrid_hpo.tune.outcome`
(rows of the result) and :mod:`~hybrid_hpo.tune.report` (the text a sweep ends with).

Time budget (``time_budget_s``): Ray stops the sweep at the deadline; running trials stop where
they are (status "budget"), and their Optuna trials, which Ray never reports as ended, are closed
PRUNED with ``end_reason`` "stopped by the sweep's time_budget_s" — as is a trial the searcher
suggested just before the deadline and Ray never started. The sweep then counts as done.

Fault tolerance: a trial whose process dies is restarted from its last checkpoint up to
``max_failures`` times (Ray's FailureConfig); the searcher hears of it only when it finally ends,
so its Optuna trial is told once.

Resume (``Tuner.restore``): trials that finished keep their results and are not re-run;
unfinished trials continue from their last checkpoint (every ``checkpoint_every`` epochs) or
restart; trials not yet created are created until ``num_trials``. Errored trials stay errored
(their Optuna trial is FAIL already). The searcher comes back from Ray's pickle (after
:func:`hybrid_hpo.tune.trust.verify`), so it keeps its Optuna trials and the study gets no
duplicates; it is pointed at this driver's storage and folders (a moved results dir works). An
Optuna trial asked for after Ray's last experiment checkpoint is marked FAIL at the end (see
``close_running``: only trials carrying this sweep's ``sweep_id``, so other drivers sharing the
study are left alone). The spec must be the one the sweep started with (``resources`` and
``name`` may change).
"""
from __future__ import annotations

import math
import os
import signal
import time
from functools import partial
from pathlib import Path

from hybrid_hpo.errors import ConfigError
from hybrid_hpo.objective import best_key
from hybrid_hpo.tune.outcome import SweepOutcome, result_rows, trial_history
from hybrid_hpo.tune.plan import (ARTIFACTS_DIR, EXPERIMENT_NAME, SweepPlan, base_config, check_no_sweep,
                                  startup_trials, trial_resources, write_metadata)
from hybrid_hpo.tune.preflight import check_resources, preflight, study_signature
from hybrid_hpo.tune.ray_start import init_ray
from hybrid_hpo.tune.spec import SweepSpec

# Seconds between Ray's experiment snapshots (trials + pickled searcher) and their copy into the
# results dir: what --resume restores after a killed driver. Ray's defaults (>= 10 s, copy every
# 300 s) would lose minutes of a sweep; a snapshot of a sweep this size takes milliseconds.
EXPERIMENT_SNAPSHOT_S = 2


def run_sweep(spec: SweepSpec, plan: SweepPlan, *, address: str | None = None, spec_path: str = "",
              verbose: bool = False, progress: bool = True) -> SweepOutcome:
    """Check the inputs (:func:`~hybrid_hpo.tune.preflight.preflight`), hold the results dir's
    lock for the whole run (one driver per dir, :mod:`~hybrid_hpo.tune.lock`), verify Ray's state
    before a resume unpickles it (:mod:`~hybrid_hpo.tune.trust`), start (or join, with
    ``address``) Ray, run the sweep per ``plan``, return the outcome.

    Ray is initialised here only if it is not running in this process yet, and shut down at the
    end only if it was started here.

    Console: ``progress`` prints a line per finished trial and a progress bar
    (:mod:`~hybrid_hpo.tune.console`); Ray's own console output (its config and result boxes,
    checkpoint lines, snapshot warnings) only with ``verbose``, which replaces that progress.
    """
    import ray

    from hybrid_hpo.tune.console import quiet_console
    from hybrid_hpo.tune.lock import results_dir_lock
    from hybrid_hpo.tune.trust import RayStateSigner, load_key, verify

    started = time.perf_counter()
    storage = preflight(spec, plan, address=address)
    key = load_key()
    created = not plan.results_dir.exists()
    with results_dir_lock(plan.results_dir):
        try:
            if plan.resume:  # before Ray unpickles anything from the results dir
                signer = RayStateSigner(plan.results_dir, key, verify(plan.results_dir,
                                                                      plan.results_dir / EXPERIMENT_NAME, key))
            else:
                check_no_sweep(plan.results_dir)  # a driver that held the lock just before us may have made one
                signer = RayStateSigner(plan.results_dir, key)
            own_ray = not ray.is_initialized()
            if own_ray:
                init_ray(address, quiet=not verbose)
        except ConfigError:
            if created:
                remove_lock_only_dir(plan.results_dir)
            raise
        previous_sigterm = signal.signal(signal.SIGTERM, _sigterm_as_sigint)
        try:
            check_resources(spec, ray.cluster_resources())
            with quiet_console(not verbose):
                outcome = _fit(spec, plan, storage, signer, spec_path, verbose, progress)
        finally:
            signal.signal(signal.SIGTERM, previous_sigterm)
            if own_ray:
                ray.shutdown()
    outcome.wall_s = time.perf_counter() - started
    return outcome


def _sigterm_as_sigint(signum: int, frame) -> None:
    """SIGTERM does what Ctrl-C does: the current SIGINT handler runs (Ray Tune's during ``fit``,
    which stops the trials and saves the experiment for --resume; else KeyboardInterrupt)."""
    handler = signal.getsignal(signal.SIGINT)
    if callable(handler):
        handler(signal.SIGINT, frame)
    else:
        raise KeyboardInterrupt


def remove_lock_only_dir(results_dir: Path) -> None:
    """Remove a results dir this driver created when it holds nothing but the lock file."""
    from hybrid_hpo.tune.lock import LOCK_FILE

    if [path.name for path in results_dir.iterdir()] == [LOCK_FILE]:
        (results_dir / LOCK_FILE).unlink()
        results_dir.rmdir()


def _fit(spec: SweepSpec, plan: SweepPlan, storage, signer, spec_path: str, verbose: bool,
         progress: bool) -> SweepOutcome:
    from ray import tune

    from optuna.trial import TrialState

    from hybrid_hpo.tune.pbt import result_log
    from hybrid_hpo.tune.pending import PendingWatchdog
    from hybrid_hpo.tune.search import close_running, make_search, make_storage, storage_moved, storage_url
    from hybrid_hpo.tune.trust import signing

    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", str(EXPERIMENT_SNAPSHOT_S))
    storage = storage if storage is not None else make_storage(plan.storage, plan.results_dir)
    url = storage_url(storage) or str(plan.storage)
    pbt = spec.scheduler == "pbt"
    trainable = sweep_trainable(spec.metric, spec.mode, trial_resources(spec), digests=pbt, epoch_logs=verbose)
    watchdog = PendingWatchdog(spec.pending_timeout_s)
    results = result_log() if pbt else None  # PBT: the files lose the epochs before a trial's restart
    experiment_dir = plan.results_dir / EXPERIMENT_NAME
    moved = partial(storage_moved, plan.storage_moved_from, url)
    if plan.resume:
        with moved():  # Ray unpickles the searcher's storage here and again in fit()
            tuner = tune.Tuner.restore(str(experiment_dir), trainable=trainable,
                                       resume_unfinished=True, resume_errored=False, restart_errored=False)
    else:
        searcher = make_search(spec.search, best_key(spec.metric), spec.mode, storage=storage, study_name=plan.study_name,
                               sampler=spec.sampler, seed=spec.seed, n_startup_trials=startup_trials(spec, plan),
                               points_to_evaluate=None if pbt else spec.initial_points, sweep_id=plan.sweep_id)
        searcher.attach_pictures(experiment_dir, plan.results_dir / ARTIFACTS_DIR)
        for key, value in study_signature(spec).items():
            searcher.study.set_user_attr(key, value)
        searcher.study.set_user_attr("spec", spec_path)
        write_metadata(spec, plan, url, spec_path)
        tuner = tune.Tuner(trainable, param_space=_param_space(spec),
                           tune_config=_tune_config(spec, plan, searcher),
                           run_config=_run_config(spec, plan, verbose, watchdog, searcher, progress and not verbose,
                                                  results))
        signer.sign_file("tuner.pkl", experiment_dir / "tuner.pkl")
    fit_started = time.perf_counter()
    with moved(), signing(signer, on_restore=partial(_follow_move, results_dir=plan.results_dir)):
        grid = tuner.fit()
    budget_spent = spec.time_budget_s is not None and time.perf_counter() - fit_started >= spec.time_budget_s
    finished = sum(r.metrics.get("done", False) or r.error is not None for r in grid)
    interrupted = not budget_spent and (finished < len(grid) or len(grid) < plan.num_samples or
                                        watchdog.message is not None)
    if budget_spent:
        close_running(storage, plan.study_name, plan.sweep_id, TrialState.PRUNED, "stopped by the sweep's time_budget_s")
    elif not interrupted:
        close_running(storage, plan.study_name, plan.sweep_id)
    rows = result_rows(grid, spec, budget_spent)
    trials = {r.metrics.get("trial_id", str(i)): r for i, r in enumerate(grid)}
    histories = {trial: trial_history(r) if results is None else results.histories.get(trial, [])
                 for trial, r in trials.items()}
    return SweepOutcome(plan.results_dir, url, plan.study_name, rows, wall_s=math.nan,
                        errors=sum(r.error is not None for r in grid), interrupted=interrupted,
                        histories=histories, budget_spent=budget_spent, stopped_because=watchdog.message)


def sweep_trainable(metric: str, mode: str, resources: dict[str, float], digests: bool = False,
                    epoch_logs: bool = True):
    """IFTTrainable reporting ``metric`` and ``<metric>_best`` (:mod:`hybrid_hpo.objective`), with
    ``resources`` per trial (its torch threads = its CPUs); ``digests``: also λ digests (PBT);
    ``epoch_logs=False``: the actors' per-epoch log lines stay off the console."""
    from ray import tune

    from hybrid_hpo.tune.trainable import IFTTrainable

    return tune.with_resources(tune.with_parameters(IFTTrainable, metric=metric, mode=mode, digests=digests,
                                                    epoch_logs=epoch_logs), resources)


def _param_space(spec: SweepSpec) -> dict:
    """The trial config: the fixed settings, and for PBT the searched ones as Ray domains (PBT
    draws the population itself; other schedulers get them from the Optuna searcher)."""
    from hybrid_hpo.tune.pbt import ray_domains

    return {**base_config(spec), **(ray_domains(spec.search) if spec.scheduler == "pbt" else {})}


def _follow_move(generator, results_dir: Path) -> None:
    """Point a search restored from Ray's pickle at where the results dir is now (it may have moved):
    Ray moves the trials it restores, but its pickled experiment still names the old folder for
    new trials, and the searcher uploads pictures from and into folders of the old one."""
    generator._experiment.storage.storage_fs_path = str(results_dir)  # Ray's SearchGenerator keeps no public handle
    searcher = generator.searcher
    while hasattr(searcher, "searcher"):  # ConcurrencyLimiter -> the searcher it limits
        searcher = searcher.searcher
    searcher.attach_pictures(results_dir / EXPERIMENT_NAME, results_dir / ARTIFACTS_DIR)


def _tune_config(spec: SweepSpec, plan: SweepPlan, searcher):
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search import ConcurrencyLimiter

    from hybrid_hpo.tune.trust import SignedSearchGenerator

    from hybrid_hpo.tune import pbt

    if spec.scheduler == "pbt":  # PBT refuses a searcher and brings its own metric (the current value)
        return tune.TuneConfig(search_alg=pbt.make_search_alg(spec, spec.max_concurrent),
                               scheduler=pbt.make_scheduler(spec), num_samples=plan.num_samples, reuse_actors=True,
                               time_budget_s=spec.time_budget_s)
    scheduler = None
    if spec.scheduler == "asha":
        scheduler = ASHAScheduler(time_attr="training_iteration", max_t=base_config(spec)["epochs"],
                                  grace_period=spec.asha.grace_period, reduction_factor=spec.asha.reduction_factor)
    return tune.TuneConfig(search_alg=SignedSearchGenerator(ConcurrencyLimiter(searcher, max_concurrent=spec.max_concurrent)),
                           scheduler=scheduler, num_samples=plan.num_samples, metric=best_key(spec.metric),
                           mode=spec.mode, reuse_actors=True, time_budget_s=spec.time_budget_s)


def _run_config(spec: SweepSpec, plan: SweepPlan, verbose: bool, watchdog=None, searcher=None,
                progress: bool = False, results=None):
    """Ray's RunConfig; ``watchdog`` (a PendingWatchdog) bounds the wait for trials nobody can place;
    with PBT, ``searcher`` hears of every trial through a callback (:mod:`hybrid_hpo.tune.pbt`) and
    ``results`` (:func:`~hybrid_hpo.tune.pbt.result_log`) keeps every result;
    ``progress`` adds our console lines, ``verbose`` Ray's (both are pickled with the experiment,
    so a resumed sweep prints as it did before)."""
    from ray import tune

    from hybrid_hpo.tune.console import ConsoleProgress
    from hybrid_hpo.tune.pbt import NUM_TO_KEEP, study_recorder

    callbacks = [watchdog] if watchdog is not None else []
    if spec.scheduler == "pbt" and searcher is not None:
        callbacks.append(study_recorder(searcher, list(spec.search)))
    if results is not None:
        callbacks.append(results)
    if progress:
        callbacks.append(ConsoleProgress(list(spec.search), spec.metric, base_config(spec)["epochs"]))
    return tune.RunConfig(
        callbacks=callbacks or None, stop=watchdog.stopper if watchdog else None,
        name=EXPERIMENT_NAME, storage_path=str(plan.results_dir), verbose=1 if verbose else 0,
        checkpoint_config=tune.CheckpointConfig(num_to_keep=NUM_TO_KEEP if spec.scheduler == "pbt" else 2,
                                                checkpoint_frequency=spec.checkpoint_every, checkpoint_at_end=True),
        failure_config=tune.FailureConfig(max_failures=spec.max_failures),
        sync_config=tune.SyncConfig(sync_period=EXPERIMENT_SNAPSHOT_S),
    )


