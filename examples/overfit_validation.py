"""Overfitting a small validation set (Lorraine, Vicol & Duvenaud 2020, first experiment).

50 training and 50 validation digits, an MLP with one weight decay per weight (~300k
hyperparameters, more than the validation set has pixels), and the cheapest hypergradient: the
Identity approximation H⁻¹ ≈ I. With that many hyperparameters the search fits the validation
set itself: train and validation accuracy reach 100% while test accuracy stays well below.

    python examples/overfit_validation.py [--epochs 600] [--seed 0]

Full-batch steps (batch 50 = the whole split), one hyper step after each weight step; ~10-20 s
on 2 CPU cores.
"""
from __future__ import annotations

import argparse

from hybrid_hpo.bilevel import BilevelTrainer
from hybrid_hpo.config import RunConfig


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=600, help="full-batch weight steps (default 600)")
    parser.add_argument("--seed", type=int, default=0, help="split, initialisation and batch seed")
    args = parser.parse_args()
    config = RunConfig.from_mapping({
        "dataset": "digits", "train_size": 50, "val_size": 50, "val_fraction": 0.5,
        "model": "mlp", "hidden": [512], "family": "weight_decay", "granularity": "per_weight",
        "init_decay": 1e-2, "solver": "identity", "inner_optimizer": "momentum", "inner_lr": 0.03,
        "hyper_optimizer": "adam", "hyper_lr": 0.03, "batch_size": 50, "inner_steps": 1,
        "epochs": args.epochs, "seed": args.seed, "device": "cpu",
    })
    trainer = BilevelTrainer(config)
    final = trainer.fit(progress=True)[-1]
    print(f"{trainer.family.num_hparams} weight decays tuned on {len(trainer.data.val)} validation examples")
    print(f"train accuracy:      {final['train_acc']:.3f}")
    print(f"validation accuracy: {final['val_acc']:.3f}")
    print(f"test accuracy:       {final['test_acc']:.3f}")


if __name__ == "__main__":
    main()
