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
