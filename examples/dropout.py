"""Per-unit dropout rates tuned by IFT hypergradients versus one fixed dropout rate.

Gaussian dropout (a continuous relaxation) with one rate per unit, for an MLP on a small digits
split and for a character-level LSTM language model on Python's own documentation (dataset
"text", no download). "fixed" keeps every rate at ``--init-dropout`` (no hyper step, same code
path); "per-unit" starts there and tunes each rate on the validation loss (no dropout at
validation). LSTM metric: test perplexity exp(test_loss) per character.

    python examples/dropout.py [--task mlp|lstm|both] [--seeds 0 1 2] [--pictures DIR]

Prints a markdown table (mean ± std over seeds, wall time per run) and the `hybrid-hpo run`
command of each row.
"""
from __future__ import annotations

import argparse
import math
from pathlib import Path

from _seeds import NO_HYPER_STEPS, command, mean_std, print_commands, run_seeds

TASKS = {
    "mlp": {"dataset": "digits", "train_size": 300, "val_size": 300, "val_fraction": 0.5, "model": "mlp",
            "hidden": [256, 256], "inner_optimizer": "momentum", "inner_lr": 0.05, "batch_size": 64,
            "epochs": 60, "hyper_lr": 0.05, "solver": "neumann", "solver.terms": 5, "solver.alpha": 0.1},
    "lstm": {"dataset": "text", "train_size": 1024, "val_size": 256, "val_fraction": 0.1, "model": "lstm_lm",
             "hidden": [64], "inner_optimizer": "adam", "inner_lr": 0.01, "batch_size": 32, "epochs": 8,
             "hyper_lr": 0.05, "solver": "neumann", "solver.terms": 5, "solver.alpha": 0.1},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", choices=("mlp", "lstm", "both"), default="both")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--init-dropout", type=float, default=0.2)
    parser.add_argument("--pictures", type=Path, default=None, help="folder for the rates-by-layer PNGs")
    args = parser.parse_args()
    print("| model | dropout | test acc % | test loss | test perplexity | val loss | mean / min / max rate | "
          "wall s per run |")
    print("|---|---|---|---|---|---|---|---|")
    commands = []
    for task in (("mlp", "lstm") if args.task == "both" else (args.task,)):
        for row, extra in (("fixed", {"inner_steps": NO_HYPER_STEPS}), ("per-unit", {"inner_steps": 2})):
            settings = {**TASKS[task], "family": "dropout", "init_dropout": args.init_dropout, **extra}
            folder = None if args.pictures is None else args.pictures / f"dropout-{task}-{row}"
            finals = run_seeds(settings, args.seeds, folder)
            for final in finals:
                final["test_ppl"] = math.exp(final["test_loss"])
            print(f"| {task} | {row} | {mean_std(finals, 'test_acc', 100)} | {mean_std(finals, 'test_loss', 1, 3)} | "
                  f"{mean_std(finals, 'test_ppl', 1, 2)} | {mean_std(finals, 'val_loss', 1, 3)} | "
                  f"{mean_std(finals, 'dropout_mean', 1, 2)} / {mean_std(finals, 'dropout_min', 1, 2)} / "
                  f"{mean_std(finals, 'dropout_max', 1, 2)} | {mean_std(finals, 'wall_s')} |", flush=True)
            commands.append(f"{task} {row}: {command(settings, args.seeds[0])}")
    print_commands(commands, args.seeds)


if __name__ == "__main__":
    main()
