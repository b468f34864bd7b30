"""The outer objective: the one number per trial that the outer search, the schedulers and the pick read.

Trials are compared on the *selection* split (``sel_*`` metrics, see ``selection_fraction``): held-out
examples that neither the weights (train split) nor λ (val split, the hypergradient's) ever see, and
the same examples for every trial of a seed whatever its ``val_fraction``. A run without a selection
split (``selection_fraction: 0`` and no ``Task.selection``) falls back: ``sel_<x>`` reads ``val_<x>``.

Each epoch a trial reports, next to ``metric`` itself, ``<metric>_best``: the best value of
``metric`` over its epochs so far (min or max per ``mode``; non-finite values never count, NaN
until a finite one came). That is the value TPE is told for the trial and the value the pick uses
(the best epoch of the best trial), so the search optimises exactly what is selected in the end.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

DEFAULT_METRIC = "sel_loss"
BEST_SUFFIX = "_best"


def best_key(metric: str) -> str:
    """The reported key of the best-so-far value of ``metric`` (``sel_loss`` -> ``sel_loss_best``)."""
    return metric + BEST_SUFFIX


def fallback_key(metric: str) -> str | None:
    """What ``metric`` reads when the run has no selection split: ``sel_<x>`` -> ``val_<x>``, else None."""
    return "val_" + metric.removeprefix("sel_") if metric.startswith("sel_") else None


def metric_value(metrics: Mapping[str, Any], metric: str) -> float:
    """``metrics[metric]``, else its fallback (:func:`fallback_key`), else NaN."""
    value = metrics.get(metric)
    if value is None and fallback_key(metric) is not None:
        value = metrics.get(fallback_key(metric))
    return math.nan if value is None else float(value)


def reported_metric(metric: str, names: Iterable[str]) -> str | None:
    """The key among a run's metric ``names`` that ``metric`` reads (itself or its fallback), or None."""
    names = tuple(names)
    if metric in names:
        return metric
    fallback = fallback_key(metric)
    return fallback if fallback in names else None


class BestSoFar:
    """The best finite value of ``metric`` (direction ``mode``) over the results given to :meth:`update`."""

    def __init__(self, metric: str = DEFAULT_METRIC, mode: str = "min") -> None:
        if mode not in ("min", "max"):
            raise ValueError(f"mode: {mode!r}; use 'min' or 'max'")
        self.metric, self.mode, self.best = metric, mode, math.nan

    def update(self, metrics: Mapping[str, Any]) -> float:
        """Take one epoch's ``metrics`` into account; return the best value so far."""
        value = metric_value(metrics, self.metric)
        if math.isfinite(value) and (math.isnan(self.best) or (value < self.best if self.mode == "min"
                                                               else value > self.best)):
            self.best = value
        return self.best
