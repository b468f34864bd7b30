"""The train/validation split study (Lorraine, Vicol & Duvenaud 2020, Fig. "split"): which share of
the data should go to validation when one weight decay is tuned, versus one decay per weight?

For each ``val_fraction`` the non-test digits are split into train / val; an MLP is trained while
its weight decay(s) are tuned by IFT hypergradients (Neumann series) on the validation loss. With
one global decay the validation set only has to pin down one number, so a small one should do;
with one decay per weight (as many λ as weights) a larger validation set is needed to avoid
overfitting it. The paper found ~10% best for a global decay versus 25-50% per weight.

    python examples/split_study.py [--fractions 0.05 0.1 0.25 0.5 0.75] [--seeds 0 1 2] [--epochs 40]

Prints one markdown table row per (granularity, val_fraction): test accuracy and loss, mean ± std
over seeds, and the wall time per run.
"""
from __future__ import annotations

import argparse

from _seeds import command, mean_std, run_seeds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fractions", type=float, nargs="+", default=[0.05, 0.1, 0.25, 0.5, 0.75])
    parser.add_argument("--granularities", nargs="+", default=["global", "per_weight"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=40)
    args = parser.parse_args()
    base = {"dataset": "digits", "model": "mlp", "hidden": [128], "family": "weight_decay", "init_decay": 1e-3,
            "solver": "neumann", "solver.terms": 5, "solver.alpha": 0.1, "inner_optimizer": "momentum", "inner_lr": 0.05,
            "hyper_optimizer": "adam", "hyper_lr": 0.03, "batch_size": 64, "inner_steps": 2,
            "epochs": args.epochs}
    print("| decays | val_fraction | train / val size | test acc % | test loss | val acc % | decay mean | "
          "wall s per run |")
    print("|---|---|---|---|---|---|---|---|")
    commands = []
    for granularity in args.granularities:
        for fraction in args.fractions:
            settings = {**base, "granularity": granularity, "val_fraction": fraction}
            finals = run_seeds(settings, args.seeds)
            sizes = f"{round(1437 * (1 - fraction))} / {1437 - round(1437 * (1 - fraction))}"
            print(f"| {granularity} | {fraction:g} | {sizes} | {mean_std(finals, 'test_acc', 100)} | "
                  f"{mean_std(finals, 'test_loss', 1, 3)} | {mean_std(finals, 'val_acc', 100)} | "
                  f"{mean_std(finals, 'decay_mean', 1, 4)} | {mean_std(finals, 'wall_s')} |", flush=True)
        commands.append(f"{granularity}: {command({**base, 'granularity': granularity, 'val_fraction': 0.1})}")
    print("\nOne seed of one row per granularity (vary --val-fraction and --seed):")
    print("\n".join(commands))


if __name__ == "__main__":
    main()
