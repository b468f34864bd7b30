"""The selection rule and the table: best validation within the budget, NaN-safe, same for all."""
import math

from hybrid_hpo.compare.run import StrategyRun, rotated
from hybrid_hpo.compare.spec import validate_compare_spec
from hybrid_hpo.compare.summary import final_incumbent, incumbent_at, incumbents, markdown_table, summary_rows
from test_compare_spec import GOOD

SPEC = validate_compare_spec({**GOOD, "budget_s": 10, "seeds": [0, 1]})


def _r(t, val, test, trial="a"):
    return {"t": t, "trial": trial, "epoch": 1, "sel_loss": val, "test_acc": test}


def test_incumbents_follow_best_validation_and_ignore_nan_and_late_records():
    records = [_r(1, 0.9, 0.50), _r(2, math.nan, 0.99), _r(3, 0.5, 0.70, "b"), _r(4, 0.6, 0.95),
               _r(5, math.inf, 0.99), _r(6, 0.4, 0.80), _r(11, 0.1, 0.99), _r(math.nan, 0.01, 0.99)]
    chain = incumbents(records, "sel_loss", "min", budget_s=10)
    assert [r["test_acc"] for r in chain] == [0.50, 0.70, 0.80]  # never NaN/inf, never after t=10 or at no time
    assert incumbent_at(chain, 0.5, "test_acc") != incumbent_at(chain, 0.5, "test_acc")  # NaN before any record
    assert incumbent_at(chain, 4.9, "test_acc") == 0.70
    maximise = incumbents([_r(1, 0.2, 0.1), _r(2, 0.8, 0.9), _r(3, 0.5, 0.5)], "sel_loss", "max", budget_s=10)
    assert [r["test_acc"] for r in maximise] == [0.1, 0.9]


def test_summary_rows_mean_std_and_nan_for_a_strategy_without_results():
    runs = [StrategyRun("bo_only", 0, 9.0, 4, [_r(1, 0.3, 0.80), _r(2, 0.2, 0.90)]),
            StrategyRun("bo_only", 1, 11.0, 6, [_r(1, 0.25, 0.70)]),
            StrategyRun("ift_defaults", 0, 3.0, 1, [_r(1, math.nan, 0.99)]),
            StrategyRun("ift_defaults", 1, 3.0, 1, [_r(1, 0.5, 0.60)]),
            StrategyRun("hybrid", 0, 10.0, 2, [_r(1, 0.1, 0.95)]),
            StrategyRun("hybrid", 1, 10.0, 2, [_r(12, 0.1, 0.95), _r(9, 0.3, 0.85)])]
    rows = {row["strategy"]: row for row in summary_rows(runs, SPEC)}
    assert list(rows) == ["bo_only", "ift_defaults", "hybrid"]
    assert math.isclose(rows["bo_only"]["test_acc_mean"], 0.80)
    assert math.isclose(rows["bo_only"]["test_acc_std"], math.sqrt(0.02))  # sample std of 0.9, 0.7
    assert rows["bo_only"]["wall_s"] == 10.0 and rows["bo_only"]["trials"] == 5.0
    assert math.isnan(rows["ift_defaults"]["test_acc_mean"])  # seed 0 never had a finite validation loss
    assert rows["hybrid"]["per_seed"] == [0.95, 0.85] and rows["hybrid"]["epochs"] == 1.0
    assert final_incumbent(runs[2], SPEC) is None
    table = markdown_table(list(rows.values()), SPEC).splitlines()
    assert len(table) == 5 and table[2].startswith("| BO-only") and "80.0 ± 14.1" in table[2]
    assert "| nan ± nan |" in table[3] and "| 90.0 ± 7.1 |" in table[4]


def test_strategy_order_rotates_with_the_seed():
    names = ("bo_only", "ift_defaults", "hybrid")
    assert rotated(names, 0) == names and rotated(names, 1) == ("ift_defaults", "hybrid", "bo_only")
    assert rotated(names, 4) == rotated(names, 1)


def test_paired_test_matches_scipy_ttest_rel_and_a_hand_computed_interval():
    from scipy import stats

    from hybrid_hpo.compare.stats import paired_test

    a, b = [0.91, 0.88, 0.93, 0.90, 0.87], [0.89, 0.88, 0.90, 0.86, 0.86]
    pair = paired_test("hybrid", "bo_only", a, b, higher_is_better=True)
    reference = stats.ttest_rel(a, b)
    assert pair.n == 5 and math.isclose(pair.t, reference.statistic) and math.isclose(pair.p, reference.pvalue)
    # by hand: d = .02 0 .03 .04 .01, mean .02, sd sqrt(.001/4) = .0158114, se .0070711, t_.975,4 = 2.7764451
    assert math.isclose(pair.mean, 0.02) and math.isclose(pair.t, 0.02 / 0.00707107, rel_tol=1e-5)
    assert math.isclose(pair.low, 0.02 - 2.7764451 * 0.0070710678, abs_tol=1e-9)
    assert math.isclose(pair.high, 0.02 + 2.7764451 * 0.0070710678, abs_tol=1e-9)
    assert pair.p < 0.05 and pair.verdict == "win"
    assert paired_test("a", "b", b, a, higher_is_better=True).verdict == "loss"
    assert paired_test("a", "b", a, b, higher_is_better=False).verdict == "loss"  # a loss metric: higher is worse
    noisy = paired_test("a", "b", [0.9, 0.8, 0.95], [0.85, 0.9, 0.9], higher_is_better=True)
    assert noisy.p > 0.05 and noisy.verdict == "tie" and noisy.low < 0 < noisy.high


def test_paired_test_drops_unpaired_seeds_and_handles_constant_and_single_differences():
    from hybrid_hpo.compare.stats import paired_test

    dropped = paired_test("a", "b", [1.5, math.nan, 2.5, 3.5], [1.0, 0.5, 2.0, 3.0], higher_is_better=True)
    # identical differences: no spread, t = inf; p from the sign test, 2 · 0.5³
    assert dropped.n == 3 and dropped.mean == 0.5 and dropped.t == math.inf and dropped.p == 0.25
    assert dropped.verdict == "tie" and dropped.low == dropped.high == 0.5
    six = paired_test("a", "b", [0.9] * 6, [0.8] * 6, higher_is_better=True)
    assert six.p == 2 * 0.5 ** 6 and six.verdict == "win"
    same = paired_test("a", "b", [0.5, 0.6], [0.5, 0.6], higher_is_better=True)
    assert same.t == 0.0 and same.p == 1.0 and same.verdict == "tie"
    single = paired_test("a", "b", [0.5, math.nan], [0.4, 0.4], higher_is_better=True)
    assert single.n == 1 and single.verdict == "n/a" and math.isnan(single.p)


def test_pairs_are_by_seed_and_table_md_shows_interval_p_and_verdict():
    from hybrid_hpo.compare.summary import paired_rows, report_markdown

    spec = validate_compare_spec({**GOOD, "budget_s": 10, "seeds": [0, 1, 2]})
    accs = {"bo_only": [0.80, 0.70, 0.75], "ift_defaults": [0.81, 0.69, 0.76], "hybrid": [0.90, 0.81, 0.84]}
    # runs listed in another order than the seeds: pairing must follow the seed, not the list
    runs = [StrategyRun(name, seed, 1.0, 1, [_r(1, 0.1, accs[name][seed])])
            for name in accs for seed in (2, 0, 1)]
    pairs = paired_rows(runs, spec)
    assert [(p.a, p.b) for p in pairs] == [("hybrid", "ift_defaults"), ("hybrid", "bo_only"),
                                           ("ift_defaults", "bo_only")]
    hybrid_bo = pairs[1]
    assert math.isclose(hybrid_bo.mean, 0.10) and hybrid_bo.verdict == "win"
    assert pairs[2].verdict == "tie"
    text = report_markdown(summary_rows(runs, spec), pairs, spec)
    assert "| Hybrid vs BO-only | 3 | 10.00 |" in text and "| win |" in text
    assert "fewer than 10 model-guided trials" in text  # one trial per search here


def _spec_with_asha(**changes):
    raw = {**GOOD, "budget_s": 10, "seeds": [0, 1, 2], **changes}
    raw["strategies"] = {**GOOD["strategies"], "bo_asha": {**GOOD["strategies"]["bo_only"], "asha": {"grace_period": 2}}}
    return validate_compare_spec(raw)


def _runs(values, metric_key="test_acc"):
    return [StrategyRun(name, seed, 1.0, 1, [{**_r(1, 0.1, math.nan), metric_key: values[name][seed]}])
            for name in values for seed in range(len(values[name]))]


def test_the_strongest_baseline_is_the_best_mean_without_hypergradients_and_its_pair_comes_first():
    from hybrid_hpo.compare.summary import headline, paired_rows, report_markdown, strongest_baseline

    spec = _spec_with_asha()
    accs = {"bo_only": [0.80, 0.70, 0.75], "bo_asha": [0.84, 0.72, 0.80], "ift_defaults": [0.99, 0.99, 0.99],
            "hybrid": [0.90, 0.81, 0.84]}
    runs = _runs(accs)
    rows = summary_rows(runs, spec)
    assert [row["strategy"] for row in rows] == ["bo_only", "bo_asha", "ift_defaults", "hybrid"]
    assert strongest_baseline(rows, spec) == "bo_asha"  # IFT defaults is better still, but it is no baseline
    pairs = paired_rows(runs, spec, first_against="bo_asha")
    assert (pairs[0].a, pairs[0].b) == ("hybrid", "bo_asha") and len(pairs) == 6
    assert math.isclose(pairs[0].mean, (0.06 + 0.09 + 0.04) / 3)
    text = headline(rows, pairs, spec)
    assert text.startswith("Strongest baseline: BO + ASHA (TPE, weak trials stopped early, no hypergradients), "
                           "mean test_acc 78.7 % (other baselines: BO-only 75.0 %).")
    assert f"Hybrid vs BO + ASHA: +6.33 points test_acc on average over 3 paired seeds (95 % interval [" in text
    assert text.endswith(f"p = {pairs[0].p:.3f}): {'the hybrid wins at the 5 % level' if pairs[0].p < 0.05 else 'no difference at the 5 % level (a tie)'}.")
    table = report_markdown(rows, pairs, spec).splitlines()
    assert table[:2] == text.splitlines()  # table.md opens with it
    first_pair = next(line for line in table if line.startswith("| Hybrid vs") or line.startswith("| IFT defaults vs"))
    assert first_pair.startswith("| Hybrid vs BO + ASHA | 3 |")


def test_the_strongest_baseline_follows_the_metrics_direction_and_skips_nan():
    from hybrid_hpo.compare.summary import headline, strongest_baseline

    losses = {"bo_only": [0.5, 0.6, 0.7], "bo_asha": [0.9, 0.8, 0.7], "ift_defaults": [0.1, 0.1, 0.1],
              "hybrid": [0.4, 0.4, 0.4]}
    spec = _spec_with_asha(report="test_loss")
    assert strongest_baseline(summary_rows(_runs(losses, "test_loss"), spec), spec) == "bo_only"  # lower loss
    accs = {"bo_only": [0.8, math.nan, 0.8], "bo_asha": [0.7, 0.7, 0.7], "ift_defaults": [0.9] * 3, "hybrid": [0.9] * 3}
    spec = _spec_with_asha()
    assert strongest_baseline(summary_rows(_runs(accs), spec), spec) == "bo_asha"  # bo_only's mean is NaN
    tie = {"bo_only": [0.8] * 3, "bo_asha": [0.8] * 3, "ift_defaults": [0.9] * 3, "hybrid": [0.9] * 3}
    assert strongest_baseline(summary_rows(_runs(tie), spec), spec) == "bo_only"  # a tie: the first
    none = {"bo_only": [math.nan] * 3, "bo_asha": [math.nan] * 3, "ift_defaults": [0.9] * 3, "hybrid": [0.9] * 3}
    rows = summary_rows(_runs(none), spec)
    assert strongest_baseline(rows, spec) is None and headline(rows, [], spec).startswith("Strongest baseline: none")
