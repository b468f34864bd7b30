"""What a sweep will do, decided before anything is created: its paths and names, what each trial
gets (fixed settings, budget, resources), and the resume metadata that makes ``--resume`` find all
of it again.

Results directory (default ``results/<name>-<YYYYmmdd-HHMMSS>``)::

    sweep.json        what --resume and people need: spec (path and content), storage URL (password
                      hidden), study name, sweep id, where the results dir was created
    optuna.sqlite3    the default Optuna storage (unless --storage names another)
    artifacts/        trial pictures as Optuna artifacts (``hybrid-hpo dashboard --artifact-dir``)
    tune/             Ray Tune's experiment: per-trial result.json, checkpoints, experiment state
    driver.lock       held by the running driver (:mod:`hybrid_hpo.tune.lock`): one driver per dir
    ray-state.sig     digests of Ray's pickles, checked before --resume unpickles them (:mod:`hybrid_hpo.tune.trust`)

On a cluster the results dir must be storage every node can write (Ray persists checkpoints there).
A resume keeps the study, storage, trial count and spec it started with (``resources`` and ``name``
may change); a moved results dir brings its default SQLite storage along.
"""
from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from hybrid_hpo.checks import sqlite_path
from hybrid_hpo.config import RunConfig
from hybrid_hpo.errors import ConfigError
from hybrid_hpo.tune.spec import SweepSpec
from hybrid_hpo.tune.urls import check_rdb_url, redact, results_dir_storage

METADATA_FILE = "sweep.json"
EXPERIMENT_NAME = "tune"
ARTIFACTS_DIR = "artifacts"


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


def default_study_name(prefix: str = "hybrid-hpo") -> str:
    """A study name unique per call: ``<prefix>-<YYYYmmdd-HHMMSS>-<6 hex>``."""
    return f"{prefix}-{datetime.now():%Y%m%d-%H%M%S}-{uuid.uuid4().hex[:6]}"


def plan_sweep(spec: SweepSpec, *, storage: str | None = None, study_name: str | None = None,
               num_samples: int | None = None, results_dir: str | Path | None = None,
               resume: bool = False) -> SweepPlan:
    """Decide paths and names, checking the command-line choices; creates nothing."""
    if num_samples is not None and num_samples < 1:
        raise ConfigError(f"--num-samples: must be >= 1 (got {num_samples})")
    if storage is not None:
        sqlite_path(check_rdb_url(storage, "--storage"))  # refuses an in-memory SQLite URL
    if resume and spec.scheduler == "pbt":
        raise ConfigError("--resume: a scheduler pbt sweep cannot be resumed (its population lives in Ray's "
                          "scheduler); start a new sweep without --resume")
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
            saved["storage"] == results_dir_storage(saved["results_dir"]):
        storage, moved_from = results_dir_storage(results_dir), saved["storage"]  # moves with the dir
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


def write_metadata(spec: SweepSpec, plan: SweepPlan, storage_url: str, spec_path: str) -> None:
    """Write the results dir's sweep.json (module docstring) for a new sweep."""
    (plan.results_dir / METADATA_FILE).write_text(json.dumps({
        "spec": spec_path, "name": spec.name, "storage": redact(storage_url), "study_name": plan.study_name,
        "num_samples": plan.num_samples, "created": datetime.now().isoformat(timespec="seconds"),
        "sweep_id": plan.sweep_id, "results_dir": str(plan.results_dir), "sweep": spec_record(spec),
    }, indent=2) + "\n")


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
