"""Class-imbalanced training splits (``imbalance``), the text corpus, and balanced accuracy."""
import numpy as np
import pytest
import torch

from hybrid_hpo import text
from hybrid_hpo.data import load_dataset
from hybrid_hpo.errors import ConfigError


def test_train_split_follows_the_exponential_profile_val_and_test_stay_balanced():
    balanced = load_dataset("digits", val_fraction=0.2, seed=3)
    skewed = load_dataset("digits", val_fraction=0.2, seed=3, imbalance=50)
    n_max = int(torch.bincount(balanced.train.y).min())
    expected = [round(n_max * 50 ** (-c / 9)) for c in range(10)]
    assert torch.bincount(skewed.train.y, minlength=10).tolist() == expected
    assert expected[0] / expected[-1] == pytest.approx(n_max / 2) and expected[-1] == 2
    assert torch.equal(skewed.val.y, balanced.val.y) and torch.equal(skewed.val.x, balanced.val.x)
    assert torch.equal(skewed.test.x, balanced.test.x) and torch.equal(skewed.test.y, balanced.test.y)
    # the kept examples are a subset of the balanced train split
    rows = {r.numpy().tobytes() for r in balanced.train.x}
    assert all(r.numpy().tobytes() in rows for r in skewed.train.x)


def test_imbalance_is_seeded_and_one_keeps_everything():
    a = load_dataset("digits", val_fraction=0.2, seed=1, imbalance=20)
    b = load_dataset("digits", val_fraction=0.2, seed=1, imbalance=20)
    c = load_dataset("digits", val_fraction=0.2, seed=2, imbalance=20)
    assert torch.equal(a.train.x, b.train.x) and not torch.equal(a.train.x, c.train.x)
    plain = load_dataset("digits", val_fraction=0.2, seed=1)
    ones = load_dataset("digits", val_fraction=0.2, seed=1, imbalance=1)
    counts = torch.bincount(plain.train.y)
    assert torch.bincount(ones.train.y).tolist() == [int(counts.min())] * 10


@pytest.mark.parametrize("ratio, match", [(0.5, "imbalance"), (float("inf"), "imbalance"), (True, "imbalance"),
                                          (500, "smallest class")])
def test_bad_ratios(ratio, match):
    with pytest.raises(ConfigError, match=match):
        load_dataset("digits", val_fraction=0.2, imbalance=ratio)


def test_text_windows_are_next_characters_and_test_is_fixed():
    data = load_dataset("text", val_fraction=0.1, seed=0, train_size=300, val_size=50)
    assert data.input_shape == (text.WINDOW,) and data.num_classes == len(text.vocabulary())
    assert data.train.x.dtype == torch.int64 and data.train.x.shape == (300, text.WINDOW)
    assert torch.equal(data.train.x[:, 1:], data.train.y[:, :-1])  # y is x shifted by one character
    sample = text.decode(data.test.x[0].tolist() + [data.test.y[0, -1].item()])
    assert sample in text.corpus()
    other = load_dataset("text", val_fraction=0.3, seed=5)
    assert torch.equal(other.test.x, data.test.x)
    assert len(other.train) + len(other.val) + len(other.test) == len(text.corpus()) // text.WINDOW
    assert np.array_equal(text.encode(text.decode([3, 1, 4])), [3, 1, 4])
    with pytest.raises(ConfigError, match="imbalance"):
        load_dataset("text", val_fraction=0.1, imbalance=10)


def test_balanced_accuracy_is_the_mean_per_class_recall():
    from hybrid_hpo.bilevel import per_class_counts

    y = torch.tensor([0, 0, 0, 0, 1, 2, 2])
    predicted = torch.tensor([0, 0, 0, 1, 1, 0, 2])
    # recalls: 3/4, 1/1, 1/2; absent class 3 is ignored
    correct, seen = per_class_counts(predicted, y, num_classes=4)
    assert torch.equal(seen, torch.tensor([4.0, 1.0, 2.0, 0.0], dtype=torch.float64))
    recall = correct[seen > 0] / seen[seen > 0]
    assert recall.mean().item() == pytest.approx((0.75 + 1.0 + 0.5) / 3)
