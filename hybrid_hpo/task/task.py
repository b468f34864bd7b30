"""The public Task: a user's model, data, loss and metrics, as ordinary PyTorch objects.

    task = Task(model=MyNet(), data=my_dataset, test=my_test_set,
                loss=lambda out, y: (out.squeeze(1) - y).square(),      # per example: (B,)
                metrics={"mae": lambda out, y: (out.squeeze(1) - y).abs()})

Conventions (B = batch size):

* ``model(x)`` maps a batch x (B, *input_shape) to outputs (B, ...); the bilevel loop calls it
  through ``torch.func.functional_call`` with its own parameter tensors (buffers such as BatchNorm
  statistics keep working). Put :class:`hybrid_hpo.nn.HyperDropout` sites into it for the dropout
  families.
* ``data`` is a map-style ``torch.utils.data.Dataset`` of (x, y) pairs: the pool that the run
  splits into train and validation by ``val_fraction`` (seeded by ``seed``), unless ``val`` gives
  the validation set explicitly — then ``data`` is all training data and ``val_fraction``,
  ``train_size`` and ``val_size`` do not apply. A ``TensorDataset`` of two tensors is held on the
  run's device (the fast path); any other dataset is read through a ``DataLoader``.
* ``selection`` (optional): the held-out examples on which the outer search and the pick compare
  trials (``sel_*`` metrics); neither the weights nor λ ever see them. Without it the run sets
  aside ``selection_fraction`` (seeded by ``seed``, the same examples whatever ``val_fraction``):
  of ``data`` *before* the train / validation split, or — when ``val`` is given — of ``val``
  (your training data stay whole; the rest of ``val`` trains λ). ``selection_fraction: 0`` and no
  ``selection``: no selection split; searches and picks then read ``val_*``.
* ``loss(output, target)`` returns **per-example** losses, shape (B,) (``reduction="none"``, mean
  over any further axes of an example), so per-example loss weights work for any task. The
  training loss L_T and the validation loss L_V are their (weighted) means. Default: cross-entropy
  (:func:`cross_entropy`), which makes the task a classification task.
* ``metrics`` maps a name to ``(output, target) -> per-example values`` (B,); each is reported as
  ``train_<name>``, ``val_<name>``, ``sel_<name>`` and ``test_<name>`` (means over the split) next to ``*_loss``.
  Default: ``{"acc": accuracy}`` for classification tasks, none otherwise. Classification tasks
  also report ``*_balanced_acc`` (mean per-class recall).
* ``num_classes``: C for a classification task; None infers it from the model's output width when
  ``loss`` is the default cross-entropy, and otherwise means "not classification" (then families
  and options that need classes, such as ``distill`` and ``imbalance``, refuse the task).

A *task factory* is a function ``config -> Task`` that receives the run's settings as a plain dict
(what Ray Tune passes a trial), so a search can vary e.g. the model width; the run calls it with
the torch RNG seeded by ``seed``.
"""
from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import Dataset

from hybrid_hpo.errors import ConfigError

ExampleLoss = Callable[[Tensor, Tensor], Tensor]
"""(output (B, ...), target (B, ...)) -> per-example values (B,)."""
TaskFactory = Callable[[dict[str, Any]], "Task"]
"""config (a plain dict of RunConfig settings) -> Task."""

_METRIC_NAME = re.compile(r"[a-z][a-z0-9_]*")
_RESERVED_METRICS = ("loss", "balanced_acc")


def cross_entropy(output: Tensor, target: Tensor) -> Tensor:
    """Per-example cross-entropy: logits (B, C) and class indices (B,) -> (B,); for sequences,
    logits (B, C, T) and targets (B, T) -> the mean over T, (B,)."""
    losses = F.cross_entropy(output, target, reduction="none")
    return losses.flatten(1).mean(dim=1) if losses.ndim > 1 else losses


def accuracy(output: Tensor, target: Tensor) -> Tensor:
    """Per-example accuracy: 1.0 where argmax over dim 1 equals the target (for sequences, the
    fraction of correct tokens), (B,)."""
    correct = (output.argmax(dim=1) == target).to(torch.float32)
    return correct.flatten(1).mean(dim=1) if correct.ndim > 1 else correct


@dataclass
class Task:
    """A model, its data, a per-example loss and metrics (module docstring)."""

    model: nn.Module
    data: Dataset
    test: Dataset | None = None
    val: Dataset | None = None
    selection: Dataset | None = None
    loss: ExampleLoss | None = None
    metrics: Mapping[str, ExampleLoss] | None = None
    num_classes: int | None = None
    name: str = "task"

    def __post_init__(self) -> None:
        if not isinstance(self.model, nn.Module):
            raise ConfigError(f"task.model: expected a torch.nn.Module, got {type(self.model).__name__}")
        for key in ("data", "val", "selection", "test"):
            value = getattr(self, key)
            if value is None and key != "data":
                continue
            if not (hasattr(value, "__getitem__") and hasattr(value, "__len__")):
                raise ConfigError(f"task.{key}: expected a map-style torch.utils.data.Dataset of (x, y) pairs "
                                  f"(with __getitem__ and __len__), got {type(value).__name__}")
            if len(value) == 0:
                raise ConfigError(f"task.{key}: the dataset is empty; give at least one (x, y) example")
        if self.loss is not None and not callable(self.loss):
            raise ConfigError(f"task.loss: expected a function (output, target) -> per-example losses (B,), "
                              f"got {type(self.loss).__name__}")
        for name, metric in (self.metrics or {}).items():
            if not isinstance(name, str) or not _METRIC_NAME.fullmatch(name) or name in _RESERVED_METRICS:
                raise ConfigError(f"task.metrics: bad name {name!r}; use lower-case letters, digits and _ "
                                  f"(not {' or '.join(_RESERVED_METRICS)}), e.g. 'mae'")
            if not callable(metric):
                raise ConfigError(f"task.metrics.{name}: expected a function (output, target) -> (B,)")
        if self.num_classes is not None and (isinstance(self.num_classes, bool) or not isinstance(self.num_classes, int)
                                             or self.num_classes < 2):
            raise ConfigError(f"task.num_classes: got {self.num_classes!r}; use an integer >= 2, or None")

    @property
    def example_loss(self) -> ExampleLoss:
        """The per-example loss: ``loss``, or :func:`cross_entropy`."""
        return cross_entropy if self.loss is None else self.loss

    @property
    def classification(self) -> bool:
        """True with the default cross-entropy loss or a given ``num_classes``."""
        return self.loss is None or self.num_classes is not None

    def metric_functions(self) -> dict[str, ExampleLoss]:
        """``metrics``, or ``{"acc": accuracy}`` for classification and ``{}`` otherwise."""
        if self.metrics is not None:
            return dict(self.metrics)
        return {"acc": accuracy} if self.classification else {}
