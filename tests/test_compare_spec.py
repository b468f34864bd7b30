"""Comparison files: the shipped ones load; bad ones fail with one line naming the field."""
from pathlib import Path

import pytest
import yaml

from hybrid_hpo import cli
from hybrid_hpo.compare.spec import load_compare_spec, validate_compare_spec
from hybrid_hpo.errors import ConfigError
from hybrid_hpo.tune.spec import task_settings

SEARCHES = Path(__file__).resolve().parents[1] / "searches"
GOOD = {
    "task": {"dataset": "digits", "train_size": 100, "model": "mlp", "hidden": [16]},
    "budget_s": 10,
    "strategies": {
        "bo_only": {"settings": {"family": "fixed"},
                    "search": {"inner_lr": {"type": "loguniform", "low": 0.01, "high": 0.3}}},
        "ift_defaults": {"settings": {"family": "weight_decay"}},
        "hybrid": {"settings": {"family": "weight_decay"},
                   "search": {"hyper_lr": {"type": "loguniform", "low": 0.001, "high": 0.1}}},
    },
}


def _with(path: str, value):
    raw = yaml.safe_load(yaml.safe_dump(GOOD))
    *parents, last = path.replace("solver.", "solver:").split(".")  # solver.<option> is one key
    parents, last = [p.replace(":", ".") for p in parents], last.replace("solver:", "solver.")
    node = raw
    for part in parents:
        node = node.setdefault(part, {})
    node[last] = value
    return raw


@pytest.mark.parametrize("path", sorted(SEARCHES.glob("compare_*.yaml")), ids=lambda p: p.name)
def test_shipped_comparisons_load_with_their_sweepable_strategies(path):
    from hybrid_hpo.config import RunConfig
    from hybrid_hpo.hyper.fixed import _decayed_count
    from hybrid_hpo.models import has_dropout_sites

    spec = load_compare_spec(path)
    assert spec.name == path.stem.replace("_", "-") and len(spec.seeds) >= 5 and spec.budget_s > 0
    assert spec.sweep_spec("pbt", seed=2).scheduler == "pbt"  # every shipped comparison has a PBT strategy
    assert spec.sweep_spec("bo_asha", seed=2).scheduler == "asha"  # and BO + ASHA
    # the baselines search one decay per weight tensor of the model (biases undecayed) and dropout where
    # the model has dropout sites; on imbalanced data also the class weights' power (the diabetes task's
    # factory builds an MLP of its `hidden` widths with dropout sites, as the built-in mlp)
    config = RunConfig.from_mapping(spec.run_settings("bo_only", 0))
    layers = [f"layer_decay.{k}" for k in range(_decayed_count(config.model, len(config.hidden)))]
    dropout = ["fixed_dropout"] if has_dropout_sites(config.model) else []
    for baseline in ("bo_only", "bo_asha"):
        search = spec.strategies[baseline].search
        assert set(layers + dropout) <= set(search) and spec.strategies[baseline].settings["fixed_decay"] == 0
        assert not [key for key in search if key.startswith("layer_decay.") and key not in layers]
        assert ("class_weight_power" in search) == ("imbalance" in spec.task)
    assert spec.strategies["bo_asha"].search == spec.strategies["bo_only"].search
    for strategy in ("bo_only", "bo_asha", "hybrid", "pbt"):
        sweep = spec.sweep_spec(strategy, seed=2)
        assert sweep.time_budget_s == spec.budget_s and sweep.task["seed"] == 2 and sweep.seed == 2
        shared = task_settings(spec.task)  # a task factory's file made absolute
        assert {k: v for k, v in sweep.task.items() if k in shared} == shared  # same data split


@pytest.mark.parametrize("path, value, message", [
    ("strategies.hybrid.settings.val_fraction", 0.3,
     "strategies.hybrid.settings.val_fraction: val_fraction decides the data split"),
    ("strategies.bo_only.search.train_size", {"type": "int", "low": 10, "high": 50},
     "strategies.bo_only.search.train_size: train_size decides the data split"),
    ("strategies.bo_only.settings.family", "weight_decay",
     "strategies.bo_only.settings.family: 'weight_decay' has hyperparameters tuned by hypergradient"),
    ("strategies.hybrid.settings.family", "fixed", "strategies.hybrid.settings.family: 'fixed' has no hyperparameters"),
    ("strategies.ift_defaults.search", {"inner_lr": {"type": "uniform", "low": 0.01, "high": 0.1}},
     "strategies.ift_defaults.search: ift_defaults is one run"),
    ("strategies.hybrid.search", {}, "strategies.hybrid.search: is empty"),
    ("strategies.hybrid.population", 4, "strategies.hybrid.population: only the pbt strategy has a population"),
    ("strategies.bo_only.asha", {"grace_period": 2}, "strategies.bo_only.asha: only the bo_asha strategy has an asha"),
    ("strategies.bo_asha", {"settings": {"family": "weight_decay"}, "search": {"inner_lr": {"type": "uniform", "low": 0.01, "high": 0.1}}},
     "strategies.bo_asha.settings.family: 'weight_decay' has hyperparameters tuned by hypergradient"),
    ("strategies.bo_asha", {"settings": {"family": "fixed"}, "search": {"inner_lr": {"type": "uniform", "low": 0.01, "high": 0.1}},
                            "asha": {"reduction_factor": 1}}, "strategies.bo_asha.asha.reduction_factor: Input should be greater than 1"),
    ("strategies.bo_only.search", {"layer_decay.0": {"type": "loguniform", "low": 1e-5, "high": 0.1},
                                   "layer_decay.2": {"type": "loguniform", "low": 1e-5, "high": 0.1}},
     "strategies.bo_only.search.layer_decay.1: missing; give every item layer_decay.0 to layer_decay.2"),
    ("strategies.bo_only.search", {"layer_decay.0": {"type": "loguniform", "low": 1e-5, "high": 0.1}},
     "strategies.bo_only.search.layer_decay: 1 decays given, but 'mlp' (hidden [16]) has 2 weight tensors"),
    ("strategies.bo_only.search", {"class_weight_power": {"type": "uniform", "low": 0.0, "high": 1.5}},
     "strategies.bo_only.search.class_weight_power: must be a number >= 0 and <= 1 (got 1.5)"),
    ("strategies.hybrid.settingz", {}, "strategies.hybrid.settingz: unknown key; did you mean 'settings'?"),
    ("strategies.hybrid.search.hyper_lr.hi", 1, "strategies.hybrid.search.hyper_lr.hi: unknown key; did you mean 'high'?"),
    ("strategies.hybrid.search.hyper_lr.low", -1.0, "strategies.hybrid.search.hyper_lr"),
    ("strategies.hybrid.search.solver.terms", {"type": "int", "low": -3, "high": 2},
     "strategies.hybrid.search.solver.terms: must be an integer >= 0"),
    ("task.seed", 3, "task.seed: the replicates' seeds come from seeds"),
    ("task.hiden", [3], "task.hiden: unknown setting; did you mean 'hidden'?"),
    ("metric", "test_acc", "metric: 'test_acc' cannot select models"),
    ("seeds", [1, 1], "seeds: must be distinct"),
    ("budget_s", 0, "budget_s: Input should be greater than 0"),
    ("strategies.hybrid.settings.inner_lr", -1, "strategies.hybrid: inner_lr must be a number > 0"),
])
def test_bad_comparison_fails_with_the_field(path, value, message):
    with pytest.raises(ConfigError) as caught:
        validate_compare_spec(_with(path, value), source="c.yaml")
    assert str(caught.value).startswith("c.yaml: ") and message in str(caught.value), str(caught.value)
    assert "\n" not in str(caught.value)


def test_missing_strategy_is_named():
    raw = _with("strategies", {k: v for k, v in GOOD["strategies"].items() if k != "ift_defaults"})
    with pytest.raises(ConfigError, match="strategies: ift_defaults is missing"):
        validate_compare_spec(raw)


def test_cli_bad_comparison_exit_2_writes_nothing(tmp_path, capsys):
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(_with("strategies.hybrid.settings.imbalance", 5)))
    results = tmp_path / "out"
    assert cli.main(["compare", str(tmp_path / "c.yaml"), "--results-dir", str(results)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("hybrid-hpo compare: error: ") and "imbalance decides the data split" in err
    assert len(err.splitlines()) == 1 and not results.exists()


def test_a_sweep_file_is_pointed_to_the_sweep_command(capsys):
    quickstart = SEARCHES / "quickstart.yaml"
    assert cli.main(["compare", str(quickstart)]) == 2
    assert f"is a sweep file; run hybrid-hpo sweep {quickstart}" in capsys.readouterr().err


def test_cli_override_budget_is_validated(tmp_path, capsys):
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(GOOD))
    assert cli.main(["compare", str(tmp_path / "c.yaml"), "--budget-s", "-5", "--results-dir", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "with the command-line options: budget_s: Input should be greater than 0" in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "o").exists()


def test_with_changes_applies_command_line_changes_and_validates_them_again():
    from hybrid_hpo.compare.spec import with_changes

    spec = validate_compare_spec(GOOD, default_name="c")
    assert with_changes(spec, "cli") is spec
    changed = with_changes(spec, "cli", task={"dataset": "mnist1d"}, budget_s=30, seeds=[4], warm_start=True)
    assert changed.task == {**GOOD["task"], "dataset": "mnist1d"} and changed.budget_s == 30 and changed.seeds == [4]
    assert [changed.strategies[s].warm_start for s in ("bo_only", "ift_defaults", "hybrid")] == [True, False, True]
    assert changed.name == spec.name
    with pytest.raises(ConfigError, match="^cli: seeds: must be distinct"):
        with_changes(spec, "cli", seeds=[1, 1])


def test_a_spec_with_bo_asha_builds_an_asha_sweep_of_the_baseline_family(tmp_path):
    from ray.tune.schedulers import AsyncHyperBandScheduler

    from hybrid_hpo.objective import best_key
    from hybrid_hpo.tune.plan import plan_sweep
    from hybrid_hpo.tune.search import make_search
    from hybrid_hpo.tune.sweep import _tune_config

    space = {"inner_lr": {"type": "loguniform", "low": 0.01, "high": 0.3},
             "layer_decay.0": {"type": "loguniform", "low": 1e-6, "high": 0.1},
             "layer_decay.1": {"type": "loguniform", "low": 1e-6, "high": 0.1}}
    raw = _with("strategies.bo_asha", {"settings": {"family": "fixed", "fixed_decay": 0, "epochs": 20}, "search": space,
                                       "asha": {"grace_period": 3, "reduction_factor": 3}})
    spec = validate_compare_spec(raw)
    sweep = spec.sweep_spec("bo_asha", seed=1)
    assert sweep.scheduler == "asha" and (sweep.asha.grace_period, sweep.asha.reduction_factor) == (3, 3.0)
    assert sweep.time_budget_s == spec.budget_s and sweep.startup_trials == 5 and set(sweep.search) == set(space)
    assert spec.sweep_spec("bo_only", seed=1).scheduler == "fifo"
    storage = f"sqlite:///{tmp_path}/optuna.sqlite3"
    plan = plan_sweep(sweep, storage=storage, results_dir=tmp_path / "bo_asha-seed1")
    searcher = make_search(sweep.search, best_key(sweep.metric), sweep.mode, storage=storage, study_name=plan.study_name)
    scheduler = _tune_config(sweep, plan, searcher).scheduler
    assert isinstance(scheduler, AsyncHyperBandScheduler) and scheduler._max_t == 20  # ASHA over the epochs
    assert sorted(milestone for milestone, _ in scheduler._brackets[0]._rungs) == [3, 9]  # 3 · 3^k < 20


def test_warm_start_puts_unset_layer_decays_at_the_default_decay():
    from hybrid_hpo.compare.spec import with_changes
    from hybrid_hpo.hyper.penalty import FIXED_DECAY

    space = {"layer_decay.0": {"type": "loguniform", "low": 1e-6, "high": 0.1},
             "layer_decay.1": {"type": "loguniform", "low": 1e-6, "high": 0.1},
             "class_weight_power": {"type": "uniform", "low": 0.0, "high": 1.0}}
    spec = validate_compare_spec(_with("strategies.bo_only", {"settings": {"family": "fixed", "fixed_decay": 0},
                                                              "search": space}))
    warm = with_changes(spec, "cli", warm_start=True).sweep_spec("bo_only", seed=0)
    assert warm.initial_points == [{"layer_decay.0": FIXED_DECAY, "layer_decay.1": FIXED_DECAY, "class_weight_power": 0.0}]
