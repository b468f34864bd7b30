"""Tests for hybrid_hpo.data: split sizes, disjointness, stratification, seeding, offline errors."""

from __future__ import annotations

import random
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

from hybrid_hpo import data
from hybrid_hpo.data import DATASETS, DataSplits, Split, load_dataset
from hybrid_hpo.errors import ConfigError


def _rows(x: torch.Tensor) -> set[bytes]:
    """Content hash of each example (digits and mnist1d have no duplicate examples)."""
    flat = x.reshape(len(x), -1).numpy()
    return {row.tobytes() for row in flat}


# ------------------------------------------------------------------------------------------ digits
def test_digits_sizes_shapes_dtypes_and_range():
    d = load_dataset("digits", val_fraction=0.2, seed=0)
    assert isinstance(d, DataSplits) and d.name == "digits"
    assert d.input_shape == (1, 8, 8) and d.num_classes == 10
    # 1797 examples: a fixed 20% test split (ceil(359.4) = 360), val = ceil(0.2 * 1437) = 288.
    assert (len(d.train), len(d.val), len(d.test)) == (1149, 288, 360)
    for s in (d.train, d.val, d.test):
        assert s.x.dtype == torch.float32 and s.y.dtype == torch.int64
        assert s.x.shape[1:] == (1, 8, 8) and s.y.shape == (len(s),)
        assert float(s.x.min()) == 0.0 and float(s.x.max()) == 1.0
        assert set(s.y.tolist()) == set(range(10))


def test_digits_splits_are_disjoint_and_cover_the_dataset():
    d = load_dataset("digits", val_fraction=0.3, seed=5)
    train, val, test = _rows(d.train.x), _rows(d.val.x), _rows(d.test.x)
    assert len(train) == len(d.train) and len(val) == len(d.val) and len(test) == len(d.test)
    assert not train & val and not train & test and not val & test
    everything = load_digits().data / 16.0
    assert train | val | test == _rows(torch.tensor(everything, dtype=torch.float32).reshape(-1, 1, 8, 8))


def test_digits_labels_match_pixels():
    bunch = load_digits()
    by_content = {row.astype(np.float32).tobytes(): int(t) for row, t in zip(bunch.data / 16.0, bunch.target)}
    d = load_dataset("digits", val_fraction=0.2, seed=1)
    for s in (d.train, d.val, d.test):
        got = [by_content[row.tobytes()] for row in s.x.reshape(len(s), -1).numpy()]
        assert got == s.y.tolist()


def test_digits_stratification_preserved():
    d = load_dataset("digits", val_fraction=0.25, seed=3)
    full = np.bincount(load_digits().target, minlength=10) / 1797
    for s in (d.train, d.val, d.test):
        share = np.bincount(s.y.numpy(), minlength=10) / len(s)
        assert np.abs(share - full).max() < 0.01


def test_digits_test_split_fixed_across_seeds_and_fractions():
    a = load_dataset("digits", val_fraction=0.2, seed=0)
    b = load_dataset("digits", val_fraction=0.5, seed=7)
    c = load_dataset("digits", val_fraction=0.1, seed=1, train_size=50, val_size=50)
    for other in (b, c):
        assert torch.equal(a.test.x, other.test.x) and torch.equal(a.test.y, other.test.y)


def test_digits_seed_changes_train_val_and_is_reproducible():
    a = load_dataset("digits", val_fraction=0.2, seed=0)
    again = load_dataset("digits", val_fraction=0.2, seed=0)
    other = load_dataset("digits", val_fraction=0.2, seed=1)
    assert torch.equal(a.train.x, again.train.x) and torch.equal(a.val.y, again.val.y)
    assert _rows(a.val.x) != _rows(other.val.x)
    # same pool either way: train + val of one seed equals train + val of another
    assert _rows(a.train.x) | _rows(a.val.x) == _rows(other.train.x) | _rows(other.val.x)


def test_digits_train_and_val_size_keep_stratified_subsets():
    full = load_dataset("digits", val_fraction=0.5, seed=2)
    small = load_dataset("digits", val_fraction=0.5, seed=2, train_size=50, val_size=50)
    assert (len(small.train), len(small.val)) == (50, 50)
    assert np.bincount(small.train.y.numpy(), minlength=10).tolist() == [5] * 10
    assert np.bincount(small.val.y.numpy(), minlength=10).tolist() == [5] * 10
    assert _rows(small.train.x) <= _rows(full.train.x) and _rows(small.val.x) <= _rows(full.val.x)
    tiny = load_dataset("digits", val_fraction=0.2, seed=0, train_size=3)  # fewer than classes: plain shuffle
    assert len(tiny.train) == 3 and len(_rows(tiny.train.x)) == 3


def test_returned_tensors_do_not_alias_the_cache():
    a = load_dataset("digits", val_fraction=0.2, seed=0)
    expected = a.test.x.clone()
    a.test.x.add_(1.0)
    a.train.x.add_(1.0)
    b = load_dataset("digits", val_fraction=0.2, seed=0)
    assert torch.equal(b.test.x, expected) and float(b.train.x.max()) == 1.0


def test_a_split_serves_examples_by_position():
    d = load_dataset("digits", val_fraction=0.2, seed=0, train_size=20, val_size=20)
    assert (d.num_classes, d.input_shape, d.name) == (10, (1, 8, 8), "digits")
    split = Split(torch.arange(8.0).reshape(4, 2), torch.tensor([3, 1, 4, 1]))
    assert len(split) == 4
    x, y = split.fetch(torch.tensor([2, 0]))
    assert torch.equal(x, torch.tensor([[4.0, 5.0], [0.0, 1.0]])) and y.tolist() == [4, 3]
    assert [b[1].tolist() for b in split.batches(torch.arange(4).split(3))] == [[3, 1, 4], [1]]


# ----------------------------------------------------------------------------------------- mnist1d
def test_mnist1d_shapes_classes_and_splits():
    d = load_dataset("mnist1d", val_fraction=0.25, seed=0)
    assert d.input_shape == (1, 40) and d.num_classes == 10
    assert (len(d.train), len(d.val), len(d.test)) == (3000, 1000, 1000)
    for s in (d.train, d.val, d.test):
        assert s.x.dtype == torch.float32 and s.x.shape[1:] == (1, 40) and s.y.dtype == torch.int64
        assert set(s.y.tolist()) == set(range(10))
    train, val, test = _rows(d.train.x), _rows(d.val.x), _rows(d.test.x)
    assert len(train | val | test) == 5000
    share = np.bincount(d.val.y.numpy(), minlength=10) / len(d.val)
    pool = np.bincount(torch.cat([d.train.y, d.val.y]).numpy(), minlength=10) / 4000
    assert np.abs(share - pool).max() < 0.01


def test_mnist1d_deterministic_and_keeps_global_rng_state():
    a = load_dataset("mnist1d", val_fraction=0.2, seed=4)
    other = load_dataset("mnist1d", val_fraction=0.3, seed=9)
    data._mnist1d.cache_clear()  # force a fresh generation below
    random.seed(123)
    np.random.seed(123)
    expected_py, expected_np = random.random(), np.random.rand()
    random.seed(123)
    np.random.seed(123)
    b = load_dataset("mnist1d", val_fraction=0.2, seed=4)
    assert random.random() == expected_py and np.random.rand() == expected_np
    assert torch.equal(a.train.x, b.train.x) and torch.equal(a.val.y, b.val.y) and torch.equal(a.test.x, b.test.x)
    assert torch.equal(a.test.x, other.test.x) and not torch.equal(a.val.y[:800], other.val.y[:800])


# ------------------------------------------------------------------------------------- torchvision
@pytest.mark.parametrize("name, folder", [("mnist", "MNIST/raw"), ("fashion_mnist", "FashionMNIST/raw"),
                                          ("cifar10", "cifar-10-batches-py"), ("cifar100", "cifar-100-python")])
def test_torchvision_missing_offline_raises_one_line_config_error(tmp_path, name, folder):
    with pytest.raises(ConfigError) as err:
        load_dataset(name, val_fraction=0.1, root=str(tmp_path), download=False)
    msg = str(err.value)
    assert "\n" not in msg
    assert repr(name) in msg and str(tmp_path) in msg and "download=True" in msg and folder in msg
    assert list(tmp_path.iterdir()) == []  # nothing created, nothing fetched


def _write_idx(path: Path, array: np.ndarray) -> None:
    """Write uint8 ``array`` in the IDX format torchvision's MNIST reader expects."""
    header = struct.pack(">I", 0x0800 + array.ndim) + b"".join(struct.pack(">I", n) for n in array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


@pytest.mark.parametrize("name, folder", [("mnist", "MNIST"), ("fashion_mnist", "FashionMNIST")])
def test_torchvision_mnist_format_converted_and_split(tmp_path, name, folder):
    rng = np.random.default_rng(0)
    train_x = rng.integers(0, 256, size=(200, 28, 28), dtype=np.uint8)
    train_x[:, 0, 0] = np.arange(200)  # make every example distinct
    train_y = np.repeat(np.arange(10), 20).astype(np.uint8)
    test_x = rng.integers(0, 256, size=(30, 28, 28), dtype=np.uint8)
    test_y = np.tile(np.arange(10), 3).astype(np.uint8)
    raw = tmp_path / folder / "raw"
    raw.mkdir(parents=True)
    for stem, arr in (("train-images-idx3-ubyte", train_x), ("train-labels-idx1-ubyte", train_y),
                      ("t10k-images-idx3-ubyte", test_x), ("t10k-labels-idx1-ubyte", test_y)):
        _write_idx(raw / stem, arr)

    d = load_dataset(name, val_fraction=0.2, seed=0, root=str(tmp_path))
    assert d.input_shape == (1, 28, 28) and d.num_classes == 10
    assert (len(d.train), len(d.val), len(d.test)) == (160, 40, 30)
    assert d.train.x.dtype == torch.float32 and d.train.x.shape == (160, 1, 28, 28)
    assert torch.equal(d.test.x, torch.tensor(test_x, dtype=torch.float32)[:, None] / 255.0)
    assert d.test.y.tolist() == test_y.tolist()
    assert np.bincount(d.val.y.numpy(), minlength=10).tolist() == [4] * 10
    idx = torch.cat([d.train.x, d.val.x])[:, 0, 0, 0].mul(255).round().long()
    assert sorted(idx.tolist()) == list(range(200))  # train + val partition the official train set
    labels = torch.cat([d.train.y, d.val.y])
    assert torch.equal(labels, torch.tensor(train_y[idx.numpy()], dtype=torch.int64))


# ---------------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("kwargs, field", [
    ({"name": "imagenet", "val_fraction": 0.2}, "dataset"),
    ({"name": "digits", "val_fraction": 0.0}, "val_fraction"),
    ({"name": "digits", "val_fraction": 1.0}, "val_fraction"),
    ({"name": "digits", "val_fraction": -0.1}, "val_fraction"),
    ({"name": "digits", "val_fraction": "0.2"}, "val_fraction"),
    ({"name": "digits", "val_fraction": 0.9999}, "val_fraction"),
    ({"name": "digits", "val_fraction": 0.2, "train_size": 0}, "train_size"),
    ({"name": "digits", "val_fraction": 0.2, "train_size": 2.5}, "train_size"),
    ({"name": "digits", "val_fraction": 0.2, "train_size": 5000}, "train_size"),
    ({"name": "digits", "val_fraction": 0.2, "val_size": -3}, "val_size"),
    ({"name": "digits", "val_fraction": 0.2, "val_size": 289}, "val_size"),
    ({"name": "digits", "val_fraction": 0.2, "seed": -1}, "seed"),
])
def test_bad_arguments_raise_config_error_naming_the_field(kwargs, field):
    name = kwargs.pop("name")
    with pytest.raises(ConfigError) as err:
        load_dataset(name, **kwargs)
    assert str(err.value).startswith(f"{field}:") and "\n" not in str(err.value)


def test_dataset_names():
    assert DATASETS == ("digits", "mnist1d", "mnist", "fashion_mnist", "cifar10", "cifar100", "text")
