"""Paired statistics of a comparison: strategy A against strategy B over the same seeds.

Each seed is one replicate (the same data split, initialisation and sampler seed for every
strategy), so the right test compares per-seed differences d_s = x_A(s) − x_B(s) of the reported
test metric, over the n seeds where both strategies delivered a finite value:

    mean  d̄ = Σ d_s / n,   sd  s_d = sqrt(Σ (d_s − d̄)² / (n − 1)),   se = s_d / sqrt(n)
    t = d̄ / se  with n − 1 degrees of freedom (the paired t-test, = scipy.stats.ttest_rel)
    95 % interval  d̄ ± t_{0.975, n−1} · se,   two-sided p = 2 · P(T_{n−1} > |t|)

Verdict at the 5 % level, from A's side and in the metric's direction (higher is better for
accuracies, lower for losses): "win" when p < 0.05 and A is better on average, "loss" when p < 0.05
and A is worse, else "tie"; fewer than 2 paired seeds give "n/a".

Identical differences (s_d = 0, common with accuracies on a small test set: a difference is a
multiple of 1/N_test) leave the t-test undefined (t = ±inf). Then p is the exact two-sided sign
test's, 2 · 0.5ⁿ (all n differences share a sign), so 2 seeds that agree give p = 0.5 and it takes
6 to reach p < 0.05; the interval is the single value d̄. All differences 0: t = 0, p = 1.
"""
from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass

LEVEL = 0.05


@dataclass(frozen=True)
class Paired:
    """A − B over paired seeds (module docstring); values NaN when n < 2."""

    a: str
    b: str
    n: int
    mean: float
    low: float
    high: float
    t: float
    p: float
    verdict: str

    def as_dict(self) -> dict:
        return asdict(self)


def paired_test(a: str, b: str, values_a: Sequence[float], values_b: Sequence[float], higher_is_better: bool) -> Paired:
    """The paired comparison of ``a`` and ``b`` (per-seed values in the same seed order; pairs with
    a non-finite value are dropped)."""
    from scipy import stats

    diffs = [x - y for x, y in zip(values_a, values_b, strict=True) if math.isfinite(x) and math.isfinite(y)]
    n = len(diffs)
    if n < 2:
        mean = diffs[0] if diffs else math.nan
        return Paired(a, b, n, mean, math.nan, math.nan, math.nan, math.nan, "n/a")
    mean, sd = statistics.fmean(diffs), statistics.stdev(diffs)
    se = sd / math.sqrt(n)
    if se == 0.0:
        t = 0.0 if mean == 0.0 else math.copysign(math.inf, mean)
        p = 1.0 if mean == 0.0 else min(1.0, 2.0 * 0.5 ** n)  # the sign test (module docstring)
    else:
        t = mean / se
        p = float(2.0 * stats.t.sf(abs(t), n - 1))
    half = float(stats.t.ppf(1.0 - LEVEL / 2.0, n - 1)) * se
    better = mean > 0 if higher_is_better else mean < 0
    verdict = "tie" if not p < LEVEL else ("win" if better else "loss")
    return Paired(a, b, n, mean, mean - half, mean + half, t, p, verdict)
