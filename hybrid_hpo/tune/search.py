"""The outer search: Ray Tune's OptunaSearch on a real Optuna storage, recording test metrics.

Ray's ``OptunaSearch`` (2.60) only hands the objective to Optuna: ``on_trial_result`` reports it as
an intermediate value at step ``training_iteration`` — but never for a trial's last result, which
Tune routes straight to ``on_trial_complete`` — and ``on_trial_complete`` calls ``study.tell``.
:class:`RecordingOptunaSearch` adds what a study needs to be read on its own in optuna-dashboard:

- the last epoch's intermediate value, so every epoch 1..E of the objective is in the study;
- every other numeric metric of the final result (test_acc, test_loss, val_acc, hypergrad_norm,
  solver diagnostics, time_total_s, ...) and the Ray trial id as trial user attributes;
- the searcher's ``sweep_id`` on every trial it asks for (user attribute), so a driver closes only
  its own trials when several drivers share one study (:func:`close_running`);
- an honest state: COMPLETE when the trial ran to its budget, PRUNED when a scheduler (ASHA)
  stopped it early, FAIL when it errored or the objective is not finite (Ray's version leaves such
  a trial RUNNING forever because ``tell`` raises);
- with :meth:`RecordingOptunaSearch.attach_pictures`, the pictures of the trial's last checkpoint
  as Optuna artifacts (uploaded before ``tell``: a finished trial takes no more attributes).

All writes go through the driver process, so a SQLite file is a safe storage.
"""
from __future__ import annotations

import logging
import math
import uuid
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState
from ray.tune.search.optuna import OptunaSearch

from hybrid_hpo.errors import ConfigError
from hybrid_hpo.tune.artifacts import last_checkpoint, upload_pictures
from hybrid_hpo.tune.distributions import to_optuna_distribution
from hybrid_hpo.tune.plan import default_study_name
from hybrid_hpo.tune.samplers import make_sampler
from hybrid_hpo.tune.urls import check_rdb_url, is_sqlite_in_memory, redact, results_dir_storage, sqlite_file

logger = logging.getLogger(__name__)

SWEEP_ID_ATTR = "sweep_id"  # trial user attribute: the sweep (results dir) whose driver asked for the trial

# Ray's bookkeeping keys in a result: not metrics, so not user attributes.
_RAY_BOOKKEEPING = frozenset(
    {
        "done", "timestamp", "pid", "hostname", "node_ip", "date", "experiment_tag", "trial_id",
        "time_this_iter_s", "time_since_restore", "iterations_since_restore", "timesteps_total",
        "episodes_total", "timesteps_since_restore", "should_checkpoint", "checkpoint_dir_name", "reported_at",
    }
)
# Text metrics kept as user attributes (all other strings in a result are Ray's or the config's).
_TEXT_METRICS = frozenset({"node_id", "lineage"})  # lineage: PBT exploits as JSON (tune/trainable.py)


def make_storage(storage: str | optuna.storages.BaseStorage | None, results_dir: str | Path = "results"):
    """An Optuna storage: a BaseStorage as is, an RDB URL, or (None) ``<results_dir>/optuna.sqlite3``.

    For a SQLite URL the file's folder is created if missing and the database is switched to
    write-ahead logging (see :func:`_fast_sqlite`).
    """
    if isinstance(storage, optuna.storages.BaseStorage):
        return storage
    if storage is None:
        storage = results_dir_storage(results_dir)
    check_rdb_url(storage, "storage")
    database = sqlite_file(storage)
    if database is not None:
        database.parent.mkdir(parents=True, exist_ok=True)
    try:
        rdb = RelocatableRDBStorage(storage)
    except Exception as error:  # SQLAlchemy raises many types for a bad URL or driver
        reason = str(error).replace(storage, redact(storage)).strip().splitlines()[0]
        raise ConfigError(f"storage: cannot open {redact(storage)!r} ({type(error).__name__}: {reason}); "
                          "check the URL, that the server runs and that its driver is installed") from None
    if rdb.engine.name == "sqlite" and not is_sqlite_in_memory(storage):
        _fast_sqlite(rdb)
    return rdb


_MOVED_URLS: dict[str, str] = {}


class RelocatableRDBStorage(optuna.storages.RDBStorage):
    """An RDBStorage whose unpickled copies (in Ray's pickled searcher) open the URL that
    :func:`storage_moved` maps theirs to: a results dir with its SQLite file moved between a sweep
    and its resume. (RDBStorage connects while it is unpickled, so this cannot wait until after.)"""

    def __setstate__(self, state: dict[Any, Any]) -> None:
        state["url"] = _MOVED_URLS.get(state["url"], state["url"])
        super().__setstate__(state)


@contextmanager
def storage_moved(old_url: str | None, new_url: str) -> Iterator[None]:
    """While the ``with`` block runs, storages unpickled with ``old_url`` open ``new_url``."""
    if old_url is not None and old_url != new_url:
        _MOVED_URLS[old_url] = new_url
    try:
        yield
    finally:
        _MOVED_URLS.pop(old_url or "", None)


def _fast_sqlite(storage: optuna.storages.RDBStorage) -> None:
    """WAL journal + synchronous=NORMAL on every connection of this storage.

    Each user attribute and intermediate value is its own transaction; with the default rollback
    journal each costs an fsync (measured ~22 ms here, 1.8 ms with WAL). WAL also lets
    optuna-dashboard read while the sweep writes. The journal mode is stored in the file, so a
    storage unpickled by ``Tuner.restore`` (new engine, no listener) keeps WAL.
    """
    from sqlalchemy import event

    def set_pragmas(connection: Any, _record: Any) -> None:
        cursor = connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    event.listen(storage.engine, "connect", set_pragmas)
    storage.engine.dispose()  # connections made so far lack the pragmas


def storage_url(storage: optuna.storages.BaseStorage) -> str | None:
    """The URL of an RDB storage (what ``hybrid-hpo dashboard --storage`` needs), else None."""
    url = getattr(storage, "url", None)
    return url if isinstance(url, str) else None


def metrics_as_user_attrs(result: Mapping[str, Any], objective: str) -> dict[str, bool | int | float | str]:
    """Numeric metrics of a (flattened) Tune result, minus Ray bookkeeping, config and the objective.

    Non-finite floats become strings ('nan', 'inf') so the dashboard's JSON stays valid.
    """
    attrs: dict[str, bool | int | float | str] = {}
    for key, value in result.items():
        if key == objective or key in _RAY_BOOKKEEPING or key.startswith("config/") or key == "config":
            continue
        if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:  # numpy / torch scalars
            value = value.item()
        if isinstance(value, str) and key in _TEXT_METRICS:
            attrs[key] = value
        elif isinstance(value, bool) or isinstance(value, int):
            attrs[key] = value
        elif isinstance(value, float):
            attrs[key] = value if math.isfinite(value) else str(value)
    return attrs


class RecordingOptunaSearch(OptunaSearch):
    """OptunaSearch that also records the last epoch, all other metrics and the Ray id (see module doc).

    ``budget_key``: the config key holding a trial's budget in ``training_iteration`` units (our
    ``epochs``); a trial that ends before its budget was stopped by a scheduler and is told PRUNED.
    """

    def __init__(self, *args: Any, budget_key: str | None = "epochs", sweep_id: str | None = None,
                 **kwargs: Any) -> None:
        self._budget_key = budget_key
        self.sweep_id = sweep_id or uuid.uuid4().hex  # pickled with the searcher: a resumed sweep keeps it
        self._reported_step: dict[str, int] = {}
        self._experiment_dir: str | None = None
        self._artifact_dir: str | None = None
        super().__init__(*args, **kwargs)

    def attach_pictures(self, experiment_dir: str | Path, artifact_dir: str | Path) -> None:
        """Upload each ended trial's checkpoint pictures (``<experiment_dir>/<trial>/checkpoint_*/
        pictures/*.png``) into a FileSystemArtifactStore at ``artifact_dir``."""
        self._experiment_dir, self._artifact_dir = str(experiment_dir), str(artifact_dir)

    @property
    def study(self) -> optuna.Study:
        return self._ot_study

    def suggest(self, trial_id: str) -> dict | None:
        config = super().suggest(trial_id)
        if config is not None:
            set_user_attrs(self._ot_trials[trial_id], {"ray_trial_id": trial_id, SWEEP_ID_ATTR: self.sweep_id})
        return config

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        step = result.get("training_iteration", 0)
        if trial_id in self._ot_trials and trial_id not in self._completed_trials:
            if step <= self._reported_step.get(trial_id, 0):
                return  # a trial restarted on resume re-reports epochs the study already holds
            self._reported_step[trial_id] = step
        super().on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if trial_id in self._completed_trials:
            return super().on_trial_complete(trial_id, result, error)  # Ray's "already finished" warning
        if trial_id not in self._ot_trials:
            logger.warning("trial %s completed but this searcher never suggested it; not in the study", trial_id)
            return
        ot_trial = self._ot_trials[trial_id]
        value = (result or {}).get(self.metric)
        state, reason = self._final_state(result, value, error)
        attrs = metrics_as_user_attrs(result, self.metric) if result else {}
        if result:
            step = result.get("training_iteration")
            if value is not None and step is not None and step != self._reported_step.get(trial_id):
                if math.isfinite(value):
                    ot_trial.report(value, step)
                self._reported_step[trial_id] = step
        if reason:
            attrs["end_reason"] = reason
        set_user_attrs(ot_trial, attrs)
        self._attach_pictures(trial_id, ot_trial)
        self._ot_study.tell(ot_trial, value if state == TrialState.COMPLETE else None, state=state)
        self._completed_trials.add(trial_id)

    def _attach_pictures(self, trial_id: str, ot_trial: optuna.Trial) -> None:
        if self._experiment_dir is None or self._artifact_dir is None:
            return
        try:
            checkpoint = last_checkpoint(self._experiment_dir, trial_id)
            if checkpoint is not None:
                upload_pictures(ot_trial, checkpoint, self._artifact_dir)
        except OSError as error:  # pictures are for people; never fail a trial over them
            logger.warning("trial %s: pictures not attached (%s)", trial_id, error)
            ot_trial.set_user_attr("pictures_error", str(error))

    def _final_state(self, result: dict | None, value: Any, error: bool) -> tuple[TrialState, str]:
        if error:
            return TrialState.FAIL, "trial raised an error (see Ray's trial error.txt)"
        if value is None:
            return TrialState.PRUNED, "stopped before reporting the objective"
        if not math.isfinite(value):
            return TrialState.FAIL, f"{self.metric} is {value}"
        budget = result.get(f"config/{self._budget_key}") if self._budget_key else None
        if isinstance(budget, int) and result.get("training_iteration", budget) < budget:
            return TrialState.PRUNED, f"stopped by the scheduler at iteration {result['training_iteration']} of {budget}"
        return TrialState.COMPLETE, ""


def set_user_attrs(trial: optuna.Trial, attrs: Mapping[str, Any]) -> None:
    """``trial.set_user_attr(key, value)`` for each of ``attrs``; on an RDB storage in one
    transaction (a trial's ~40 final metrics: one commit, not one each, on the driver's event loop
    between a trial's end and the next trial's start). Other storages, or a transaction that meets a
    key written meanwhile by someone else, get one write per key, as Optuna does it."""
    if not attrs:
        return
    rdb = getattr(trial.storage, "_backend", trial.storage)  # Optuna wraps an RDBStorage in a cache
    if isinstance(rdb, optuna.storages.RDBStorage) and _in_one_transaction(rdb, trial._trial_id, attrs):
        trial._cached_frozen_trial.user_attrs.update(attrs)  # what Trial.set_user_attr keeps in step
        return
    for key, value in attrs.items():
        trial.set_user_attr(key, value)


def _in_one_transaction(rdb: optuna.storages.RDBStorage, trial_id: int, attrs: Mapping[str, Any]) -> bool:
    """Write ``attrs`` with Optuna's own per-key statement, all in one transaction; False (nothing
    written) when a key's row appeared meanwhile (the transaction is rolled back, not half-done)."""
    from optuna.storages._rdb.models import TrialUserAttributeModel
    from optuna.storages._rdb.storage import _create_scoped_session
    from sqlalchemy.exc import IntegrityError

    try:
        with _create_scoped_session(rdb.scoped_session) as session:
            for key, value in attrs.items():
                rdb._set_trial_attr_without_commit(session, TrialUserAttributeModel, trial_id, key, value)
    except IntegrityError:
        return False
    return True


def close_running(storage: optuna.storages.BaseStorage, study_name: str, sweep_id: str,
                  state: TrialState = TrialState.FAIL,
                  reason: str = "sweep interrupted before Ray recorded this trial") -> int:
    """Mark the study's RUNNING trials of sweep ``sweep_id`` ``state`` (``end_reason`` = ``reason``);
    return how many. Trials of other drivers sharing the study are not touched.

    Call it only when Ray has finished every trial of the sweep. A trial of the sweep still RUNNING then is
    either one the searcher asked Optuna for after Ray's last experiment checkpoint before an
    interruption (the restored searcher does not know it; Ray suggests a fresh trial in its place),
    which is FAIL, or one the sweep's time budget stopped before its searcher heard the end, which
    the sweep closes as PRUNED. Without this it would stay RUNNING in the study forever.
    """
    study_id = storage.get_study_id_from_name(study_name)
    running = storage.get_all_trials(study_id, deepcopy=False, states=(TrialState.RUNNING,))
    stale = [trial for trial in running if trial.user_attrs.get(SWEEP_ID_ATTR) == sweep_id]
    for trial in stale:
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, trial.number)
        storage.set_trial_user_attr(trial_id, "end_reason", reason)
        storage.set_trial_state_values(trial_id, state)
    return len(stale)


def make_search(
    space: Mapping[str, Any],
    metric: str = "sel_loss_best",
    mode: str = "min",
    storage: str | optuna.storages.BaseStorage | None = None,
    study_name: str | None = None,
    sampler: str = "tpe",
    seed: int | None = None,
    *,
    n_startup_trials: int | None = None,
    results_dir: str | Path = "results",
    points_to_evaluate: list[dict[str, Any]] | None = None,
    sweep_id: str | None = None,
) -> RecordingOptunaSearch:
    """An OptunaSearch over ``space`` backed by a real Optuna storage, recording test metrics.

    space: name -> LogUniform/Uniform/IntRange/Choice, a Ray Tune domain (tune.loguniform, ...)
        or an optuna distribution. Fixed settings go in the Tune ``config``/``param_space``.
    metric/mode: the objective reported by the trainable, "min" or "max" (IFTTrainable reports
        ``<its metric>_best``, by default ``sel_loss_best``: see :mod:`hybrid_hpo.objective`).
    storage: an RDB URL, an optuna BaseStorage, or None for ``<results_dir>/optuna.sqlite3``.
    study_name: None gives a unique name (a rerun never appends to an old study by accident).
    sampler: "tpe" (constant liar) or "gp"; seed: the sampler's seed;
    n_startup_trials: random trials before the model kicks in (the sampler's default if None).
    points_to_evaluate: warm start: settings of the first trials (enqueued in the study; a searched
        key left out is sampled).
    sweep_id: recorded on every trial this searcher asks for (default: a new random id).
    The study is created (or loaded, if the name exists) in the storage right away, its objective
    named ``metric`` (optuna-dashboard shows "sel_loss_best", not "Objective 0").
    """
    if not space:
        raise ConfigError("space: empty search space; give at least one distribution")
    if mode not in ("min", "max"):
        raise ConfigError(f"mode: {mode!r} is not valid; use 'min' or 'max'")
    if metric.startswith("test_"):
        raise ConfigError(f"metric: {metric} would tune on the test set; use sel_loss_best or sel_acc_best")
    distributions = {name: to_optuna_distribution(name, value) for name, value in space.items()}
    searcher = RecordingOptunaSearch(
        space=distributions,
        metric=metric,
        mode=mode,
        sampler=make_sampler(sampler, seed, n_startup_trials),
        study_name=study_name or default_study_name(),
        storage=make_storage(storage, results_dir),
        sweep_id=sweep_id,
    )
    with warnings.catch_warnings():  # set_metric_names is marked experimental (since Optuna 3.2)
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        searcher.study.set_metric_names([metric])
    # Enqueued here, not through Ray's points_to_evaluate (which refuses a point without every key).
    for point in points_to_evaluate or ():
        searcher.study.enqueue_trial(point)
    return searcher
