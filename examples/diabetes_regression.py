"""A regression task of your own for ``hybrid-hpo compare``: an MLP on scikit-learn's diabetes data.

Nothing here is built into hybrid-hpo; it enters through the Task API (``docs/own_task.md``). The
442 patients of ``sklearn.datasets.load_diabetes`` (ships with scikit-learn, no download): 10
features, the target is disease progression one year after baseline (25..346). A fixed 20 % of the
patients (88, the same for every seed) is the test split; the other 354 are the pool that the run
splits into selection, validation and training examples by ``selection_fraction`` and
``val_fraction`` (seeded by the replicate's ``seed``). Features and target are standardised with
the pool's mean and standard deviation (σ_y ≈ 77).

Model: 10 features -> [Linear -> tanh -> HyperDropout] per width of ``hidden`` -> Linear(., 1),
output (B,). Loss: the squared error of the standardised target, per example,

    ℓ(f(x), y) = (f(x) − y)²                                  (B,), L_T and L_V are its means,

so ``*_loss`` is the mean squared error in standardised units. Metric ``mse``: the same error in the
target's own units, σ_y² · (f(x) − y)², reported as ``train_mse``, ``val_mse``, ``sel_mse`` and
``test_mse`` (lower is better; its square root is the RMSE in disease-progression units).

    hybrid-hpo compare searches/compare_diabetes_regression.yaml
    hybrid-hpo run --task examples/diabetes_regression.py:make_task --hidden 64 64 --epochs 50
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import TensorDataset

from hybrid_hpo import Task
from hybrid_hpo.nn import HyperDropout

TEST_SHARE = 0.2
TEST_SEED = 0  # the test split never depends on the replicate's seed


class RegressionMLP(nn.Module):
    """(B, features) -> [Linear -> tanh -> HyperDropout(width)] per width -> Linear(., 1) -> (B,)."""

    def __init__(self, features: int, widths: Sequence[int]) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for d_in, d_out in zip((features, *widths[:-1]), widths):
            layers += [nn.Linear(d_in, d_out), nn.Tanh(), HyperDropout((d_out,))]
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(widths[-1] if widths else features, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.body(x)).squeeze(1)


def squared_error(output: Tensor, target: Tensor) -> Tensor:
    """The per-example loss (f(x) − y)² of standardised targets, (B,) -> (B,)."""
    return (output - target).square()


def diabetes_splits() -> tuple[TensorDataset, TensorDataset, float]:
    """(pool, test, σ_y): float32 tensors standardised with the pool's statistics (module docstring)."""
    from sklearn.datasets import load_diabetes

    features, target = load_diabetes(return_X_y=True)
    shuffled = np.random.RandomState(TEST_SEED).permutation(len(target))
    held_out = int(round(TEST_SHARE * len(target)))
    pool_rows, test_rows = shuffled[held_out:], shuffled[:held_out]
    x_mean, x_std = features[pool_rows].mean(axis=0), features[pool_rows].std(axis=0)
    y_mean, y_std = float(target[pool_rows].mean()), float(target[pool_rows].std())

    def standardised(rows: np.ndarray) -> TensorDataset:
        x = torch.from_numpy((features[rows] - x_mean) / x_std).to(torch.float32)
        y = torch.from_numpy((target[rows] - y_mean) / y_std).to(torch.float32)
        return TensorDataset(x, y)

    return standardised(pool_rows), standardised(test_rows), y_std


def make_task(config: dict[str, Any]) -> Task:
    """The task factory (a RunConfig as a plain dict): the network has the widths of ``config["hidden"]``."""
    pool, test, y_std = diabetes_splits()
    scale = y_std ** 2

    def mse(output: Tensor, target: Tensor) -> Tensor:
        """Per-example squared error in the target's units, σ_y² (f(x) − y)², (B,)."""
        return scale * squared_error(output, target)

    model = RegressionMLP(pool.tensors[0].shape[1], tuple(config["hidden"]))
    return Task(model=model, data=pool, test=test, loss=squared_error, metrics={"mse": mse}, name="diabetes")
