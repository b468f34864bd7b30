"""Your own model, data, loss and metric through ``tune.run``: regression on scikit-learn's diabetes data.

Nothing here is built into hybrid-hpo: a small network of our own (with a learned-dropout site), the
442 patients of ``sklearn.datasets.load_diabetes`` (10 standardised features, disease progression
after one year as the target), a per-example squared-error loss and a mean-absolute-error metric.
Inside each trial hybrid-hpo tunes one weight decay per weight (~4.5k λ) by implicit
differentiation; outside, Optuna TPE searches the inner and hyper learning rates and the width of
the network (the factory receives each trial's config). Every trial reports ``val_mae`` and
``test_mae``; the Optuna study holds the test metrics as user attributes. About 1-2 minutes on 2
CPU cores:

    python examples/own_task.py

The same factory runs from the command line and from a sweep file:

    hybrid-hpo run --task examples/own_task.py:make_task --epochs 20
    hybrid-hpo sweep searches/own_task.yaml
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import TensorDataset

from hybrid_hpo import Task
from hybrid_hpo.nn import HyperDropout

RESULTS = Path("results/example-own_task").resolve()
TEST_FRACTION = 0.2


class DiabetesNet(nn.Module):
    """10 features -> Linear(10, width) -> tanh -> HyperDropout(width) -> Linear(width, 1) -> (B,)."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.hidden = nn.Linear(10, width)
        self.drop = HyperDropout(width)  # a site the dropout families can use; identity otherwise
        self.out = nn.Linear(width, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.drop(torch.tanh(self.hidden(x)))).squeeze(1)


def squared_error(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-example loss, (B,)."""
    return (output - target).square()


def absolute_error(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-example metric, (B,): reported as train_mae, val_mae, test_mae."""
    return (output - target).abs()


def diabetes() -> tuple[TensorDataset, TensorDataset]:
    """(pool, test): a fixed 20% test split; features and target standardised with the pool's statistics."""
    from sklearn.datasets import load_diabetes

    x, y = load_diabetes(return_X_y=True)
    order = np.random.RandomState(0).permutation(len(y))
    n_test = int(TEST_FRACTION * len(y))
    test, pool = order[:n_test], order[n_test:]
    mean, std = x[pool].mean(0), x[pool].std(0)
    y_mean, y_std = y[pool].mean(), y[pool].std()

    def tensors(rows: np.ndarray) -> TensorDataset:
        return TensorDataset(torch.tensor((x[rows] - mean) / std, dtype=torch.float32),
                             torch.tensor((y[rows] - y_mean) / y_std, dtype=torch.float32))

    return tensors(pool), tensors(test)


def make_task(config: dict[str, Any]) -> Task:
    """The task factory: called in each trial with its config (a plain dict of RunConfig settings)."""
    pool, test = diabetes()
    return Task(model=DiabetesNet(width=config["hidden"][0]), data=pool, test=test, loss=squared_error,
                metrics={"mae": absolute_error}, name="diabetes")


def main() -> None:
    import optuna
    import ray
    from ray import tune

    from hybrid_hpo.tune import IFTTrainable, IntRange, LogUniform, make_search

    ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1")
    search = make_search(
        {"inner_lr": LogUniform(low=1e-3, high=0.1), "hyper_lr": LogUniform(low=1e-3, high=0.1),
         "hidden": IntRange(low=16, high=256)},  # the factory builds the network this wide
        metric="sel_loss_best", mode="min", storage=f"sqlite:///{RESULTS}/optuna.sqlite3", seed=0,
        n_startup_trials=3, results_dir=RESULTS,
    )
    analysis = tune.run(
        tune.with_parameters(IFTTrainable, task=make_task),
        config={"family": "weight_decay", "granularity": "per_weight", "epochs": 30, "batch_size": 64,
                "inner_steps": 2, "val_fraction": 0.3, "device": "cpu"},
        search_alg=tune.search.ConcurrencyLimiter(search, max_concurrent=2),
        num_samples=6, metric="sel_loss_best", mode="min", resources_per_trial={"cpu": 1},
        storage_path=str(RESULTS), name="tune", verbose=0,
    )
    ray.shutdown()
    print(f"{'trial':>12}  {'inner_lr':>8}  {'hyper_lr':>8}  {'width':>5}  {'val_loss':>8}  {'val_mae':>7}  "
          f"{'test_loss':>9}  {'test_mae':>8}")
    for trial in sorted(analysis.trials, key=lambda t: t.last_result.get("sel_loss_best", float("inf"))):
        r, c = trial.last_result, trial.config
        print(f"{trial.trial_id:>12}  {c['inner_lr']:8.4f}  {c['hyper_lr']:8.4f}  {c['hidden']:>5}  "
              f"{r['val_loss']:8.4f}  {r['val_mae']:7.4f}  {r['test_loss']:9.4f}  {r['test_mae']:8.4f}")
    study = optuna.load_study(study_name=search.study.study_name, storage=f"sqlite:///{RESULTS}/optuna.sqlite3")
    held = sum("test_mae" in trial.user_attrs for trial in study.trials)
    print(f"Optuna study {study.study_name!r}: {held} of {len(study.trials)} trials hold test_mae as a user "
          f"attribute; open the dashboard:\n  hybrid-hpo dashboard --storage sqlite:///{RESULTS}/optuna.sqlite3")


if __name__ == "__main__":
    main()
