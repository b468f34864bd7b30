"""Preflight: everything a sweep (or a comparison, which runs sweeps) can check before Ray starts,
so bad input gives one line and exit code 2 with nothing written.

:func:`check_before_ray` is shared by ``hybrid-hpo sweep`` and ``hybrid-hpo compare``: the Ray
address answers, the results dir can be written, every corner of the search space loads its data
(or builds its task), and one trial fits this machine. :func:`preflight` adds the sweep's Optuna
storage and, when the study exists already, that it was made by a sweep with the same search
space, fixed settings and objective (several drivers may share one study, never by accident).
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from hybrid_hpo.checks import check_sqlite_file, check_writable, sqlite_path
from hybrid_hpo.config import RunConfig, field_names
from hybrid_hpo.errors import ConfigError
from hybrid_hpo.tune.plan import SweepPlan, trial_resources
from hybrid_hpo.tune.ray_start import probe_address
from hybrid_hpo.tune.spec import FIXED_SECTIONS, SweepSpec
from hybrid_hpo.tune.urls import redact

OFFLINE_DATASETS: tuple[str, ...] = ("digits", "mnist1d")  # generated or shipped, never missing


def preflight(spec: SweepSpec, plan: SweepPlan, *, address: str | None = None):
    """Everything checkable before Ray starts; returns the opened Optuna storage (RDBStorage), or
    None when the storage is a new SQLite file in the (not yet created) results dir.

    ConfigError (one line, nothing written) for what :func:`check_before_ray` checks, and for a
    storage that is in memory, whose folder cannot be written or whose file is not SQLite, or that
    does not open, and a study of that name with a different search space / objective / fixed
    settings.
    """
    from hybrid_hpo.tune.search import make_storage

    check_before_ray(spec, plan.results_dir, address=address, new_results_dir=not plan.resume)
    if plan.storage is None:
        return None
    database = sqlite_path(plan.storage)
    if database is not None:
        check_sqlite_file(database, "--storage")
    storage = make_storage(plan.storage)
    if not plan.resume:
        _check_study(spec, storage, plan.study_name, redact(plan.storage))
    return storage


def check_before_ray(spec: SweepSpec, results_dir: Path, *, address: str | None = None,
                     new_results_dir: bool = True) -> None:
    """ConfigError (one line, nothing written) for: no Ray GCS answering at ``address`` (checked
    first, with a timeout), a new results dir that cannot be created or written, and — for a local
    Ray (no ``address``), where the trials run on this machine — data that does not load or split at
    some corner of the search space (a dataset missing offline, a download that fails, an empty
    split), a missing GPU for ``device: cuda`` and resources this machine does not have. On a
    cluster only the built-in datasets are checked: the others live on the workers."""
    if address:
        probe_address(address)
    if new_results_dir:
        check_writable(results_dir, "--results-dir")
    check_trials_can_run(spec, local=not address)
    if not address:
        check_resources(spec, local_resources())


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
                config.imbalance, config.selection_fraction, config.data_root, config.download)
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

