"""`hybrid-hpo compare SPEC` (registered by hybrid_hpo.cli): parse the options, run the comparison
(:mod:`hybrid_hpo.compare.comparison`, which also documents the results dir) and print its table."""
from __future__ import annotations

import argparse
import math


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``compare`` subcommand."""
    parser = subparsers.add_parser(
        "compare", help="baselines (BO-only, BO + ASHA) vs IFT-with-defaults vs hybrid under one wall-clock budget",
        description="Run the strategies of SPEC (searches/compare_*.yaml) on the same data split, each "
                    "for budget_s seconds per seed; print the hybrid against the strongest baseline and a table "
                    "of the test metric of each strategy's selection pick, and write them with plots to the "
                    "results dir.",
    )
    parser.add_argument("spec", help="comparison file, e.g. searches/compare_digits_few.yaml")
    parser.add_argument("--budget-s", type=float, metavar="S", help="seconds per strategy and seed (default: the spec's)")
    parser.add_argument("--seeds", type=int, nargs="+", metavar="S", help="replicate seeds (default: the spec's)")
    parser.add_argument("--warm-start", action="store_true",
                        help="start every search with a trial at RunConfig's defaults of their searched settings "
                             "(the hybrid's is the ift_defaults run)")
    parser.add_argument("--strategies", nargs="+", metavar="NAME",
                        help="run only these strategies of SPEC (a rerun of some of them; read it over the full "
                             "comparison with examples/compare.py --from FULL/compare.json RERUN/compare.json)")
    parser.add_argument("--results-dir", metavar="DIR", help="where results go (default: results/<name>-<time>)")
    parser.add_argument("--address", metavar="ADDR", help="join this Ray cluster instead of starting a local Ray")
    parser.add_argument("--verbose", action="store_true", help="Ray Tune's own console output (config and result "
                        "boxes, checkpoint lines) for the searches")
    parser.set_defaults(handler=run_compare_command)


def run_compare_command(args: argparse.Namespace) -> int:
    from hybrid_hpo.compare.comparison import compare, plan_results_dir, preflight
    from hybrid_hpo.compare.spec import load_compare_spec, with_changes

    spec = with_changes(load_compare_spec(args.spec), f"{args.spec} with the command-line options",
                        budget_s=args.budget_s, seeds=args.seeds, warm_start=args.warm_start)
    spec.only(args.strategies)  # an unknown name fails here, before anything is written
    results_dir = plan_results_dir(args.results_dir, spec.name)
    preflight(spec, results_dir, args.address)
    outcome = compare(spec, results_dir, address=args.address, progress=True, verbose=args.verbose,
                      only=args.strategies)
    print(f"\nComparison {spec.name}: budget {spec.budget_s:g} s per strategy and seed, seeds {spec.seeds}; "
          f"each strategy's pick = best {spec.metric} within the budget")
    print(outcome["table"])
    print(f"Results, plots and Optuna studies in {results_dir}")
    return 0 if all(math.isfinite(row[f"{spec.report}_mean"]) for row in outcome["rows"]) else 1
