"""A Task's data as the run's train / val / selection / test splits, checked on one small batch.

Selection split: ``task.selection`` as given; else, with ``selection_fraction`` s > 0, the first
ceil(s · N) positions of a permutation of its own (``torch.Generator`` seeded from ``config.seed``
by a stream other than the train/val one) of the pool it comes from — ``task.data`` without an
explicit ``task.val``, else ``task.val`` — so for one seed it is the same examples whatever
``val_fraction``.

Without an explicit ``task.val``, the rest of the pool (N' positions, in their original order) is
split by a seeded permutation (``torch.Generator`` seeded with ``config.seed``): the first
ceil(val_fraction · N') positions are validation, the rest training; ``train_size`` / ``val_size``
then keep the first that many of each (so a given seed gives nested subsets). With ``task.val`` the
task's own splits are used as given (less the selection examples when they come from ``val``).
With s = 0 and no ``task.selection`` there is no selection split and train / val are those of
earlier versions.

A ``TensorDataset`` of two tensors becomes an in-memory :class:`~hybrid_hpo.splits.Split` on the
device (the fast path); any other dataset a :class:`~hybrid_hpo.splits.DatasetSplit` read through
a DataLoader with ``config.num_workers`` workers.

Before training, the model, the loss and the metrics run once on two training examples
(:func:`probe`): a loss that does not return one value per example, a model that fails on the
data, or a classification task whose outputs have no class axis is one ConfigError line.
"""
from __future__ import annotations

import math
from collections.abc import Iterable
from typing import TYPE_CHECKING

import torch
from torch import Tensor
from torch.utils.data import Dataset, TensorDataset

from hybrid_hpo.errors import ConfigError, first_line
from hybrid_hpo.splits import DatasetSplit, DataSplits, Split
from hybrid_hpo.task.task import Task

if TYPE_CHECKING:
    from hybrid_hpo.config import RunConfig

_PROBE_SIZE = 2


def make_splits(task: Task, config: RunConfig, device: torch.device) -> DataSplits:
    """train / val / selection / test of ``task`` on ``device`` (module docstring); ``task.model`` must
    already be on ``device`` (it runs once on a probe batch)."""
    carved = task.val if task.val is not None else task.data  # where a selection split comes from
    rest, selection = _selection_positions(len(carved), config) if task.selection is None else (None, None)
    if task.val is None:
        train_at, val_at = _pool_positions(len(task.data) if rest is None else len(rest), config)
        if rest is not None:
            train_at, val_at = rest[train_at], rest[val_at]
        train, val = _split(task.data, train_at, device, config), _split(task.data, val_at, device, config)
    else:
        train, val = _split(task.data, None, device, config), _split(task.val, rest, device, config)
    if task.selection is not None:
        chosen = _split(task.selection, None, device, config)
    else:
        chosen = None if selection is None else _split(carved, selection, device, config)
    test = None if task.test is None else _split(task.test, None, device, config)
    input_shape, num_classes = probe(task, train)
    return DataSplits(train=train, val=val, test=test, num_classes=num_classes, input_shape=input_shape,
                      name=task.name, selection=chosen)


def metric_names(data: DataSplits, metrics: Iterable[str]) -> tuple[str, ...]:
    """The split metrics a run on ``data`` reports, in order: ``<split>_loss``, ``<split>_<name>``
    for each task metric and, for classification, ``<split>_balanced_acc``; split in train, val,
    sel and test (the last two when present)."""
    suffixes = ["loss", *metrics] + (["balanced_acc"] if data.num_classes else [])
    return tuple(f"{prefix}_{suffix}" for prefix, _ in data.evaluated() for suffix in suffixes)


def _selection_positions(size: int, config: RunConfig) -> tuple[Tensor | None, Tensor | None]:
    """(rest, selection): sorted positions of a pool of ``size`` examples; (None, None) without a
    selection split (``selection_fraction`` 0)."""
    n_selection = math.ceil(config.selection_fraction * size)
    if n_selection == 0:
        return None, None
    if n_selection >= size:
        raise ConfigError(f"selection_fraction: {config.selection_fraction} leaves nothing else of the task's {size} "
                          "examples; use a smaller value, e.g. 0.2")
    order = torch.randperm(size, generator=torch.Generator().manual_seed(_selection_seed(config.seed)))
    return order[n_selection:].sort().values, order[:n_selection].sort().values


def _selection_seed(seed: int) -> int:
    """The selection permutation's seed: a stream of its own for ``seed`` (not the train/val one)."""
    return (seed * 2654435761 + 1) % 2**63


def _pool_positions(size: int, config: RunConfig) -> tuple[Tensor, Tensor]:
    n_val = math.ceil(config.val_fraction * size)
    if n_val >= size:
        raise ConfigError(f"val_fraction: {config.val_fraction} leaves no training example of the task's {size}; "
                          "use a smaller value, e.g. 0.2")
    order = torch.randperm(size, generator=torch.Generator().manual_seed(config.seed))
    train_at = _first(order[n_val:], config.train_size, "train_size")
    val_at = _first(order[:n_val], config.val_size, "val_size")
    return train_at.sort().values, val_at.sort().values


def _first(positions: Tensor, size: int | None, name: str) -> Tensor:
    if size is None:
        return positions
    if size > len(positions):
        raise ConfigError(f"{name}: {size} exceeds the {len(positions)} examples this val_fraction leaves; "
                          f"use at most {len(positions)} or change val_fraction")
    return positions[:size]


def _split(dataset: Dataset, positions: Tensor | None, device: torch.device, config: RunConfig) -> Split | DatasetSplit:
    if isinstance(dataset, TensorDataset) and len(dataset.tensors) == 2:
        x, y = dataset.tensors
        if positions is not None:
            x, y = x[positions], y[positions]
        return Split(x.to(device), y.to(device))
    indices = torch.arange(len(dataset)) if positions is None else positions
    return DatasetSplit(dataset, indices, device, num_workers=config.num_workers)


def probe(task: Task, train: Split | DatasetSplit) -> tuple[tuple[int, ...], int | None]:
    """(input_shape, num_classes) of the task, after running model, loss and metrics on a batch
    of two training examples (eval mode, no gradients, nothing changes)."""
    size = min(_PROBE_SIZE, len(train))
    try:
        x, y = train.fetch(torch.arange(size))
    except Exception as error:
        raise ConfigError(f"task.data: reading training examples failed ({first_line(error)}); each item must "
                          "be an (x, y) pair of tensors or numbers") from None
    model, was_training = task.model, task.model.training
    model.eval()
    try:
        with torch.no_grad():
            output = _run("task.model", "the model failed on a batch of training inputs", model, x)
            checks = {"task.loss": task.example_loss, **{f"task.metrics.{k}": f for k, f in task.metric_functions().items()}}
            for name, function in checks.items():
                value = _run(name, "raised", function, output, y)
                if not isinstance(value, Tensor) or tuple(value.shape) != (size,):
                    shown = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
                    raise ConfigError(f"{name}: returned {shown} for a batch of {size}; return one value per "
                                      f"example, shape ({size},) — e.g. reduction='none' and a mean over the other axes")
    finally:
        model.train(was_training)
    num_classes = task.num_classes
    if num_classes is None and task.loss is None:
        if output.ndim < 2 or output.shape[1] < 2:
            raise ConfigError(f"task.model: outputs of shape {tuple(output.shape)} have no class axis for the default "
                              "cross-entropy; return logits (B, C), or give task.loss for a non-classification task")
        num_classes = int(output.shape[1])
    return tuple(x.shape[1:]), num_classes


def _run(name: str, what: str, function, *args):
    try:
        return function(*args)
    except ConfigError:
        raise
    except Exception as error:
        raise ConfigError(f"{name}: {what} ({first_line(error)})") from None
