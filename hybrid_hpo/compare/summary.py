"""From records to the comparison table: one selection rule for all strategies.

A strategy's *incumbent* at time t is, among the records it reported by t (every epoch of every
trial; at most ``budget_s`` counts), the one with the best ``metric`` (``sel_loss`` in the shipped
files: the selection split, which neither weights nor λ saw): the model you would pick without
the test set. Its test metric is what the strategy delivers at t.
Records whose selection metric is not finite (a diverged trial) are never picked; a strategy
without any usable record delivers NaN (the table says so rather than crashing).

Table row per strategy (over seeds): test metric mean ± sample std of the final incumbents,
selection metric of the final incumbents, mean wall seconds, mean number of trials, mean number of
trials the sampler's model suggested (after its random start-up trials), mean epochs reported
within the budget. Below it, one row per pair of strategies: the paired per-seed differences of the
test metric with a 95 % t interval, the paired t-test's p and the verdict at 5 %
(:mod:`hybrid_hpo.compare.stats`).

The *strongest baseline* is the strategy without hypergradients (``bo_only``, ``bo_asha``) whose
picks have the best mean test metric (the first in :data:`STRATEGIES` order on a tie): the one a
practitioner would have used instead. table.md opens with the hybrid against it in plain words,
and that pair (then PBT's against it) comes first among the paired rows.
"""
from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from typing import Any

from hybrid_hpo.compare.run import StrategyRun
from hybrid_hpo.compare.spec import BASELINES, STRATEGIES, CompareSpec
from hybrid_hpo.compare.stats import Paired, paired_test

LABELS: dict[str, str] = {"bo_only": "BO-only (TPE, no hypergradients)",
                          "bo_asha": "BO + ASHA (TPE, weak trials stopped early, no hypergradients)",
                          "ift_defaults": "IFT with default meta-settings",
                          "hybrid": "Hybrid (TPE over meta-settings, IFT inside)",
                          "pbt": "PBT (meta-settings, inherits weights and λ)"}
SHORT: dict[str, str] = {"bo_only": "BO-only", "bo_asha": "BO + ASHA", "ift_defaults": "IFT defaults",
                         "hybrid": "Hybrid", "pbt": "PBT"}
TPE_SEARCHES: tuple[str, ...] = ("bo_only", "bo_asha", "hybrid")
"""The strategies whose settings TPE suggests (PBT's come from its population)."""
MIN_GUIDED = 10
"""Trials a search's model should suggest for "Bayesian" to mean more than random search."""


def incumbents(records: Sequence[dict[str, Any]], metric: str, mode: str, budget_s: float) -> list[dict[str, Any]]:
    """The records that became incumbent, in time order (each better than all before it), among
    those with ``t <= budget_s`` and a finite ``metric``."""
    sign = 1.0 if mode == "min" else -1.0
    best, chain = math.inf, []
    for record in sorted(records, key=lambda r: (not math.isfinite(r["t"]), r["t"])):
        value = record.get(metric, math.nan)
        if not record["t"] <= budget_s or not math.isfinite(value):  # also drops a NaN time
            continue
        if sign * value < best:
            best = sign * value
            chain.append(record)
    return chain


def final_incumbent(run: StrategyRun, spec: CompareSpec) -> dict[str, Any] | None:
    """The record ``run`` delivers at the end of the budget (None when it has none)."""
    chain = incumbents(run.records, spec.metric, spec.mode, spec.budget_s)
    return chain[-1] if chain else None


def incumbent_at(chain: Sequence[dict[str, Any]], t: float, key: str) -> float:
    """``key`` of the incumbent at time ``t`` (NaN before the first record)."""
    value = math.nan
    for record in chain:
        if record["t"] > t:
            break
        value = record.get(key, math.nan)
    return value


def strategies(spec: CompareSpec) -> list[str]:
    """The spec's strategies in :data:`STRATEGIES` order."""
    return [strategy for strategy in STRATEGIES if strategy in spec.strategies]


def per_seed(runs: Sequence[StrategyRun], spec: CompareSpec, strategy: str) -> list[float]:
    """The report metric of ``strategy``'s final incumbent for each seed of ``spec`` (NaN: none)."""
    by_seed = {run.seed: final_incumbent(run, spec) for run in runs if run.strategy == strategy}
    return [by_seed[seed].get(spec.report, math.nan) if by_seed.get(seed) else math.nan for seed in spec.seeds]


def paired_rows(runs: Sequence[StrategyRun], spec: CompareSpec, first_against: str | None = None) -> list[Paired]:
    """Every later strategy (in :data:`STRATEGIES` order) against every earlier one, paired by seed;
    the hybrid's and then PBT's pair against ``first_against`` (the strongest baseline) first."""
    names = strategies(spec)
    upward = spec.report_mode == "max"
    pairs = [paired_test(a, b, per_seed(runs, spec, a), per_seed(runs, spec, b), upward)
             for i, a in enumerate(names) for b in names[:i]][::-1]
    lead = {("hybrid", first_against): 0, ("pbt", first_against): 1}
    return sorted(pairs, key=lambda pair: lead.get((pair.a, pair.b), len(lead)))


def strongest_baseline(rows: Sequence[dict[str, Any]], spec: CompareSpec) -> str | None:
    """The baseline (:data:`BASELINES`) whose picks have the best mean report metric (the first in
    :data:`STRATEGIES` order on a tie); None when no baseline has a finite mean."""
    sign = 1.0 if spec.report_mode == "max" else -1.0
    scored = [(sign * row[f"{spec.report}_mean"], row["strategy"]) for row in rows
              if row["strategy"] in BASELINES and math.isfinite(row[f"{spec.report}_mean"])]
    return max(scored, key=lambda item: item[0])[1] if scored else None


VERDICT_WORDS: dict[str, str] = {"win": "the hybrid wins at the 5 % level",
                                 "loss": "the hybrid loses at the 5 % level",
                                 "tie": "no difference at the 5 % level (a tie)",
                                 "n/a": "too few paired seeds for a test (n/a)"}


def headline(rows: Sequence[dict[str, Any]], pairs: Sequence[Paired], spec: CompareSpec) -> str:
    """Plain words: which baseline is strongest here, and the hybrid against it (mean paired
    difference, 95 % interval, p, verdict)."""
    best = strongest_baseline(rows, spec)
    if best is None and not any(row["strategy"] in BASELINES for row in rows):
        return ("Strongest baseline: none ran (a rerun of " + ", ".join(SHORT[row["strategy"]] for row in rows)
                + "; read it over the full comparison for the pairs with the baselines).")
    if best is None:
        return "Strongest baseline: none (no baseline delivered a finite result)."
    scale, digits, unit = (100.0, 1, " %") if spec.report.endswith("acc") else (1.0, 3, "")
    means = {row["strategy"]: row[f"{spec.report}_mean"] for row in rows}
    others = "; ".join(f"{SHORT[name]} {_format(scale * means[name], digits)}{unit}" for name in BASELINES
                       if name in means and name != best)
    lines = [f"Strongest baseline: {LABELS[best]}, mean {spec.report} {_format(scale * means[best], digits)}{unit}"
             + (f" (other baselines: {others})." if others else ".")]
    pair = next((p for p in pairs if (p.a, p.b) == ("hybrid", best)), None)
    if pair is not None:
        diff_scale, diff_digits, diff_unit = (100.0, 2, " points") if scale != 1.0 else (1.0, 4, "")
        lines.append(f"Hybrid vs {SHORT[best]}: {diff_scale * pair.mean:+.{diff_digits}f}{diff_unit} {spec.report} on "
                     f"average over {pair.n} paired seed{'s' if pair.n != 1 else ''} (95 % interval "
                     f"[{_format(diff_scale * pair.low, diff_digits)}, {_format(diff_scale * pair.high, diff_digits)}], "
                     f"p = {_format(pair.p, 3)}): "
                     f"{VERDICT_WORDS[pair.verdict]}.")
    return "\n".join(lines)


def summary_rows(runs: Sequence[StrategyRun], spec: CompareSpec) -> list[dict[str, Any]]:
    """One row per strategy, in :data:`STRATEGIES` order (see the module docstring)."""
    rows = []
    for strategy in strategies(spec):
        mine = [run for run in runs if run.strategy == strategy]
        finals = [final_incumbent(run, spec) for run in mine]
        report = [f.get(spec.report, math.nan) if f else math.nan for f in finals]
        val = [f.get(spec.metric, math.nan) if f else math.nan for f in finals]
        epochs = [sum(r["t"] <= spec.budget_s for r in run.records) for run in mine]
        rows.append({"strategy": strategy, "seeds": len(mine),
                     f"{spec.report}_mean": _mean(report), f"{spec.report}_std": _std(report),
                     f"{spec.metric}_mean": _mean(val), f"{spec.metric}_std": _std(val),
                     "wall_s": _mean([run.wall_s for run in mine]), "trials": _mean([run.trials for run in mine]),
                     "guided": _mean([run.guided for run in mine]), "epochs": _mean(epochs), "per_seed": report})
    return rows


def markdown_table(rows: Sequence[dict[str, Any]], spec: CompareSpec) -> str:
    """The table of :func:`summary_rows` in Markdown (accuracies in %)."""
    percent = spec.report.endswith("acc")
    scale, digits = (100.0, 1) if percent else (1.0, 3)
    val_scale, val_digits = (100.0, 1) if spec.metric.endswith("acc") else (1.0, 3)
    unit = " %" if percent else ""
    lines = [f"| strategy | {spec.report}{unit} (mean ± std) | {spec.metric} of the pick | wall s | trials | "
             f"model-guided trials | epochs in budget | {spec.report} per seed |",
             "|---|---|---|---|---|---|---|---|"]
    for row in rows:
        per_seed = ", ".join(_format(scale * v, digits) for v in row["per_seed"])
        lines.append(
            f"| {LABELS[row['strategy']]} "
            f"| {_pm(row[f'{spec.report}_mean'], row[f'{spec.report}_std'], scale, digits)} "
            f"| {_pm(row[f'{spec.metric}_mean'], row[f'{spec.metric}_std'], val_scale, val_digits)} "
            f"| {row['wall_s']:.0f} | {row['trials']:.1f} | {row['guided']:.1f} | {row['epochs']:.0f} | {per_seed} |")
    return "\n".join(lines)


def pairs_table(pairs: Sequence[Paired], spec: CompareSpec) -> str:
    """The paired differences of :func:`paired_rows` in Markdown (accuracies in points)."""
    scale, digits = (100.0, 2) if spec.report.endswith("acc") else (1.0, 4)
    unit = " (points)" if scale != 1.0 else ""
    better = "higher" if spec.report_mode == "max" else "lower"
    lines = [f"| A vs B | seeds | mean {spec.report} A − B{unit} | 95 % interval | t | p (paired t-test) | "
             f"verdict for A at 5 % ({better} is better) |",
             "|---|---|---|---|---|---|---|"]
    for pair in pairs:
        lines.append(f"| {SHORT[pair.a]} vs {SHORT[pair.b]} | {pair.n} | {_format(scale * pair.mean, digits)} "
                     f"| [{_format(scale * pair.low, digits)}, {_format(scale * pair.high, digits)}] "
                     f"| {pair.t:.2f} | {_format(pair.p, 3)} | {pair.verdict} |")
    return "\n".join(lines)


def summarize(runs: Sequence[StrategyRun], spec: CompareSpec) -> dict[str, Any]:
    """``{"rows", "strongest_baseline", "pairs", "table"}`` of ``runs``: :func:`summary_rows`, the
    :func:`strongest_baseline`, the :func:`paired_rows` led by it and table.md's :func:`report_markdown`."""
    rows = summary_rows(runs, spec)
    baseline = strongest_baseline(rows, spec)
    pairs = paired_rows(runs, spec, first_against=baseline)
    return {"rows": rows, "strongest_baseline": baseline, "pairs": pairs, "table": report_markdown(rows, pairs, spec)}


def report_markdown(rows: Sequence[dict[str, Any]], pairs: Sequence[Paired], spec: CompareSpec) -> str:
    """table.md: the :func:`headline` (the hybrid against the strongest baseline), the strategies'
    table, the paired differences and, when a search's model suggested fewer than
    :data:`MIN_GUIDED` trials on average, a note saying so."""
    parts = [headline(rows, pairs, spec), "", markdown_table(rows, spec), "", pairs_table(pairs, spec)]
    few = [SHORT[row["strategy"]] for row in rows if row["strategy"] in TPE_SEARCHES
           and row["guided"] < MIN_GUIDED]
    if few:
        parts += ["", f"Note: {', '.join(few)} had fewer than {MIN_GUIDED} model-guided trials on average; "
                      "their search was mostly random (raise budget_s or lower startup_trials)."]
    return "\n".join(parts)


def _pm(mean: float, std: float, scale: float, digits: int) -> str:
    return f"{_format(scale * mean, digits)} ± {_format(scale * std, digits)}"


def _format(value: float, digits: int) -> str:
    return f"{value:.{digits}f}" if math.isfinite(value) else "nan"


def _mean(values: Sequence[float]) -> float:
    return statistics.fmean(values) if values else math.nan


def _std(values: Sequence[float]) -> float:
    """Sample standard deviation; 0 for a single value, NaN when any value is NaN."""
    if any(isinstance(v, float) and math.isnan(v) for v in values):
        return math.nan
    return statistics.stdev(values) if len(values) > 1 else 0.0
