"""Run a validated sweep on Ray Tune: IFTTrainable per trial, RecordingOptunaSearch outside.

Results directory (default ``results/<name>-<YYYYmmdd-HHMMSS>``)::

    sweep.json        what --resume and people need: spec (path and content), storage URL (password
                      hidden), study name, sweep id, where the results dir was created
    optuna.sqlite3    the default Optuna storage (unless --storage names another)
    artifacts/        trial pictures as Optuna artifacts (``hybrid-hpo dashboard --artifact-dir``)
    tune/             Ray Tune's experiment: per-trial result.json, checkpoints, experiment state
    driver.lock       held by the running driver (:mod:`hybrid_hpo.tune.lock`): one driver per dir
    ray-state.sig     digests of Ray's pickles, checked before --resume unpickles them (:mod:`hybrid_hpo.tune.trust`)

Before Ray starts, :func:`preflight` checks what can be checked without it (results dir writable,
``--address`` answering, the storage opening, an existing study's search space, datasets present
offline), so bad input gives one line and exit code 2 with nothing written. On a cluster the
results dir must be storage every node can write (Ray persists checkpoints there).

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

import json
import math
import os
import re
import signal
import socket
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any

from hybrid_hpo.config import RunConfig, field_names
from hybrid_hpo.errors import ConfigError
from hybrid_hpo.tune.artifacts import ARTIFACTS_DIR, redact
from hybrid_hpo.tune.spec import FIXED_SECTIONS, SweepSpec

METADATA_FILE = "sweep.json"
EXPERIMENT_NAME = "tune"
# Seconds between Ray's experiment snapshots (trials + pickled searcher) and their copy into the
# results dir: what --resume restores after a killed driver. Ray's defaults (>= 10 s, copy every
# 300 s) would lose minutes of a sweep; a snapshot of a sweep this size takes milliseconds.
EXPERIMENT_SNAPSHOT_S = 2
OFFLINE_DATASETS: tuple[str, ...] = ("digits", "mnist1d")  # generated or shipped, never missing


@dataclass
class SweepPlan:
    """Where a sweep writes; everything here is decided before anything is created."""

    results_dir: Path
    storage: str | None  # RDB URL, None = <results_dir>/optuna.sqlite3
    study_name: str
    num_samples: int
    resume: bool
    sweep_id: str = ""  # on every Optuna trial this sweep asks for (user attribute sweep_id)
    storage_moved_from: str | None = None  # resume: the default storage's URL before the results dir moved


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


def plan_sweep(spec: SweepSpec, *, storage: str | None = None, study_name: str | None = None,
               num_samples: int | None = None, results_dir: str | Path | None = None,
               resume: bool = False) -> SweepPlan:
    """Decide paths and names, checking the command-line choices; creates nothing."""
    from hybrid_hpo.tune.search import default_study_name

    if num_samples is not None and num_samples < 1:
        raise ConfigError(f"--num-samples: must be >= 1 (got {num_samples})")
    if storage is not None and "://" not in storage:
        raise ConfigError(f"--storage: {redact(storage)!r} is not an RDB URL; use e.g. "
                          "sqlite:////abs/path/optuna.sqlite3 or postgresql://user@host:5432/db")
    if storage is not None:
        from hybrid_hpo.checks import sqlite_path

        sqlite_path(storage)  # refuses an in-memory SQLite URL
    if resume:
        return _plan_resume(spec, storage, study_name, num_samples, results_dir)
    if results_dir is None:
        results_dir = Path("results") / f"{spec.name}-{datetime.now():%Y%m%d-%H%M%S}"
    results_dir = Path(results_dir).expanduser().resolve()
    check_no_sweep(results_dir)
    num_samples = num_samples or spec.num_trials
    if len(spec.initial_points) > num_samples:
        raise ConfigError(f"initial_points: {len(spec.initial_points)} points but only {num_samples} trials "
                          "(num_trials or --num-samples); give at most that many points or more trials")
    return SweepPlan(results_dir, storage, study_name or default_study_name(spec.name), num_samples,
                     resume=False, sweep_id=uuid.uuid4().hex)


def check_no_sweep(results_dir: Path) -> None:
    """A new sweep does not write into a results dir that holds one."""
    if (results_dir / METADATA_FILE).exists():
        raise ConfigError(f"--results-dir: {results_dir} already holds a sweep; add --resume to continue it "
                          "or choose another directory")


def _plan_resume(spec: SweepSpec, storage: str | None, study_name: str | None, num_samples: int | None,
                 results_dir: str | Path | None) -> SweepPlan:
    from hybrid_hpo.tune.search import STORAGE_FILENAME, sqlite_url

    if results_dir is None:
        candidates = sorted(Path("results").glob(f"{spec.name}-*/{METADATA_FILE}"))
        if not candidates:
            raise ConfigError(f"--resume: no sweep of {spec.name!r} under results/; pass --results-dir DIR")
        results_dir = candidates[-1].parent
    results_dir = Path(results_dir).expanduser().resolve()
    if not (results_dir / METADATA_FILE).exists():
        raise ConfigError(f"--resume: {results_dir} holds no {METADATA_FILE}; pass the results dir of an earlier sweep")
    saved = read_metadata(results_dir)
    if num_samples is not None and num_samples != saved["num_samples"]:
        raise ConfigError(f"--num-samples: a resumed sweep keeps its {saved['num_samples']} trials; drop --num-samples")
    if study_name is not None and study_name != saved["study_name"]:
        raise ConfigError(f"--study-name: a resumed sweep keeps {saved['study_name']!r}; drop --study-name")
    if storage is not None and redact(storage) != saved["storage"]:
        raise ConfigError(f"--storage: a resumed sweep keeps {saved['storage']!r}; drop --storage")
    if storage is None and ":***@" in saved["storage"]:
        raise ConfigError(f"--storage: {saved['storage']!r} was saved without its password; pass the full "
                          "URL with --storage (or leave the password out and use PGPASSWORD / ~/.pgpass)")
    if not (results_dir / EXPERIMENT_NAME).is_dir():
        raise ConfigError(f"--resume: {results_dir / EXPERIMENT_NAME} is missing; Ray never started this sweep, "
                          "run it again without --resume")
    if "sweep" in saved:
        differs = spec_differences(saved["sweep"], spec_record(spec))
        if differs:
            raise ConfigError(f"--resume: the spec differs from the one this sweep started with in {', '.join(differs)}; "
                              f"resume with that spec (its content is in {results_dir / METADATA_FILE}) or start a "
                              "new sweep without --resume")
    moved_from = None
    if storage is None and saved.get("results_dir") and \
            saved["storage"] == sqlite_url(Path(saved["results_dir"]) / STORAGE_FILENAME):
        storage, moved_from = sqlite_url(results_dir / STORAGE_FILENAME), saved["storage"]  # moves with the dir
    return SweepPlan(results_dir, storage or saved["storage"], saved["study_name"], saved["num_samples"], resume=True,
                     sweep_id=saved.get("sweep_id", ""), storage_moved_from=moved_from)


def spec_record(spec: SweepSpec) -> dict[str, Any]:
    """What a resume compares: the whole spec but ``resources`` and ``name`` (those may change), as JSON."""
    return json.loads(json.dumps(spec.model_dump(mode="json", exclude={"resources", "name"})))


def spec_differences(old: Any, new: Any, prefix: str = "") -> list[str]:
    """Dotted paths of the fields where two spec records differ."""
    if isinstance(old, dict) and isinstance(new, dict):
        return [path for key in sorted(set(old) | set(new), key=str)
                for path in spec_differences(old.get(key), new.get(key), f"{prefix}{key}.")]
    return [] if old == new else [prefix.rstrip(".")]


def read_metadata(results_dir: Path) -> dict[str, Any]:
    """The results dir's sweep.json; ConfigError when it is not the JSON object a sweep wrote."""
    path = results_dir / METADATA_FILE
    try:
        saved = json.loads(path.read_bytes())
    except (OSError, ValueError) as error:
        raise ConfigError(f"--resume: {path} is unreadable or corrupt ({type(error).__name__}); restore it from "
                          "a backup, or start a new sweep in another --results-dir") from None
    missing = [key for key in ("storage", "study_name", "num_samples") if key not in saved] \
        if isinstance(saved, dict) else ["a JSON object"]
    if missing:
        raise ConfigError(f"--resume: {path} is corrupt (no {missing[0]}); restore it from a backup, or start a "
                          "new sweep in another --results-dir")
    return saved


def run_sweep(spec: SweepSpec, plan: SweepPlan, *, address: str | None = None, spec_path: str = "",
              verbose: int = 1) -> SweepOutcome:
    """Check the inputs (:func:`preflight`), hold the results dir's lock for the whole run (one
    driver per dir, :mod:`~hybrid_hpo.tune.lock`), verify Ray's state before a resume unpickles it
    (:mod:`~hybrid_hpo.tune.trust`), start (or join, with ``address``) Ray, run the sweep per
    ``plan``, return the outcome.

    Ray is initialised here only if it is not running in this process yet, and shut down at the
    end only if it was started here.
    """
    import ray

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
                init_ray(address)
        except ConfigError:
            if created:
                remove_lock_only_dir(plan.results_dir)
            raise
        previous_sigterm = signal.signal(signal.SIGTERM, _sigterm_as_sigint)
        try:
            check_resources(spec, ray.cluster_resources())
            outcome = _fit(spec, plan, storage, signer, spec_path, verbose)
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


def preflight(spec: SweepSpec, plan: SweepPlan, *, address: str | None = None, check_data: bool = True):
    """Everything checkable before Ray starts; returns the opened Optuna storage (RDBStorage).

    ConfigError (one line, nothing written) for: no Ray GCS answering at ``address`` (checked
    first, with a timeout), a results dir that cannot be created or written, a storage that is in
    memory, whose folder cannot be written or whose file is not SQLite, or that does not open, a
    study of that name with a different search space / objective / fixed settings, and — for a
    local Ray (no ``address``), where the trials run on this machine — resources this machine does
    not have, a missing GPU for ``device: cuda``, and data that does not load or split at some corner
    of the search space (a dataset missing offline, a download that fails, an empty split). On a
    cluster only the built-in datasets are checked: the others live on the workers.
    """
    from hybrid_hpo.checks import check_sqlite_file, check_writable, sqlite_path
    from hybrid_hpo.tune.search import make_storage

    if address:
        probe_address(address)
    if not plan.resume:
        check_writable(plan.results_dir, "--results-dir")
    if check_data:
        check_trials_can_run(spec, local=not address)
    if not address:
        check_resources(spec, local_resources())
    if plan.storage is None:
        return None  # a new SQLite file in the (not yet created) results dir: nothing to check
    database = sqlite_path(plan.storage)
    if database is not None:
        check_sqlite_file(database, "--storage")
    storage = make_storage(plan.storage)
    if not plan.resume:
        _check_study(spec, storage, plan.study_name, redact(plan.storage))
    return storage


def check_writable(results_dir: Path) -> None:
    """The results dir can be created and written (see :func:`hybrid_hpo.checks.check_writable`)."""
    from hybrid_hpo.checks import check_writable as check

    check(results_dir, "--results-dir")


def check_trials_can_run(spec: SweepSpec, local: bool = True) -> None:
    """Every corner of the search space loads and splits its data as its trial will (each distinct
    data setting once); ``local`` (trials run on this machine) also checks the torchvision datasets
    (downloading them when ``download`` is set) and that ``device: cuda`` has a GPU. A sweep of
    one's own task (``task.factory``) builds the task at every corner on this machine and checks it
    reports the objective (:func:`hybrid_hpo.task.check_task`); on a cluster, where its data may
    live on the workers only, the factory's import is what is checked."""
    from hybrid_hpo.checks import check_data_split, check_device
    from hybrid_hpo.task import check_task, load_factory

    checked = set()
    for label, values in spec.sample_configs():
        config = RunConfig.from_mapping(values)
        if local:
            check_device(config.device, _field(spec, "device"))
        if config.task is not None:
            if local:
                check_task(config, spec.metric)
            else:
                load_factory(config.task)
            continue
        data = (config.dataset, config.val_fraction, config.seed, config.train_size, config.val_size,
                config.imbalance, config.data_root, config.download)
        if data in checked or (not local and config.dataset not in OFFLINE_DATASETS + ("text",)):
            continue
        checked.add(data)
        try:
            check_data_split(config)
        except ConfigError as error:
            match = re.match(r"(\w+): ", str(error))
            if match and match.group(1) in field_names():
                raise ConfigError(f"{_field(spec, match.group(1))}: {str(error)[match.end():]} (at {label})") from None
            raise ConfigError(f"task.dataset: {error}") from None


def _field(spec: SweepSpec, key: str) -> str:
    """The spec field that sets RunConfig key ``key`` (``search.x``, ``task.x``, ...), for messages."""
    if key in spec.search:
        return f"search.{key}"
    for section in FIXED_SECTIONS:
        if key in getattr(spec, section) or (section, key) == ("solver", "solver"):
            return f"{section}.{key}"
    return f"task.{key}"


def local_resources() -> dict[str, float]:
    """What the local Ray a sweep starts will have: every CPU of this machine and its visible GPUs."""
    import torch

    return {"CPU": float(os.cpu_count() or 1), "GPU": float(torch.cuda.device_count() if torch.cuda.is_available() else 0)}


def check_resources(spec: SweepSpec, cluster: dict[str, float]) -> None:
    """One trial's resources fit the cluster (Ray's ``cluster_resources()``), else its trials would
    wait PENDING forever; ConfigError naming ``resources``."""
    needed = trial_resources(spec, cluster)
    for key, name in (("cpu", "CPU"), ("gpu", "GPU")):
        have = cluster.get(name, 0.0)
        if needed[key] > have:
            raise ConfigError(f"resources.{key}: a trial needs {needed[key]:g} {name}s but the cluster has "
                              f"{have:g}; lower resources.{key} (or add nodes) so trials can start")


def _check_study(spec: SweepSpec, storage, study_name: str, shown_url: str) -> None:
    """A study named ``study_name`` may be joined (several drivers, one study) only if a sweep with
    the same search space, fixed settings and objective made it (see :func:`study_signature`)."""
    found = [s for s in storage.get_all_studies() if s.study_name == study_name]
    if not found:
        return
    mine, attrs = study_signature(spec), found[0].user_attrs
    differs = [key.replace("_", " ") for key in mine if attrs.get(key) != mine[key]]
    if not differs:
        return
    what = f"different {differs[0]}" if "search_space" in attrs else "sweep (no recorded search space)"
    raise ConfigError(f"--study-name: {study_name!r} already exists in {shown_url} with a {what}; "
                      "choose a new name (or continue that sweep with --resume --results-dir)")


def study_signature(spec: SweepSpec) -> dict[str, Any]:
    """What a study records about its sweep (user attributes), as stored (JSON round trip)."""
    return json.loads(json.dumps({"search_space": search_space_json(spec), "fixed_settings": spec.fixed_settings(),
                                  "metric": spec.metric}))


def search_space_json(spec: SweepSpec) -> dict[str, str]:
    """The sweep's search space as Optuna distribution JSON, stored on the study and compared by
    :func:`preflight` when another driver joins the study."""
    from optuna.distributions import distribution_to_json

    from hybrid_hpo.tune.distributions import to_optuna_distribution

    return {name: distribution_to_json(to_optuna_distribution(name, dist)) for name, dist in spec.search.items()}


def init_ray(address: str | None) -> None:
    """Join the Ray cluster at ``address`` (ConfigError when that fails) or start a local Ray on
    127.0.0.1 with every CPU of this machine and no dashboard."""
    import ray

    from hybrid_hpo.tune.ray_token import make_token_private

    if address:
        resolved = resolve_address(address)
        if resolved is not None:  # "auto" as found by preflight, never Ray's own "any local Ray" search
            host, port = resolved
            address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        try:
            ray.init(address=address, log_to_driver=True)
        except (ConnectionError, RuntimeError, ValueError) as error:
            reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise ConfigError(f"--address: cannot join Ray at {address!r} ({reason}); check the address "
                              "and that this machine runs the cluster's Ray and Python versions") from None
    else:
        make_token_private()
        ray.init(num_cpus=os.cpu_count() or 1, include_dashboard=False, _node_ip_address="127.0.0.1")


_HTTP2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0])  # + empty SETTINGS


def resolve_address(address: str) -> tuple[str, int] | None:
    """(host, port) of ``--address``: HOST:PORT, [IPv6]:PORT, or ``auto`` (RAY_ADDRESS, else the
    cluster ``ray start`` last started on this machine; never "any Ray process found", which could
    be another user's). None for a Ray Client ``ray://`` address (left to ray.init)."""
    if address.startswith("ray://"):
        return None
    if address == "auto":
        from ray._private.utils import read_ray_address

        found = os.environ.get("RAY_ADDRESS") or read_ray_address(None)
        if not found or found == "auto":
            raise ConfigError("--address: auto found no Ray cluster on this machine (no RAY_ADDRESS and no cluster "
                              "started with ray start); start one (ray start --head) or pass HOST:PORT")
        address = found
    match = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\]:(\d+)|([\w.\-]+):(\d+)", address)
    if match is None:
        raise ConfigError(f"--address: {address!r} is not HOST:PORT; e.g. 10.0.0.1:6379, [::1]:6379 or auto")
    host, port = (match.group(1), match.group(2)) if match.group(1) else (match.group(3), match.group(4))
    return host, int(port)


def probe_address(address: str, timeout_s: float = 5.0) -> None:
    """Fail fast, with a bound, unless a Ray GCS answers at ``address`` (ray.init would retry for
    minutes, or hang on a listener that is not Ray): connect, send the HTTP/2 preface, and expect
    the gRPC server's SETTINGS frame back within ``timeout_s``."""
    resolved = resolve_address(address)
    if resolved is None:
        return
    host, port = resolved
    try:
        with socket.create_connection((host, port), timeout=timeout_s) as connection:
            connection.sendall(_HTTP2_PREFACE)
            reply = connection.recv(9)
    except socket.timeout:
        raise ConfigError(f"--address: {address} accepts connections but gives no Ray (gRPC) answer within "
                          f"{timeout_s:g} s; it is not a Ray head node: check the port (ray start --head "
                          "prints it)") from None
    except OSError as error:
        raise ConfigError(f"--address: nothing answers at {address} ({error.strerror or error}); "
                          "start Ray there (ray start --head) or fix the address") from None
    if len(reply) < 9 or reply[3] != 4:  # a frame header (length 3 bytes, type 1 byte = SETTINGS)
        raise ConfigError(f"--address: {address} answers, but not as a Ray GCS (gRPC); it is not a Ray head "
                          "node: check the port (ray start --head prints it)")


def _fit(spec: SweepSpec, plan: SweepPlan, storage, signer, spec_path: str, verbose: int) -> SweepOutcome:
    from ray import tune

    from optuna.trial import TrialState

    from hybrid_hpo.tune.pending import PendingWatchdog
    from hybrid_hpo.tune.search import close_running, make_search, make_storage, storage_moved, storage_url
    from hybrid_hpo.tune.trainable import IFTTrainable
    from hybrid_hpo.tune.trust import signing

    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", str(EXPERIMENT_SNAPSHOT_S))
    storage = storage if storage is not None else make_storage(plan.storage, plan.results_dir)
    url = storage_url(storage) or str(plan.storage)
    trainable = tune.with_resources(IFTTrainable, trial_resources(spec))
    watchdog = PendingWatchdog(spec.pending_timeout_s)
    experiment_dir = plan.results_dir / EXPERIMENT_NAME
    moved = partial(storage_moved, plan.storage_moved_from, url)
    if plan.resume:
        with moved():  # Ray unpickles the searcher's storage here and again in fit()
            tuner = tune.Tuner.restore(str(experiment_dir), trainable=trainable,
                                       resume_unfinished=True, resume_errored=False, restart_errored=False)
    else:
        searcher = make_search(spec.search, spec.metric, spec.mode, storage=storage, study_name=plan.study_name,
                               sampler=spec.sampler, seed=spec.seed, n_startup_trials=startup_trials(spec, plan),
                               points_to_evaluate=spec.initial_points, sweep_id=plan.sweep_id)
        searcher.attach_pictures(experiment_dir, plan.results_dir / ARTIFACTS_DIR)
        for key, value in study_signature(spec).items():
            searcher.study.set_user_attr(key, value)
        searcher.study.set_user_attr("spec", spec_path)
        (plan.results_dir / METADATA_FILE).write_text(json.dumps({
            "spec": spec_path, "name": spec.name, "storage": redact(url), "study_name": plan.study_name,
            "num_samples": plan.num_samples, "created": datetime.now().isoformat(timespec="seconds"),
            "sweep_id": plan.sweep_id, "results_dir": str(plan.results_dir), "sweep": spec_record(spec),
        }, indent=2) + "\n")
        tuner = tune.Tuner(trainable, param_space=base_config(spec),
                           tune_config=_tune_config(spec, plan, searcher),
                           run_config=_run_config(spec, plan, verbose, watchdog))
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
    histories = {r.metrics.get("trial_id", str(i)): _history(r) for i, r in enumerate(grid)}
    return SweepOutcome(plan.results_dir, url, plan.study_name, rows, wall_s=math.nan,
                        errors=sum(r.error is not None for r in grid), interrupted=interrupted,
                        histories=histories, budget_spent=budget_spent, stopped_because=watchdog.message)


def _follow_move(generator, results_dir: Path) -> None:
    """Point a search restored from Ray's pickle at where the results dir is now (it may have moved):
    Ray moves the trials it restores, but its pickled experiment still names the old folder for
    new trials, and the searcher uploads pictures from and into folders of the old one."""
    generator._experiment.storage.storage_fs_path = str(results_dir)  # Ray's SearchGenerator keeps no public handle
    searcher = generator.searcher
    while hasattr(searcher, "searcher"):  # ConcurrencyLimiter -> the searcher it limits
        searcher = searcher.searcher
    searcher.attach_pictures(results_dir / EXPERIMENT_NAME, results_dir / ARTIFACTS_DIR)


def _history(result) -> list[dict[str, Any]]:
    """Every result a trial reported (one per epoch), oldest first, as plain dicts."""
    frame = result.metrics_dataframe
    return [] if frame is None else frame.to_dict("records")


def base_config(spec: SweepSpec) -> dict[str, Any]:
    """The fixed settings as a trial config, with ``epochs`` always explicit (the trial budget)."""
    fixed = spec.fixed_settings()
    return {**fixed, "epochs": RunConfig.from_mapping(fixed).epochs}


def startup_trials(spec: SweepSpec, plan: SweepPlan) -> int:
    """Random trials before the sampler's model: the spec's, else half the budget (2 to 10)."""
    if spec.startup_trials is not None:
        return spec.startup_trials
    return max(2, min(10, plan.num_samples // 2))


def trial_resources(spec: SweepSpec, cluster: dict[str, float] | None = None) -> dict[str, float]:
    """CPUs and GPUs per trial; gpu "auto" = 1 when the cluster (default: Ray's
    ``cluster_resources()``) has a GPU, else 0."""
    gpu = spec.resources.gpu
    if gpu == "auto":
        if cluster is None:
            import ray

            cluster = ray.cluster_resources()
        gpu = 1.0 if cluster.get("GPU", 0) >= 1 else 0.0
    return {"cpu": spec.resources.cpu, "gpu": gpu}


def _tune_config(spec: SweepSpec, plan: SweepPlan, searcher):
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search import ConcurrencyLimiter

    from hybrid_hpo.tune.trust import SignedSearchGenerator

    scheduler = None
    if spec.scheduler == "asha":
        scheduler = ASHAScheduler(time_attr="training_iteration", max_t=base_config(spec)["epochs"],
                                  grace_period=spec.asha.grace_period, reduction_factor=spec.asha.reduction_factor)
    return tune.TuneConfig(search_alg=SignedSearchGenerator(ConcurrencyLimiter(searcher, max_concurrent=spec.max_concurrent)),
                           scheduler=scheduler, num_samples=plan.num_samples, metric=spec.metric, mode=spec.mode,
                           reuse_actors=True, time_budget_s=spec.time_budget_s)


def _run_config(spec: SweepSpec, plan: SweepPlan, verbose: int, watchdog=None):
    """Ray's RunConfig; ``watchdog`` (a PendingWatchdog) bounds the wait for trials nobody can place."""
    from ray import tune

    return tune.RunConfig(
        callbacks=[watchdog] if watchdog is not None else None, stop=watchdog.stopper if watchdog else None,
        name=EXPERIMENT_NAME, storage_path=str(plan.results_dir), verbose=verbose,
        checkpoint_config=tune.CheckpointConfig(num_to_keep=2, checkpoint_frequency=spec.checkpoint_every,
                                                checkpoint_at_end=True),
        failure_config=tune.FailureConfig(max_failures=spec.max_failures),
        sync_config=tune.SyncConfig(sync_period=EXPERIMENT_SNAPSHOT_S),
    )


def result_rows(grid, spec: SweepSpec, budget_spent: bool = False) -> list[dict[str, Any]]:
    """One row per Ray trial (searched settings, metrics, epochs, seconds, status), best first.

    status: done (ran all epochs), pruned (stopped early by ASHA), unfinished (interrupted; "budget"
    when the sweep's time budget stopped it), ERROR.
    """
    rows, budget = [], base_config(spec)["epochs"]
    shown = table_metrics([result.metrics or {} for result in grid], spec.metric)
    for result in grid:
        metrics, config = result.metrics or {}, result.config or {}
        row: dict[str, Any] = {"trial": metrics.get("trial_id", "?")}
        row.update({key: config.get(key) for key in spec.search})
        row.update({key: metrics.get(key, math.nan) for key in shown})
        row["epochs"] = metrics.get("training_iteration", 0)
        row["time_s"] = metrics.get("time_total_s", math.nan)
        row["status"] = _status(result.error, metrics, budget, budget_spent)
        rows.append(row)
    sign = 1.0 if spec.mode == "min" else -1.0
    rows.sort(key=lambda r: (math.isnan(r[spec.metric]), sign * r[spec.metric] if not math.isnan(r[spec.metric]) else 0))
    return rows


def table_metrics(results: list[dict[str, Any]], objective: str) -> list[str]:
    """The metric columns of the table: the objective, then the val_* and test_* metrics any trial
    reported (loss and the task's metrics, e.g. val_acc or test_mae; balanced accuracies left out)."""
    reported = dict.fromkeys(key for metrics in results for key in metrics
                             if key.startswith(("val_", "test_")) and not key.endswith("balanced_acc"))
    ordered = [key for prefix in ("val_", "test_") for key in reported if key.startswith(prefix)]
    return list(dict.fromkeys((objective, *ordered)))


def _status(error: Any, metrics: dict[str, Any], budget: int, budget_spent: bool) -> str:
    if error is not None:
        return "ERROR"
    if not metrics.get("done"):
        return "budget" if budget_spent else "unfinished"
    return "done" if metrics.get("training_iteration", 0) >= budget else "pruned"


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
