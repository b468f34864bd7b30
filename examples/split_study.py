"""The train/validation split study (Lorraine, Vicol & Duvenaud 2020, Fig. "split"): which share of
the data should go to validation when one weight decay is tuned, versus one decay per weight?

For each ``val_fraction`` the non-test digits left after the selection split are split into train /
val; an MLP is trained while its weight decay(s) are tuned by IFT hypergradients (Neumann series) on
the validation loss. With one global decay the validation set only has to pin down one number, so a
small one should do; with one decay per weight (as many λ as weights) a larger validation set is
needed to avoid overfitting it. The paper found ~10% best for a global decay versus 25-50% per weight.

The judge is the selection split (``selection_fraction``, default 20% of the non-test pool, drawn
per seed before ``val_fraction`` cuts the rest): the same examples for every ``val_fraction``, seen
by neither the weights nor λ. Validation accuracies are not comparable across rows (each row
validates on other examples, and λ were fitted to them); ``sel`` metrics are.

    python examples/split_study.py [--fractions 0.05 0.1 0.25 0.5 0.75] [--seeds 0 1 2] [--epochs 40]

Prints one markdown table row per (granularity, val_fraction): selection-split and test accuracy
and loss, validation accuracy, mean ± std over seeds, and the wall time per run; then per
granularity the fraction the selection split picks and the one the test split would pick.
"""
from __future__ import annotations

import argparse
import statistics

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
    print("| decays | val_fraction | train / val / sel | sel acc % | sel loss | test acc % | test loss | val acc % | "
          "decay mean | wall s per run |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    commands, verdicts = [], []
    for granularity in args.granularities:
        mean_loss = {}  # (split, fraction) -> mean loss over seeds
        for fraction in args.fractions:
            settings = {**base, "granularity": granularity, "val_fraction": fraction}
            finals = run_seeds(settings, args.seeds)
            sizes = " / ".join(str(finals[0]["sizes"].get(name, 0)) for name in ("train", "val", "sel"))
            for split in ("sel", "test"):
                mean_loss[split, fraction] = statistics.fmean(f[f"{split}_loss"] for f in finals)
            print(f"| {granularity} | {fraction:g} | {sizes} | {mean_std(finals, 'sel_acc', 100)} | "
                  f"{mean_std(finals, 'sel_loss', 1, 3)} | {mean_std(finals, 'test_acc', 100)} | "
                  f"{mean_std(finals, 'test_loss', 1, 3)} | {mean_std(finals, 'val_acc', 100)} | "
                  f"{mean_std(finals, 'decay_mean', 1, 4)} | {mean_std(finals, 'wall_s')} |", flush=True)
        picks = {split: min(args.fractions, key=lambda fraction: mean_loss[split, fraction]) for split in ("sel", "test")}
        verdicts.append(f"{granularity}: the selection split picks val_fraction {picks['sel']:g} (mean sel loss), "
                        f"the test split would pick {picks['test']:g} (mean test loss)")
        commands.append(f"{granularity}: {command({**base, 'granularity': granularity, 'val_fraction': 0.1})}")
    print()
    print("\n".join(verdicts))
    print("\nOne seed of one row per granularity (vary --val-fraction and --seed):")
    print("\n".join(commands))


if __name__ == "__main__":
    main()
