"""A finished comparison read back from its ``compare.json``, and reruns merged into it.

``compare.json`` (:mod:`hybrid_hpo.compare.comparison`) holds the spec as it ran, the strategies
that ran (``strategies_run``; every strategy of the spec in files written before it existed), each
run's records and the hybrid's importances. It is JSON: reading it unpickles nothing.

A rerun of some strategies (``hybrid-hpo compare SPEC --strategies pbt --results-dir NEW``) is read
over the comparison it redoes with :func:`merge_comparisons` ``([full, rerun])``: a later file's run
of a strategy and seed replaces an earlier file's run of the same pair, so the table, the paired
tests and the plots are those of the comparison with the rerun in place. Every file must judge
alike: the same task (data split and model), budget, selection metric, report metric, concurrency
and resources per trial (:data:`JUDGED_ALIKE`); otherwise their numbers do not pair and the merge
fails with the field that differs. A strategy's entry (its settings and space) comes from the last
file that ran it; the seeds are all files' seeds in order of first appearance; the importances come
from the last file that ran the hybrid.
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hybrid_hpo.compare.run import StrategyRun
from hybrid_hpo.compare.spec import OWN_KEYS, STRATEGIES, CompareSpec, validate_compare_spec
from hybrid_hpo.errors import ConfigError

JUDGED_ALIKE: tuple[str, ...] = ("task", "budget_s", "metric", "mode", "report", "report_mode", "max_concurrent",
                                 "resources")
"""CompareSpec fields every merged comparison must share (the strategies and seeds may differ)."""


@dataclass
class SavedComparison:
    """A comparison as its files hold it: the spec narrowed to the strategies that ran, every run,
    and the hybrid's fANOVA importances (meta-setting -> one value per seed)."""

    spec: CompareSpec
    runs: list[StrategyRun]
    importances: dict[str, list[float]]


def load_comparison(path: str | Path) -> SavedComparison:
    """Read a ``compare.json`` (or the results dir holding one); ConfigError ``<path>: <problem>``."""
    path = Path(path)
    if path.is_dir():
        path = path / "compare.json"
    try:
        saved = json.loads(path.read_text())
        raw_spec, raw_runs = saved["spec"], saved["runs"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ConfigError(f"{path}: not a comparison's compare.json ({type(error).__name__}: {error}); "
                          "give the compare.json of a finished `hybrid-hpo compare`") from None
    for name, strategy in raw_spec.get("strategies", {}).items():  # compare.json holds every field's value,
        for owner, keys in OWN_KEYS.items():                       # PBT's and ASHA's of every strategy too
            for key in keys if owner != name else ():
                strategy.pop(key, None)
    spec = validate_compare_spec(raw_spec, source=str(path))
    spec = spec.only(saved.get("strategies_run"), source=f"{path}: strategies_run")
    runs = [StrategyRun(**{k: v for k, v in run.items() if k != "guided"}) for run in raw_runs]  # a property
    strays = sorted({run.strategy for run in runs} - set(spec.strategies))
    if strays:
        raise ConfigError(f"{path}: runs of {strays[0]}, which is not among the strategies that ran; "
                          "the file was edited or is damaged")
    return SavedComparison(spec, runs, saved.get("importances", {}))


def merge_comparisons(saved: Sequence[SavedComparison], sources: Sequence[str] | None = None) -> SavedComparison:
    """``saved[0]`` with each later comparison's runs in place of the same strategy and seed (module
    docstring). ``sources`` name the comparisons in errors (default: their spec names)."""
    if not saved:
        raise ValueError("merge_comparisons needs at least one comparison")
    sources = list(sources) if sources is not None else [item.spec.name for item in saved]
    first = saved[0].spec
    for item, source in zip(saved[1:], sources[1:]):
        for field in JUDGED_ALIKE:
            mine, theirs = getattr(first, field), getattr(item.spec, field)
            if mine != theirs:
                raise ConfigError(f"{source}: {field} is {_shown(theirs)} but {sources[0]} has {_shown(mine)}; "
                                  "merge only comparisons of the same task, budget and judge")
    strategies = dict(first.strategies)
    seeds = list(first.seeds)
    runs = {(run.strategy, run.seed): run for run in saved[0].runs}
    importances = saved[0].importances
    for item in saved[1:]:
        strategies.update(item.spec.strategies)
        seeds += [seed for seed in item.spec.seeds if seed not in seeds]
        runs.update({(run.strategy, run.seed): run for run in item.runs})
        if "hybrid" in item.spec.strategies:
            importances = item.importances
    spec = first.model_copy(update={"seeds": seeds, "strategies": {name: strategies[name] for name in STRATEGIES
                                                                    if name in strategies}})
    ordered = sorted(runs.values(), key=lambda run: (seeds.index(run.seed), STRATEGIES.index(run.strategy)))
    return SavedComparison(spec, ordered, importances)


def _shown(value: Any) -> str:
    return json.dumps(value.model_dump(mode="json") if hasattr(value, "model_dump") else value, sort_keys=True)
