"""The splits the bilevel loop draws its batches from: in-memory tensors, or any map-style Dataset.

The loop never iterates a split on its own: it chooses *positions* (0 .. len(split)-1, e.g. a
seeded permutation cut into mini-batches) and asks the split for those examples. So both kinds
give the same batches, in the same order, for the same seed — and so identical metrics:

* :class:`Split` — ``x`` (N, *input_shape) and ``y`` (N, ...) tensors, already on the run's device
  (the fast path: a batch is one indexing operation, no copies between host and device).
* :class:`DatasetSplit` — the examples ``indices`` of a ``torch.utils.data.Dataset`` of (x, y)
  pairs (data that need not fit in memory). Mini-batches of a pass come through a
  ``torch.utils.data.DataLoader`` (``num_workers`` worker processes, pinned memory when the device
  is CUDA) whose batch sampler yields the loop's positions; single random batches (the hyper
  steps' draws) are read in the calling process.

Positions are what per-example hyperparameters are indexed by (``reweight``: λ_i of training
example i). :class:`DataSplits` bundles train / val / test (test may be None: no test metrics) and
the optional selection split (``sel``: read by the outer search and the pick only).
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, default_collate

Batch = tuple[Tensor, Tensor]


@dataclass(frozen=True)
class Split:
    """In-memory split: ``x`` float32 ``(N, *input_shape)`` (int64 tokens for text), ``y`` (N, ...)."""

    x: Tensor
    y: Tensor

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def fetch(self, positions: Tensor) -> Batch:
        """The examples at ``positions`` (int64 (B,), on the split's device)."""
        return self.x[positions], self.y[positions]

    def batches(self, positions: Iterable[Tensor]) -> Iterator[Batch]:
        """One (x, y) per tensor of positions, in order."""
        for index in positions:
            yield self.fetch(index)

    def targets(self) -> Tensor:
        """Every example's target, (N, ...)."""
        return self.y


class _Positions:
    """A batch sampler whose batches are set before each pass (so one DataLoader, with persistent
    workers, serves every pass over its split)."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


class DatasetSplit:
    """The examples ``indices`` (int64 (N,)) of ``dataset``, delivered on ``device``.

    ``dataset[i]`` must return an ``(x, y)`` pair that ``default_collate`` stacks (tensors, numbers
    or NumPy arrays). ``num_workers`` > 0 loads mini-batches of a pass in that many worker processes
    (kept alive between passes).
    """

    def __init__(self, dataset: Dataset, indices: Tensor, device: torch.device, num_workers: int = 0) -> None:
        self.dataset, self.indices, self.device = dataset, indices.cpu(), torch.device(device)
        self._sampler = _Positions()
        self._loader = DataLoader(
            dataset, batch_sampler=self._sampler, num_workers=num_workers,
            pin_memory=self.device.type == "cuda", persistent_workers=num_workers > 0,
            generator=torch.Generator(),  # DataLoader seeds its workers from this, never the global RNG
        )

    def __len__(self) -> int:
        return int(self.indices.shape[0])

    def _move(self, batch: Batch) -> Batch:
        x, y = batch
        return x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)

    def fetch(self, positions: Tensor) -> Batch:
        """The examples at ``positions`` (int64 (B,)), read in this process."""
        items = [self.dataset[int(i)] for i in self.indices[positions.cpu()]]
        return self._move(default_collate(items))

    def batches(self, positions: Iterable[Tensor]) -> Iterator[Batch]:
        """One (x, y) per tensor of positions, in order, through the DataLoader."""
        self._sampler.batches = [self.indices[index.cpu()].tolist() for index in positions]
        for batch in self._loader:
            yield self._move(batch)

    def targets(self) -> Tensor:
        """Every example's target, (N, ...) (reads the whole split once)."""
        ys = [y for _, y in self.batches(torch.arange(len(self)).split(1024))]
        return torch.cat(ys)


@dataclass(frozen=True)
class DataSplits:
    """train / val / test splits of one task plus what models and families need to know about it.

    num_classes: C for classification tasks, None otherwise (regression, ...).
    input_shape: the shape of one input x. test: None when the task has no test set.
    selection: held-out examples that neither the weights (train) nor λ (val) ever see; the outer
    search and the pick compare trials on them (metrics ``sel_*``). None: no selection split.
    """

    train: Split | DatasetSplit
    val: Split | DatasetSplit
    test: Split | DatasetSplit | None
    num_classes: int | None
    input_shape: tuple[int, ...]
    name: str
    selection: Split | DatasetSplit | None = None

    def evaluated(self) -> tuple[tuple[str, Split | DatasetSplit], ...]:
        """(prefix, split) for the splits that metrics are reported on: train, val, sel (the
        selection split) and test, each if present."""
        named = (("train", self.train), ("val", self.val), ("sel", self.selection), ("test", self.test))
        return tuple((name, split) for name, split in named if split is not None)
