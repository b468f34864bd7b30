"""A comparison end to end: where it writes, what is checked first, and the run that fills the
results directory (what ``hybrid-hpo compare SPEC`` and ``examples/compare.py`` call).

Results directory (default ``results/<name>-<YYYYmmdd-HHMMSS>``)::

    compare.json            the spec, the strategies that ran (``strategies_run``: all of the spec's
                            unless ``only`` named some), seeds and budget, the machine (CPUs, load
                            averages at start and end; each run also records its 1-minute load before
                            and after), every run's records (t, trial, epoch, metrics), the table
                            rows, the strongest baseline and the paired tests
                            (:mod:`hybrid_hpo.compare.saved` reads it back and merges reruns)
    table.md                what is printed at the end: the hybrid against the strongest baseline in
                            plain words, the strategies' table, the paired differences
    test_vs_time.png        test metric of each strategy's pick versus wall time
    hybrid_importances.png  Optuna fANOVA importances of the hybrid's meta-settings
    optuna.sqlite3          every sweep's study (hybrid-hpo dashboard --storage sqlite:////...)
    <strategy>-seed<S>/     each sweep's results folder (Ray Tune experiment, artifacts)
"""
from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

from hybrid_hpo.compare.spec import SEARCHED, CompareSpec
from hybrid_hpo.errors import ConfigError

RESULTS_FILE = "compare.json"


def plan_results_dir(given: str | Path | None, name: str) -> Path:
    """The comparison's results dir (absolute): ``given``, else ``results/<name>-<time>``;
    ConfigError when it holds a comparison already."""
    path = Path(given) if given else Path("results") / f"{name}-{datetime.now():%Y%m%d-%H%M%S}"
    path = path.expanduser().resolve()
    if (path / RESULTS_FILE).exists():
        raise ConfigError(f"--results-dir: {path} already holds a comparison; choose another directory")
    return path


def preflight(spec: CompareSpec, results_dir: Path, address: str | None = None) -> None:
    """Bad input before anything is written: the sweeps' checks before Ray
    (:func:`hybrid_hpo.tune.preflight.check_before_ray`: Ray address, results dir, data at every
    corner, resources). The data settings live in ``task`` only, so one strategy's sweep names
    every dataset (or the task factory)."""
    from hybrid_hpo.tune.preflight import check_before_ray

    check_before_ray(spec.sweep_spec(SEARCHED[0], spec.seeds[0]), results_dir, address=address)


def compare(spec: CompareSpec, results_dir: Path, *, address: str | None = None, progress: bool = False,
            verbose: bool = False, only: Sequence[str] | None = None) -> dict:
    """Run ``spec``'s strategies (those named in ``only`` when given: a rerun of some of them,
    :meth:`CompareSpec.only`) with :func:`hybrid_hpo.compare.run.run_comparison`, write the results
    dir (module docstring) and return ``{"runs", "rows", "strongest_baseline", "pairs", "table"}``;
    ``progress`` prints a line per finished run to stderr."""
    from hybrid_hpo.compare.plots import hybrid_importances, plot_importances, plot_test_vs_time
    from hybrid_hpo.compare.run import run_comparison, runs_as_json
    from hybrid_hpo.compare.summary import final_incumbent, summarize
    from hybrid_hpo.tune.urls import results_dir_storage

    def report(run) -> None:
        if progress:
            pick = final_incumbent(run, spec)
            shown = f"{pick[spec.report]:.4f}" if pick else "nan (no finite result within the budget)"
            print(f"[compare] seed {run.seed} {run.strategy}: {run.trials} trials, {run.wall_s:.0f} s, "
                  f"{spec.report} of the pick {shown}", file=sys.stderr, flush=True)

    ran = spec.only(only)
    load_start = os.getloadavg()
    runs = run_comparison(ran, results_dir, address=address, verbose=verbose, on_run=report)
    summary = summarize(runs, ran)
    plot_test_vs_time(runs, ran, results_dir / "test_vs_time.png")
    importances = hybrid_importances(runs, results_dir_storage(results_dir))
    plot_importances(importances, ran, results_dir / "hybrid_importances.png")
    (results_dir / "table.md").write_text(summary["table"] + "\n")
    (results_dir / RESULTS_FILE).write_text(json.dumps(
        {"spec": spec.model_dump(mode="json"), "strategies_run": list(ran.strategies),
         "seeds": spec.seeds, "budget_s": spec.budget_s,
         "machine": {"cpus": os.cpu_count(), "load_start": list(load_start), "load_end": list(os.getloadavg())},
         "rows": summary["rows"], "strongest_baseline": summary["strongest_baseline"],
         "pairs": [pair.as_dict() for pair in summary["pairs"]],
         "importances": importances,
         "runs": runs_as_json(runs)}, indent=1) + "\n")
    return {"runs": runs, **summary}
