"""The built-in datasets as in-memory tensors, split into train / val / test.

Every loader returns a :class:`DataSplits` whose ``x`` tensors are float32 shaped ``(N, *input_shape)``
and whose ``y`` tensors are int64 class indices shaped ``(N,)``:

============== ============= ======= =====================================================
name           input_shape   classes test split
============== ============= ======= =====================================================
digits         (1, 8, 8)     10      fixed stratified 20% of sklearn's 1,797 (same every seed)
mnist1d        (1, 40)       10      mnist1d's own test split (1,000), generated offline
mnist          (1, 28, 28)   10      official test set (torchvision)
fashion_mnist  (1, 28, 28)   10      official test set (torchvision)
cifar10        (3, 32, 32)   10      official test set (torchvision)
cifar100       (3, 32, 32)   100     official test set (torchvision)
text           (32,)         ~100    last 10% of the character windows (see hybrid_hpo.text)
============== ============= ======= =====================================================

``text`` is a character-level language-modelling set from Python's own documentation
(:mod:`hybrid_hpo.text`, no download): x and y are int64 (N, 32) token windows, y the next
characters; num_classes is the vocabulary size. Its validation split is a seeded random (not
stratified) fraction of the non-test windows.

Class imbalance (``imbalance=r``, classification only): after the split, the TRAIN split keeps
n_c = round(n_max · r^(-c/(C-1))) examples of class c = 0..C-1 (a seeded random subset), with n_max
the smallest class count of the balanced train split, so class 0 keeps n_max and class C-1 about
n_max/r (the long-tailed profile of Cui et al. 2019). Validation and test stay balanced.

Selection (``selection_fraction`` > 0): first, a stratified share ``selection_fraction`` of the
non-test pool is set aside as the *selection* split, drawn with its own ``seed``-dependent RNG, so
for a given seed it is the same examples whatever ``val_fraction``, the sizes or ``imbalance``. Only
the outer search and the pick read it (``sel_*`` metrics); weights and λ never see it.
Validation is then carved out of the rest: a stratified, ``seed``-dependent fraction
``val_fraction``; ``train_size`` / ``val_size`` then keep a (stratified where possible) subset.
With ``selection_fraction`` 0 there is no selection split and train / val are exactly those of
earlier versions.
Pixel values are in [0, 1] (mnist1d is standardised by its generator).
"""

from __future__ import annotations

import functools
import numbers
import os
import random

import numpy as np
import torch
from sklearn.model_selection import train_test_split

from hybrid_hpo.errors import ConfigError, first_line
from hybrid_hpo.splits import DataSplits, Split

DATASETS: tuple[str, ...] = ("digits", "mnist1d", "mnist", "fashion_mnist", "cifar10", "cifar100", "text")

DEFAULT_ROOT = os.path.join(os.path.expanduser("~"), ".cache", "hybrid_hpo", "data")
"""Where torchvision datasets live when ``root`` is None."""

_DIGITS_TEST_FRACTION = 0.2
_DIGITS_TEST_SEED = 0  # fixed: the digits test split never depends on the run's seed
_TEXT_TEST_FRACTION = 0.1  # the last windows of the corpus
_SELECTION_STREAM = 1  # the selection split's RNG is seeded with (seed, this): independent of the train/val RNG

# name -> (torchvision class name, folder torchvision expects under root, input_shape, num_classes)
_TORCHVISION = {
    "mnist": ("MNIST", "MNIST/raw", (1, 28, 28), 10),
    "fashion_mnist": ("FashionMNIST", "FashionMNIST/raw", (1, 28, 28), 10),
    "cifar10": ("CIFAR10", "cifar-10-batches-py", (3, 32, 32), 10),
    "cifar100": ("CIFAR100", "cifar-100-python", (3, 32, 32), 100),
}


def load_dataset(name: str, *, val_fraction: float, seed: int = 0, root: str | None = None,
                 download: bool = False, train_size: int | None = None,
                 val_size: int | None = None, imbalance: float | None = None,
                 selection_fraction: float = 0.0) -> DataSplits:
    """Load ``name`` (one of :data:`DATASETS`) and split it.

    The pool (all non-test examples) first loses the selection split (``selection_fraction`` of it,
    stratified, seeded by ``seed`` through an RNG of its own; none for 0); the rest is split into val (``val_fraction`` of it, stratified,
    seeded by ``seed``) and train (the rest); ``train_size`` / ``val_size`` optionally keep only that
    many of each; ``imbalance`` (a ratio r >= 1, None for none) then thins the train split's classes
    exponentially down to 1/r (module docstring). The test split never depends on ``seed``,
    ``val_fraction``, the sizes or ``imbalance``.
    ``root`` / ``download`` only matter for the torchvision datasets (``root`` None -> DEFAULT_ROOT).
    """
    if name not in DATASETS:
        raise ConfigError(f"dataset: unknown name {name!r}; choose one of {', '.join(DATASETS)}")
    if isinstance(val_fraction, bool) or not isinstance(val_fraction, numbers.Real) \
            or not 0.0 < float(val_fraction) < 1.0:
        raise ConfigError(f"val_fraction: got {val_fraction!r}; use a number strictly between 0 and 1, e.g. 0.2")
    for arg, size in (("train_size", train_size), ("val_size", val_size)):
        if size is not None and (isinstance(size, bool) or not isinstance(size, numbers.Integral) or size < 1):
            raise ConfigError(f"{arg}: got {size!r}; use a positive integer or leave it unset (None) for all")
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or not 0 <= seed < 2**32:
        raise ConfigError(f"seed: got {seed!r}; use an integer in [0, 2**32)")
    if imbalance is not None and (isinstance(imbalance, bool) or not isinstance(imbalance, numbers.Real)
                                  or not 1.0 <= float(imbalance) < float("inf")):
        raise ConfigError(f"imbalance: got {imbalance!r}; use a ratio >= 1 (largest / smallest train class), "
                          "e.g. 50, or leave it unset (None) for balanced classes")
    if imbalance is not None and name == "text":
        raise ConfigError("imbalance: the text dataset has no classes to thin; leave imbalance unset")
    if isinstance(selection_fraction, bool) or not isinstance(selection_fraction, numbers.Real) \
            or not 0.0 <= float(selection_fraction) < 1.0:
        raise ConfigError(f"selection_fraction: got {selection_fraction!r}; use a number in [0, 1), e.g. 0.2 "
                          "(0: no selection split)")

    if name == "digits":
        x, y, test_x, test_y, input_shape, num_classes = _digits()
    elif name == "mnist1d":
        x, y, test_x, test_y, input_shape, num_classes = _mnist1d()
    elif name == "text":
        x, y, test_x, test_y, input_shape, num_classes = _text()
    else:
        x, y, test_x, test_y, input_shape, num_classes = _torchvision(name, root, download)

    pool, selection_idx = np.arange(len(y)), None
    n_selection = int(np.ceil(float(selection_fraction) * len(y)))
    if n_selection >= len(y):
        raise ConfigError(f"selection_fraction: {selection_fraction} leaves no examples to train on out of "
                          f"{len(y)}; use a smaller value, e.g. 0.2")
    if n_selection:
        pool, selection_idx = _stratified_split(pool, y, n_selection, np.random.RandomState([seed, _SELECTION_STREAM]))
    n_val = int(np.ceil(float(val_fraction) * len(pool)))
    if n_val >= len(pool):
        raise ConfigError(f"val_fraction: {val_fraction} leaves no training examples out of {len(pool)}; "
                          "use a smaller value, e.g. 0.2")
    rng = np.random.RandomState(seed)
    train_idx, val_idx = _stratified_split(pool, y, n_val, rng)
    train_idx = _subset(train_idx, y, train_size, "train_size", rng)
    val_idx = _subset(val_idx, y, val_size, "val_size", rng)
    if imbalance is not None:
        train_idx = _imbalance(train_idx, y, float(imbalance), num_classes, rng)
    return DataSplits(
        train=_take(x, y, train_idx), val=_take(x, y, val_idx),
        test=Split(_as_tensor(test_x), torch.tensor(test_y, dtype=torch.int64)),
        num_classes=num_classes, input_shape=input_shape, name=name,
        selection=None if selection_idx is None else _take(x, y, selection_idx),
    )


# ----------------------------------------------------------------------------------------- splits
def _stratified_split(idx: np.ndarray, y: np.ndarray, n_pick: int,
                      rng: np.random.RandomState) -> tuple[np.ndarray, np.ndarray]:
    """Split ``idx`` into sorted (rest, picked) with ``len(picked) == n_pick``, 0 < n_pick < len(idx).

    Stratified by ``y[idx]`` when every class can appear on both sides; otherwise a plain shuffle.
    """
    labels = y[idx]
    if labels.ndim > 1:  # sequences (text): no class to stratify by
        rest, picked = train_test_split(idx, test_size=n_pick, random_state=rng)
        return np.sort(rest), np.sort(picked)
    counts = np.bincount(labels)
    present = counts[counts > 0]
    can_stratify = min(n_pick, len(idx) - n_pick) >= len(present) and present.min() >= 2
    rest, picked = train_test_split(idx, test_size=n_pick, stratify=labels if can_stratify else None,
                                    random_state=rng)
    return np.sort(rest), np.sort(picked)


def _subset(idx: np.ndarray, y: np.ndarray, size: int | None, arg: str,
            rng: np.random.RandomState) -> np.ndarray:
    """Keep ``size`` of ``idx`` (stratified where possible); None or ``len(idx)`` keeps all."""
    if size is None or size == len(idx):
        return idx
    if size > len(idx):
        raise ConfigError(f"{arg}: {size} exceeds the {len(idx)} examples available with this "
                          f"val_fraction; use at most {len(idx)} or change val_fraction")
    return _stratified_split(idx, y, size, rng)[1]


def _imbalance(idx: np.ndarray, y: np.ndarray, ratio: float, num_classes: int,
               rng: np.random.RandomState) -> np.ndarray:
    """Keep round(n_max · ratio^(-c/(C-1))) of class c's examples in ``idx`` (seeded), n_max = the
    smallest class count in ``idx``; ConfigError when the smallest class would keep none."""
    counts = np.bincount(y[idx], minlength=num_classes)
    n_max = int(counts.min())
    keep = [int(round(n_max * ratio ** (-c / (num_classes - 1)))) for c in range(num_classes)]
    if keep[-1] < 1:
        raise ConfigError(f"imbalance: ratio {ratio:g} leaves class {num_classes - 1} no training example "
                          f"(the smallest class has {n_max} here); use at most {2 * n_max - 1} or a "
                          "smaller val_fraction")
    kept = [rng.permutation(idx[y[idx] == c])[:n] for c, n in enumerate(keep)]
    return np.sort(np.concatenate(kept))


def _take(x: np.ndarray, y: np.ndarray, idx: np.ndarray) -> Split:
    return Split(_as_tensor(x[idx]), torch.as_tensor(y[idx], dtype=torch.int64))


def _as_tensor(x: np.ndarray) -> torch.Tensor:
    """A copy: integer tokens (int64) stay int64; otherwise float32 (uint8 pixels scaled to [0, 1])."""
    t = torch.as_tensor(x)
    if t.dtype == torch.int64:
        return t.clone()
    out = t.to(torch.float32, copy=True)
    return out.div_(255.0) if t.dtype == torch.uint8 else out


# ---------------------------------------------------------------------------------------- sources
@functools.lru_cache(maxsize=1)
def _digits():
    """sklearn digits: pool x (1437, 1, 8, 8) in [0, 1], test x (360, 1, 8, 8); fixed test split."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = (bunch.data / 16.0).astype(np.float32).reshape(-1, 1, 8, 8)
    y = bunch.target.astype(np.int64)
    pool, test = train_test_split(np.arange(len(y)), test_size=_DIGITS_TEST_FRACTION, stratify=y,
                                  random_state=_DIGITS_TEST_SEED)
    pool, test = np.sort(pool), np.sort(test)
    return x[pool], y[pool], x[test], y[test], (1, 8, 8), 10


@functools.lru_cache(maxsize=1)
def _mnist1d():
    """MNIST-1D generated offline with the package defaults (seed 42): pool (4000, 1, 40), test (1000, 1, 40).

    The generator reseeds Python's and NumPy's global RNGs; their states are restored afterwards.
    """
    from mnist1d.data import get_dataset_args, make_dataset

    np_state, py_state = np.random.get_state(), random.getstate()
    try:
        data = make_dataset(get_dataset_args())
    finally:
        np.random.set_state(np_state)
        random.setstate(py_state)
    x = data["x"].astype(np.float32)[:, None, :]
    test_x = data["x_test"].astype(np.float32)[:, None, :]
    return x, data["y"].astype(np.int64), test_x, data["y_test"].astype(np.int64), (1, 40), 10


@functools.lru_cache(maxsize=1)
def _text():
    """Character windows of :mod:`hybrid_hpo.text`: pool = the first 90%, test = the last 10%."""
    from hybrid_hpo import text

    x, y = text.windows()
    n_test = int(np.ceil(_TEXT_TEST_FRACTION * len(y)))
    return x[:-n_test], y[:-n_test], x[-n_test:], y[-n_test:], (text.WINDOW,), len(text.vocabulary())


def _torchvision(name: str, root: str | None, download: bool):
    """Official train pool and test split of a torchvision dataset, uint8 (N, C, H, W)."""
    root = os.path.abspath(os.path.expanduser(root if root is not None else DEFAULT_ROOT))
    x, y, test_x, test_y = _torchvision_arrays(name, root, bool(download))
    _, _, input_shape, num_classes = _TORCHVISION[name]
    return x, y, test_x, test_y, input_shape, num_classes


@functools.lru_cache(maxsize=2)
def _torchvision_arrays(name: str, root: str, download: bool):
    import torchvision

    cls_name, folder, _, _ = _TORCHVISION[name]
    cls = getattr(torchvision.datasets, cls_name)
    try:
        train = cls(root, train=True, download=download)
        test = cls(root, train=False, download=download)
    except (RuntimeError, OSError) as exc:  # missing files, or a download that failed (no internet)
        detail = f" ({first_line(exc)})" if download else ""
        raise ConfigError(
            f"dataset {name!r} {'download failed' if download else 'not found'} under {root}{detail}: run once "
            f"with download=True (config/CLI option download) on a machine with internet, or place the "
            f"torchvision '{folder}' folder there (option data_root chooses the directory)"
        ) from exc
    return (*_to_nchw(train.data, train.targets), *_to_nchw(test.data, test.targets))


def _to_nchw(data, targets) -> tuple[np.ndarray, np.ndarray]:
    """torchvision storage -> uint8 (N, C, H, W) and int64 (N,): MNIST is (N, H, W), CIFAR (N, H, W, C)."""
    x = data.numpy() if isinstance(data, torch.Tensor) else np.asarray(data)
    x = x[:, None, :, :] if x.ndim == 3 else x.transpose(0, 3, 1, 2)
    y = targets.numpy() if isinstance(targets, torch.Tensor) else np.asarray(targets)
    return np.ascontiguousarray(x), y.astype(np.int64)
