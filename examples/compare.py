"""Does the hybrid pay off on *your* task? The comparison from Python, plus a paired reading.

Starts from a comparison file, changes what you ask for (dataset, model, budget, seeds) and runs
BO-only, IFT-with-defaults and the hybrid under the same wall-clock budget and data split
(:func:`hybrid_hpo.compare.comparison.compare`, what ``hybrid-hpo compare`` runs). Then, because the
three strategies share each seed's split, it prints the *paired* differences per seed (hybrid
minus each other strategy) and each strategy's test metric at a quarter, half and all of the
budget (anytime performance, from the same records as ``test_vs_time.png``), and what the pick
would have been by the validation split instead of the selection split (the rule before issue 15:
the IFT strategies fit their λ to the validation split, so it flatters them).

    python examples/compare.py --dataset mnist1d --budget-s 60 --seeds 0 1 2
    python examples/compare.py --from results/compare-digits-few-20261123-070000/compare.json [--plots DIR]
    python examples/compare.py --from results/few/compare.json results/few-pbt-rerun/compare.json

The first runs a comparison (here on the generated mnist1d task instead of the file's digits);
the second only reads a finished one (its table, then the readings above; with ``--plots``, its
two pictures redrawn); the third reads a rerun of some strategies (``hybrid-hpo compare SPEC
--strategies pbt``) over the comparison it redoes: the rerun's runs replace the same strategy and
seed (:func:`hybrid_hpo.compare.saved.merge_comparisons`).
"""
from __future__ import annotations

import argparse
import statistics
import sys
from datetime import datetime
from pathlib import Path

from hybrid_hpo.compare.comparison import compare
from hybrid_hpo.compare.plots import plot_importances, plot_test_vs_time
from hybrid_hpo.compare.run import StrategyRun
from hybrid_hpo.compare.saved import load_comparison, merge_comparisons
from hybrid_hpo.compare.spec import CompareSpec, load_compare_spec, with_changes
from hybrid_hpo.compare.summary import (LABELS, SHORT, final_incumbent, incumbent_at, incumbents, strategies,
                                       summarize)
from hybrid_hpo.errors import ConfigError

FRACTIONS = (0.25, 0.5, 1.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", default=str(Path(__file__).parents[1] / "searches" / "compare_digits_few.yaml"))
    parser.add_argument("--dataset", help="replace the file's dataset (e.g. mnist1d)")
    parser.add_argument("--budget-s", type=float, help="seconds per strategy and seed")
    parser.add_argument("--seeds", type=int, nargs="+")
    parser.add_argument("--results-dir", type=Path)
    parser.add_argument("--from", dest="saved", type=Path, nargs="+", metavar="COMPARE_JSON",
                        help="read this compare.json instead of running; later files' runs (reruns of some "
                             "strategies) replace the same strategy and seed of earlier ones")
    parser.add_argument("--plots", type=Path, help="with --from: redraw the two plots into this folder")
    args = parser.parse_args()
    if args.saved:
        merged = merge_comparisons([load_comparison(path) for path in args.saved], [str(p) for p in args.saved])
        spec, runs, importances = merged.spec, merged.runs, merged.importances
        print(summarize(runs, spec)["table"])
        print()
        if args.plots:
            args.plots.mkdir(parents=True, exist_ok=True)
            plot_test_vs_time(runs, spec, args.plots / f"{spec.name}_test_vs_time.png")
            plot_importances(importances, spec, args.plots / f"{spec.name}_hybrid_importances.png")
    else:
        spec = with_changes(load_compare_spec(args.spec), "examples/compare.py",
                            task={"dataset": args.dataset} if args.dataset else None,
                            budget_s=args.budget_s, seeds=args.seeds)
        results_dir = args.results_dir or Path("results") / f"{spec.name}-{datetime.now():%Y%m%d-%H%M%S}"
        outcome = compare(spec, results_dir.resolve(), progress=True)
        print(outcome["table"])
        runs = outcome["runs"]
    if "hybrid" in spec.strategies:  # a rerun of other strategies alone has no hybrid to pair with
        print(paired_table(runs, spec))
        print()
    print(anytime_table(runs, spec))
    print()
    print(pick_rule_table(runs, spec))


def _finals(runs: list[StrategyRun], spec: CompareSpec, strategy: str) -> dict[int, float]:
    picks = {run.seed: final_incumbent(run, spec) for run in runs if run.strategy == strategy}
    return {seed: pick[spec.report] if pick else float("nan") for seed, pick in picks.items()}


def _scale(spec: CompareSpec) -> tuple[float, int, str]:
    """Accuracies in % (differences in points), any other metric as it is: (factor, digits, unit)."""
    return (100.0, 1, " (%)") if spec.report.endswith("acc") else (1.0, 3, "")


def paired_table(runs: list[StrategyRun], spec: CompareSpec) -> str:
    """Per seed: the hybrid's test metric minus each other strategy's (same split), and the mean."""
    scale, digits, unit = _scale(spec)
    hybrid = _finals(runs, spec, "hybrid")
    better = "higher" if spec.report_mode == "max" else "lower"
    lines = [f"| hybrid − … ({spec.report}{unit}, {better} is better) | "
             + " | ".join(f"seed {s}" for s in hybrid) + " | mean |", "|---|" + "---|" * (len(hybrid) + 1)]
    for other in (name for name in ("bo_only", "bo_asha", "ift_defaults") if name in spec.strategies):
        theirs = _finals(runs, spec, other)
        deltas = [scale * (hybrid[s] - theirs[s]) for s in hybrid]
        lines.append(f"| {LABELS[other]} | " + " | ".join(f"{d:+.{digits}f}" for d in deltas)
                     + f" | {statistics.fmean(deltas):+.{digits}f} |")
    return "\n".join(lines)


def anytime_table(runs: list[StrategyRun], spec: CompareSpec) -> str:
    """Mean over seeds of each strategy's test metric at fractions of the budget."""
    scale, digits, unit = _scale(spec)
    lines = [f"| {spec.report}{unit} at | " + " | ".join(f"{f:.0%} of {spec.budget_s:g} s" for f in FRACTIONS) + " |",
             "|---|" + "---|" * len(FRACTIONS)]
    for strategy in strategies(spec):
        chains = [incumbents(r.records, spec.metric, spec.mode, spec.budget_s) for r in runs if r.strategy == strategy]
        cells = []
        for fraction in FRACTIONS:
            values = [incumbent_at(chain, fraction * spec.budget_s, spec.report) for chain in chains]
            finite = [scale * v for v in values if v == v]
            mean = f"{statistics.fmean(finite):.{digits}f}" if finite else ""
            cells.append(f"{mean} ({len(finite)}/{len(values)} seeds)" if finite else "—")
        lines.append(f"| {LABELS[strategy]} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def pick_rule_table(runs: list[StrategyRun], spec: CompareSpec) -> str:
    """Per strategy, the test metric of the final pick by the selection split (``spec.metric``, e.g.
    sel_loss: examples neither weights nor λ saw) against the pick by the validation split
    (``val_<x>``, what λ were fitted to), mean ± std over seeds, and the seeds where they differ."""
    scale, digits, unit = _scale(spec)
    by_val = "val_" + spec.metric.removeprefix("sel_")
    lines = ["| pick by | " + " | ".join(SHORT[s] for s in strategies(spec)) + " |",
             "|---|" + "---|" * len(strategies(spec))]
    picks = {}
    for metric in (spec.metric, by_val):
        row = []
        for strategy in strategies(spec):
            finals = []
            for run in (r for r in runs if r.strategy == strategy):
                chain = incumbents(run.records, metric, spec.mode, spec.budget_s)
                picks[metric, strategy, run.seed] = chain[-1] if chain else None
                finals.append(scale * chain[-1][spec.report] if chain else float("nan"))
            row.append(f"{statistics.fmean(finals):.{digits}f} ± {statistics.stdev(finals):.{digits}f}"
                       if len(finals) > 1 else f"{finals[0]:.{digits}f}")
        lines.append(f"| {metric} → {spec.report}{unit} | " + " | ".join(row) + " |")
    differ = []
    for strategy in strategies(spec):
        seeds = sorted({seed for (_, name, seed) in picks if name == strategy})
        changed = sum(picks[spec.metric, strategy, s] is not picks[by_val, strategy, s] for s in seeds)
        differ.append(f"{changed}/{len(seeds)}")
    lines.append("| seeds whose pick differs | " + " | ".join(differ) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    try:
        main()
    except ConfigError as error:  # bad input: one line naming the field, exit 2
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
