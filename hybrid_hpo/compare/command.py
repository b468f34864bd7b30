"""`hybrid-hpo compare SPEC` (registered by hybrid_hpo.cli).

Results directory (default ``results/<name>-<YYYYmmdd-HHMMSS>``)::

    compare.json            the spec, every run's records (t, trial, epoch, metrics) and the table rows
    table.md                the Markdown table printed at the end
    test_vs_time.png        test metric of each strategy's pick versus wall time
    hybrid_importances.png  Optuna fANOVA importances of the hybrid's meta-settings
    optuna.sqlite3          every sweep's study (hybrid-hpo dashboard --storage sqlite:////...)
    <strategy>-seed<S>/     each sweep's results folder (Ray Tune experiment, artifacts)
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from datetime import datetime
from pathlib import Path

from hybrid_hpo.errors import ConfigError

RESULTS_FILE = "compare.json"


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``compare`` subcommand."""
    parser = subparsers.add_parser(
        "compare", help="BO-only vs IFT-with-defaults vs hybrid under one wall-clock budget",
        description="Run the three strategies of SPEC (searches/compare_*.yaml) on the same data split, each "
                    "for budget_s seconds per seed; print a table of the test metric of each strategy's "
                    "validation pick and write it with plots to the results dir.",
    )
    parser.add_argument("spec", help="comparison file, e.g. searches/compare_digits_few.yaml")
    parser.add_argument("--budget-s", type=float, metavar="S", help="seconds per strategy and seed (default: the spec's)")
    parser.add_argument("--seeds", type=int, nargs="+", metavar="S", help="replicate seeds (default: the spec's)")
    parser.add_argument("--warm-start", action="store_true",
                        help="start both searches with a trial at RunConfig's defaults of their searched settings "
                             "(the hybrid's is the ift_defaults run)")
    parser.add_argument("--results-dir", metavar="DIR", help="where results go (default: results/<name>-<time>)")
    parser.add_argument("--address", metavar="ADDR", help="join this Ray cluster instead of starting a local Ray")
    parser.set_defaults(handler=run_compare_command)


def run_compare_command(args: argparse.Namespace) -> int:
    from hybrid_hpo.compare.spec import load_compare_spec, with_changes

    spec = with_changes(load_compare_spec(args.spec), f"{args.spec} with the command-line options",
                        budget_s=args.budget_s, seeds=args.seeds, warm_start=args.warm_start)
    results_dir = _results_dir(args.results_dir, spec.name)
    _preflight(spec, results_dir, args.address)
    outcome = compare(spec, results_dir, address=args.address, progress=True)
    print(f"\nComparison {spec.name}: budget {spec.budget_s:g} s per strategy and seed, seeds {spec.seeds}; "
          f"each strategy's pick = best {spec.metric} within the budget")
    print(outcome["table"])
    print(f"Results, plots and Optuna studies in {results_dir}")
    return 0 if all(math.isfinite(row[f"{spec.report}_mean"]) for row in outcome["rows"]) else 1


def _results_dir(given: str | None, name: str) -> Path:
    path = Path(given) if given else Path("results") / f"{name}-{datetime.now():%Y%m%d-%H%M%S}"
    path = path.expanduser().resolve()
    if (path / RESULTS_FILE).exists():
        raise ConfigError(f"--results-dir: {path} already holds a comparison; choose another directory")
    return path


def _preflight(spec, results_dir: Path, address: str | None) -> None:
    """Bad input before anything is written: results dir, Ray address, datasets present offline."""
    from hybrid_hpo.compare.spec import SEARCHED
    from hybrid_hpo.tune.sweep import check_trials_can_run, check_writable, probe_address

    check_writable(results_dir)
    if address:
        probe_address(address)
    # the data settings live in task only, so one strategy's sweep names every dataset (or the task factory)
    check_trials_can_run(spec.sweep_spec(SEARCHED[0], spec.seeds[0]), local=not address)


def compare(spec, results_dir: Path, *, address: str | None = None, progress: bool = False) -> dict:
    """Run ``spec`` (:func:`hybrid_hpo.compare.run.run_comparison`), write the results dir (module
    docstring) and return ``{"runs", "rows", "table"}``."""
    from hybrid_hpo.compare.plots import hybrid_importances, plot_importances, plot_test_vs_time
    from hybrid_hpo.compare.run import run_comparison, runs_as_json
    from hybrid_hpo.compare.summary import final_incumbent, markdown_table, summary_rows
    from hybrid_hpo.tune.search import STORAGE_FILENAME, sqlite_url

    def report(run) -> None:
        if progress:
            pick = final_incumbent(run, spec)
            shown = f"{pick[spec.report]:.4f}" if pick else "nan (no finite result within the budget)"
            print(f"[compare] seed {run.seed} {run.strategy}: {run.trials} trials, {run.wall_s:.0f} s, "
                  f"{spec.report} of the pick {shown}", file=sys.stderr, flush=True)

    runs = run_comparison(spec, results_dir, address=address, on_run=report)
    rows = summary_rows(runs, spec)
    table = markdown_table(rows, spec)
    plot_test_vs_time(runs, spec, results_dir / "test_vs_time.png")
    importances = hybrid_importances(runs, sqlite_url(results_dir / STORAGE_FILENAME))
    plot_importances(importances, spec, results_dir / "hybrid_importances.png")
    (results_dir / "table.md").write_text(table + "\n")
    (results_dir / RESULTS_FILE).write_text(json.dumps(
        {"spec": spec.model_dump(mode="json"), "rows": rows, "importances": importances,
         "runs": runs_as_json(runs)}, indent=1) + "\n")
    return {"runs": runs, "rows": rows, "table": table}
