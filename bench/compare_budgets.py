"""Does a comparison's budget leave its searches room for model-guided trials? Epoch and trial times.

For each comparison file, two trials are timed in this process with one torch thread (what a
compare trial gets): plain training (BO-only's ``fixed`` family at RunConfig's defaults of its
searched settings) and one IFT run with the default meta-settings (ift_defaults; the hybrid's
trials scatter around it). Epochs alternate between the two, ``--epochs`` each after one warm-up
epoch; wall and CPU seconds per epoch are medians. From the CPU time (≈ the wall time on an idle
machine) a trial lasts T = epochs · t_epoch, and a search with ``max_concurrent`` slots starts
about N = max_concurrent · budget_s / T trials within the budget, of which N − startup_trials are
model-guided (process start and reporting overheads not included, so this is an upper bound).

    python bench/compare_budgets.py searches/compare_diabetes_regression.yaml searches/compare_mnist1d_cnn.yaml
"""
from __future__ import annotations

import argparse
import statistics
import time

from common import add_common_args, fmt_load, header

from hybrid_hpo.bilevel import BilevelTrainer
from hybrid_hpo.compare.spec import STARTUP_TRIALS, load_compare_spec
from hybrid_hpo.config import RunConfig


def epoch_times(trainers: dict[str, BilevelTrainer], epochs: int) -> dict[str, tuple[float, float]]:
    """Median (wall, CPU) seconds per epoch of each trainer, epochs interleaved, after one warm-up."""
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in trainers}
    for repeat in range(epochs + 1):
        for name, trainer in trainers.items():
            wall, cpu = time.perf_counter(), time.process_time()
            trainer.train_epoch()
            if repeat:
                times[name].append((time.perf_counter() - wall, time.process_time() - cpu))
    return {name: (statistics.median(t[0] for t in pairs), statistics.median(t[1] for t in pairs))
            for name, pairs in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("specs", nargs="+", help="comparison files (searches/compare_*.yaml)")
    parser.add_argument("--epochs", type=int, default=3, help="timed epochs per trial (after one warm-up)")
    add_common_args(parser)
    args = parser.parse_args()
    header(args, "compare budgets: epoch and trial times of BO-only and IFT-with-defaults trials, 1 thread")
    print("| comparison | trial | epoch wall s | epoch CPU s | epochs | trial CPU s | trials in budget "
          "| model-guided |\n|---|---|---|---|---|---|---|---|")
    for path in args.specs:
        spec = load_compare_spec(path)
        settings = {name: RunConfig.from_mapping({**spec.run_settings(name, spec.seeds[0]), "device": args.device})
                    for name in ("bo_only", "ift_defaults")}
        trainers = {name: BilevelTrainer(config) for name, config in settings.items()}
        for name, (wall, cpu) in epoch_times(trainers, args.epochs).items():
            search = spec.strategies["bo_only" if name == "bo_only" else "hybrid"]  # the search of such trials
            startup = STARTUP_TRIALS if search.startup_trials is None else search.startup_trials
            trial = settings[name].epochs * cpu
            started = int(spec.max_concurrent * spec.budget_s / trial)
            label = "bo_only" if name == "bo_only" else "ift_defaults (hybrid: mostly cheaper)"
            print(f"| {spec.name} ({spec.budget_s:g} s) | {label} | {wall:.3f} | {cpu:.3f} | {settings[name].epochs} "
                  f"| {trial:.1f} | {started} | {max(0, started - startup)} |", flush=True)
    print(f"# load average at end: {fmt_load()}")


if __name__ == "__main__":
    main()
