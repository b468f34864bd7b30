"""The comparison tasks beyond the built-ins: the diabetes regression Task of
examples/diabetes_regression.py and the direction of a metric where lower is better."""
import math
from pathlib import Path

import pytest
import torch

from hybrid_hpo.compare.run import StrategyRun
from hybrid_hpo.compare.spec import load_compare_spec, validate_compare_spec
from hybrid_hpo.compare.summary import paired_rows, report_markdown, summary_rows
from hybrid_hpo.errors import ConfigError
from hybrid_hpo.task.factory import load_factory
from test_compare_spec import GOOD

ROOT = Path(__file__).resolve().parents[1]
FACTORY = f"{ROOT / 'examples' / 'diabetes_regression.py'}:make_task"
REGRESSION = {**GOOD, "task": {"factory": FACTORY, "hidden": [8]}, "metric": "sel_loss", "report": "test_mse",
              "report_mode": "min", "seeds": [0, 1, 2]}


def test_diabetes_task_builds_and_its_loss_is_the_mean_squared_error_by_hand():
    task = load_factory(FACTORY)({"hidden": [16, 8]})
    assert len(task.data) == 354 and len(task.test) == 88 and not task.classification
    x, y = task.data.tensors[0][:32], task.data.tensors[1][:32]
    assert x.shape == (32, 10) and y.shape == (32,)
    assert abs(float(task.data.tensors[1].mean())) < 1e-5  # standardised with the pool's statistics
    with torch.no_grad():
        output = task.model(x)
    assert output.shape == (32,)
    by_hand = sum((float(output[i]) - float(y[i])) ** 2 for i in range(32)) / 32
    assert math.isclose(float(task.example_loss(output, y).mean()), by_hand, rel_tol=1e-5)
    assert math.isclose(float(torch.nn.functional.mse_loss(output, y)), by_hand, rel_tol=1e-5)
    # the reported metric is the same error in the target's units: σ_y² times the loss
    from sklearn.datasets import load_diabetes

    target = torch.tensor(load_diabetes(return_X_y=True)[1])
    pool_std = float(target[torch.tensor(_pool_rows())].std(unbiased=False))
    assert math.isclose(float(task.metrics["mse"](output, y).mean()), pool_std ** 2 * by_hand, rel_tol=1e-4)
    sites = [m for m in task.model.modules() if type(m).__name__ == "HyperDropout"]
    assert len(sites) == 2  # BO-only can search fixed_dropout


def _pool_rows():
    import numpy as np

    return np.random.RandomState(0).permutation(442)[88:]


def test_shipped_regression_comparison_reports_test_mse_lower_is_better():
    spec = load_compare_spec(ROOT / "searches" / "compare_diabetes_regression.yaml")
    assert (spec.metric, spec.mode, spec.report, spec.report_mode) == ("sel_loss", "min", "test_mse", "min")
    # the baselines decay each weight tensor of the factory's model (its own widths), and search dropout
    from hybrid_hpo.hyper.penalty import decayed_tensors

    task = load_factory(FACTORY)(spec.run_settings("bo_only", 0))
    layers = {f"layer_decay.{k}" for k in range(len(decayed_tensors(dict(task.model.named_parameters()))))}
    assert spec.sweep_spec("bo_only", 0).search.keys() == {"inner_lr", "fixed_dropout"} | layers


@pytest.mark.parametrize("changes, message", [
    ({"report_mode": None}, "report_mode: test_mse is your task's metric; say whether lower or higher is better"),
    ({"report": "test_loss", "report_mode": "max"},
     "report_mode: max of test_loss looks inverted; use report_mode: min"),
    ({"report": "test_acc", "report_mode": "min"}, "report_mode: min of test_acc looks inverted; use report_mode: max"),
])
def test_the_report_direction_is_known_or_stated(changes, message):
    raw = {key: value for key, value in {**REGRESSION, **changes}.items() if value is not None}
    with pytest.raises(ConfigError, match=message):
        validate_compare_spec(raw, source="c.yaml")


def test_the_report_direction_follows_the_selection_metric_of_the_same_name():
    spec = validate_compare_spec({**REGRESSION, "metric": "sel_mse", "mode": "min", "report_mode": None})
    assert spec.report_mode == "min"
    maximised = validate_compare_spec({**REGRESSION, "metric": "sel_r2", "mode": "max", "report": "test_r2",
                                       "report_mode": None})
    assert maximised.report_mode == "max"


def _record(sel_loss, test_mse):
    return {"t": 1.0, "trial": "a", "epoch": 1, "sel_loss": sel_loss, "test_mse": test_mse}


def test_a_summary_where_lower_is_better_gives_the_win_to_the_lower_metric():
    spec = validate_compare_spec(REGRESSION)
    mse = {"bo_only": [3400.0, 3600.0, 3300.0], "ift_defaults": [3405.0, 3590.0, 3310.0],
           "hybrid": [3000.0, 3150.0, 2950.0]}
    runs = [StrategyRun(name, seed, 1.0, 1, [_record(0.9, 9999.0), _record(0.5, mse[name][seed])])
            for name in mse for seed in (0, 1, 2)]
    rows = {row["strategy"]: row for row in summary_rows(runs, spec)}
    assert rows["hybrid"]["per_seed"] == mse["hybrid"]  # the pick: lowest sel_loss, not the other record
    assert math.isclose(rows["hybrid"]["test_mse_mean"], 3033.333333, rel_tol=1e-6)
    pairs = {(p.a, p.b): p for p in paired_rows(runs, spec)}
    hybrid_bo = pairs["hybrid", "bo_only"]
    assert hybrid_bo.mean < 0 and hybrid_bo.verdict == "win"  # lower test MSE wins
    assert pairs["ift_defaults", "bo_only"].verdict == "tie"
    text = report_markdown(list(rows.values()), list(pairs.values()), spec)
    assert "(lower is better)" in text and "| Hybrid vs BO-only | 3 | -400.0000 |" in text
    assert "3033.333 ± 104.083" in text  # not scaled to % like an accuracy
