"""Build a run's task once, before anything else runs (the sweep's and compare's preflight)."""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from hybrid_hpo.errors import ConfigError
from hybrid_hpo.task.factory import resolve_task
from hybrid_hpo.task.splits import make_splits, metric_names

if TYPE_CHECKING:
    from hybrid_hpo.config import RunConfig


def check_task(config: RunConfig, metric: str | None = None) -> tuple[str, ...]:
    """Import and call ``config``'s task factory on the CPU, split its data and run the probe batch
    (:func:`hybrid_hpo.task.splits.probe`); return the metric names a run reports. ConfigError (one
    line) for any problem, or when ``metric`` is not among them (``sel_<x>`` on a run without a
    selection split reads ``val_<x>``, see :mod:`hybrid_hpo.objective`)."""
    from hybrid_hpo.objective import reported_metric

    cpu = torch.device("cpu")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        task = resolve_task(None, config)
        task.model.to(cpu)
        names = metric_names(make_splits(task, config, cpu), task.metric_functions())
    if metric is not None and reported_metric(metric, names) is None:
        offered = ", ".join(name for name in names if name.startswith(("sel_", "val_", "train_")))
        raise ConfigError(f"metric: the task reports no {metric!r}; choose one of {offered}")
    return names
