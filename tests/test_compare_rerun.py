"""A rerun of some strategies (`hybrid-hpo compare --strategies`) and reading it over the comparison
it redoes (hybrid_hpo.compare.saved): only the named strategies run, compare.json says which,
a later file's run replaces the same strategy and seed, and comparisons judged differently do
not merge. The strategies' runs are stand-ins here (no Ray): what is tested is which of them run
and how their records are read back; tests/test_compare_run.py runs them for real."""
import json
import math

import pytest
import ray
import yaml

from hybrid_hpo import cli
from hybrid_hpo.compare import run as compare_run
from hybrid_hpo.compare.comparison import compare
from hybrid_hpo.compare.run import StrategyRun
from hybrid_hpo.compare.saved import load_comparison, merge_comparisons
from hybrid_hpo.compare.spec import validate_compare_spec
from hybrid_hpo.compare.summary import per_seed, summarize
from hybrid_hpo.errors import ConfigError
from test_compare_spec import GOOD

PBT = {"settings": {"family": "weight_decay"}, "population": 2,
       "search": {"hyper_lr": {"type": "loguniform", "low": 0.001, "high": 0.1}}}
SPEC = validate_compare_spec({**GOOD, "name": "rerun", "seeds": [0, 1],
                              "strategies": {**GOOD["strategies"], "pbt": PBT}})


@pytest.fixture
def stand_in_runs(monkeypatch):
    """Each strategy's run is one record whose test_acc encodes (strategy, seed, call number);
    returns the list of (strategy, seed) that ran, in order."""
    calls = []

    def fake(strategy, seed):
        calls.append((strategy, seed))
        test = 0.5 + 0.01 * len(calls)
        return StrategyRun(strategy, seed, 1.0, 1, [{"t": 0.5, "trial": "0", "epoch": 1, "sel_loss": 1.0 - test,
                                                      "val_loss": 1.0 - test, "test_acc": test}])

    monkeypatch.setattr(ray, "is_initialized", lambda: True)  # no Ray is started or shut down
    monkeypatch.setattr(compare_run, "run_search", lambda spec, strategy, seed, *args: fake(strategy, seed))
    monkeypatch.setattr(compare_run, "run_single", lambda spec, seed, *args: fake("ift_defaults", seed))
    return calls


def test_only_keeps_the_named_strategies_in_the_files_order_and_names_an_unknown_one():
    assert list(SPEC.only(["pbt", "bo_only"]).strategies) == ["bo_only", "pbt"]
    assert SPEC.only(None) is SPEC
    with pytest.raises(ConfigError, match=r"^--strategies: bo_asha is not a strategy of rerun; name one or more "
                                          r"of bo_only, ift_defaults, hybrid, pbt$"):
        SPEC.only(["pbt", "bo_asha"])


def test_cli_unknown_strategy_exit_2_writes_nothing(tmp_path, capsys):
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(GOOD))
    out = tmp_path / "out"
    assert cli.main(["compare", str(tmp_path / "c.yaml"), "--strategies", "pbt", "--results-dir", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--strategies: pbt is not a strategy of c;" in err
    assert not out.exists()


def test_a_rerun_runs_only_its_strategies_and_reads_back_over_the_full_comparison(tmp_path, stand_in_runs):
    full = compare(SPEC, tmp_path / "full")
    assert sorted(stand_in_runs) == sorted((s, seed) for s in SPEC.strategies for seed in (0, 1))
    stand_in_runs.clear()
    rerun = compare(SPEC, tmp_path / "rerun", only=["pbt"])
    assert stand_in_runs == [("pbt", 0), ("pbt", 1)]  # nothing else ran
    assert [row["strategy"] for row in rerun["rows"]] == ["pbt"] and rerun["pairs"] == []
    assert rerun["table"].startswith("Strongest baseline: none ran (a rerun of PBT;")
    written = json.loads((tmp_path / "rerun" / "compare.json").read_text())
    assert written["strategies_run"] == ["pbt"] and set(written["spec"]["strategies"]) == set(SPEC.strategies)

    alone = load_comparison(tmp_path / "rerun")
    assert list(alone.spec.strategies) == ["pbt"] and [r.strategy for r in alone.runs] == ["pbt", "pbt"]
    merged = merge_comparisons([load_comparison(tmp_path / "full" / "compare.json"), alone])
    assert list(merged.spec.strategies) == list(SPEC.strategies) and merged.spec.seeds == [0, 1]
    new_pbt = [run.records[0]["test_acc"] for run in rerun["runs"]]
    assert per_seed(merged.runs, merged.spec, "pbt") == new_pbt  # the rerun's picks replace the old ones
    for strategy in ("bo_only", "ift_defaults", "hybrid"):  # the others are the full comparison's
        assert per_seed(merged.runs, merged.spec, strategy) == per_seed(full["runs"], SPEC, strategy)
    table = summarize(merged.runs, merged.spec)
    pbt_vs_hybrid = next(p for p in table["pairs"] if (p.a, p.b) == ("pbt", "hybrid"))
    hybrid = per_seed(full["runs"], SPEC, "hybrid")
    assert math.isclose(pbt_vs_hybrid.mean, sum(n - h for n, h in zip(new_pbt, hybrid)) / 2)


def test_comparisons_judged_differently_do_not_merge(tmp_path, stand_in_runs):
    compare(SPEC, tmp_path / "a", only=["hybrid"])
    longer = validate_compare_spec({**SPEC.model_dump(mode="json", exclude_unset=True), "budget_s": 20})
    compare(longer, tmp_path / "b", only=["pbt"])
    with pytest.raises(ConfigError, match=r"^b: budget_s is 20.0 but a has 10.0; merge only comparisons of the "
                                          r"same task, budget and judge$"):
        merge_comparisons([load_comparison(tmp_path / "a"), load_comparison(tmp_path / "b")], ["a", "b"])


def test_a_file_that_is_not_a_comparison_is_named(tmp_path):
    (tmp_path / "compare.json").write_text('{"rows": []}')
    with pytest.raises(ConfigError, match=r"compare.json: not a comparison's compare.json \(KeyError"):
        load_comparison(tmp_path)
    (tmp_path / "compare.json").write_text("not json")
    with pytest.raises(ConfigError, match=r"compare.json: not a comparison's compare.json \(JSONDecodeError"):
        load_comparison(tmp_path)
