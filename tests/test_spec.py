"""Sweep files: shipped specs are valid; bad ones give one line, exit 2, and create nothing."""
from __future__ import annotations

from pathlib import Path

import pytest

from hybrid_hpo import cli
from hybrid_hpo.errors import ConfigError
from hybrid_hpo.implicit import SOLVERS
from hybrid_hpo.tune.spec import load_spec

SEARCHES = Path(__file__).resolve().parents[1] / "searches"
GOOD_SEARCH = "search:\n  inner_lr: {type: loguniform, low: 1.0e-2, high: 0.3}\n"

BAD_SPECS = {
    "malformed_yaml": ("search: {inner_lr: [\n", "invalid YAML at line"),
    "unknown_top_key": ("serach: {}\n" + GOOD_SEARCH, "serach: unknown key; did you mean 'search'?"),
    "unknown_setting": ("inner: {inner_lrr: 0.1}\n" + GOOD_SEARCH, "inner.inner_lrr: unknown setting"),
    "unknown_dist_key": ("search:\n  inner_lr: {type: loguniform, low: 0.01, hihg: 0.3}\n",
                         "search.inner_lr.hihg: unknown key"),
    "inverted_range": ("search:\n  inner_lr: {type: loguniform, low: 0.1, high: 0.01}\n",
                       "search.inner_lr: low (0.1) must be < high (0.01); swap them"),
    "empty_range": ("search:\n  solver.terms: {type: int, low: 3, high: 3}\n", "search.solver.terms: empty range"),
    "unknown_dataset": ("task: {dataset: imagenet}\n" + GOOD_SEARCH, "task.dataset: unknown value 'imagenet'"),
    "unknown_solver": ("solver: {name: lbfgs}\n" + GOOD_SEARCH, "solver.name: unknown value 'lbfgs'"),
    "zero_trials": ("num_trials: 0\n" + GOOD_SEARCH, "num_trials:"),
    "wrong_type": ("max_concurrent: two\n" + GOOD_SEARCH, "max_concurrent: Input should be a valid integer"),
    "wrong_setting_type": ("inner: {epochs: many}\n" + GOOD_SEARCH, "inner.epochs: must be an integer"),
    "bad_corner": ("search:\n  val_fraction: {type: uniform, low: 0.5, high: 1.0}\n",
                   "search.val_fraction: must be strictly between 0 and 1 (got 1.0)"),
    "searched_and_fixed": ("inner: {inner_lr: 0.1}\n" + GOOD_SEARCH, "search.inner_lr: also fixed in inner.inner_lr"),
    "test_metric": ("metric: test_acc\nmode: max\n" + GOOD_SEARCH, "metric: test_acc would tune on the test set"),
    "no_search": ("num_trials: 2\n", "search: required key is missing"),
    "initial_point_not_searched": ("initial_points: [{hyper_lr: 0.1}]\n" + GOOD_SEARCH,
                                   "initial_points[0].hyper_lr: not a searched setting"),
    "initial_point_outside": ("initial_points: [{inner_lr: 0.5}]\n" + GOOD_SEARCH,
                              "initial_points[0].inner_lr: 0.5 is outside search.inner_lr"),
    "zero_time_budget": ("time_budget_s: 0\n" + GOOD_SEARCH, "time_budget_s: Input should be greater than 0"),
    "comparison_file": ("budget_s: 60\nstrategies: {}\n", "is a comparison file; run hybrid-hpo compare spec.yaml"),
}


@pytest.mark.parametrize("name", sorted(BAD_SPECS))
def test_bad_spec_is_one_line_exit_2_and_writes_nothing(name, tmp_path, monkeypatch, capsys):
    text, expected = BAD_SPECS[name]
    (tmp_path / "spec.yaml").write_text(text)
    monkeypatch.chdir(tmp_path)  # the default results dir would be ./results
    code = cli.main(["sweep", "spec.yaml", "--storage", f"sqlite:///{tmp_path}/study.db"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("hybrid-hpo sweep: error: spec.yaml: ") and err.count("\n") == 1, err
    assert expected in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["spec.yaml"]  # no results/, no study.db


def test_bad_num_samples_flag_exit_2(tmp_path, monkeypatch, capsys):
    (tmp_path / "spec.yaml").write_text(GOOD_SEARCH)
    monkeypatch.chdir(tmp_path)
    assert cli.main(["sweep", "spec.yaml", "--num-samples", "0"]) == 2
    assert "--num-samples: must be >= 1 (got 0)" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["spec.yaml"]


def test_resume_without_a_previous_sweep_exit_2(tmp_path, monkeypatch, capsys):
    (tmp_path / "spec.yaml").write_text(GOOD_SEARCH)
    monkeypatch.chdir(tmp_path)
    assert cli.main(["sweep", "spec.yaml", "--resume"]) == 2
    assert "--resume: no sweep of 'spec' under results/" in capsys.readouterr().err


@pytest.mark.parametrize("path", sorted(p for p in SEARCHES.glob("*.yaml") if not p.name.startswith("compare_")),
                         ids=lambda p: p.name)
def test_shipped_specs_are_valid(path):
    spec = load_spec(path)
    objective = ("sel_mae", "min") if path.name == "own_task.yaml" else ("sel_loss", "min")  # own task: its metric
    assert spec.search and spec.num_trials >= 1 and (spec.metric, spec.mode) == objective


def test_one_spec_per_solver_exact_only_on_logreg():
    for solver in SOLVERS:
        fixed = load_spec(SEARCHES / f"solver_{solver}.yaml").fixed_settings()
        assert fixed["solver"] == solver
        assert (fixed["model"] == "logreg") == (solver == "exact")


def test_quickstart_tunes_over_100k_hyperparameters_with_neumann():
    from hybrid_hpo.bilevel import BilevelTrainer
    from hybrid_hpo.config import RunConfig

    spec = load_spec(SEARCHES / "quickstart.yaml")
    assert spec.num_trials >= 8 and spec.max_concurrent == 2
    label, values = spec.sample_configs()[0]
    config = RunConfig.from_mapping(values)
    assert (config.dataset, config.model, config.solver, config.family_options["granularity"]) == \
        ("digits", "mlp", "neumann", "per_weight")
    trainer = BilevelTrainer(config, device="cpu")
    assert trainer.family.num_hparams > 100_000


def test_yaml_exponent_without_dot_is_a_float(tmp_path):
    (tmp_path / "s.yaml").write_text("search:\n  inner_lr: {type: loguniform, low: 1e-3, high: 3e-1}\n")
    dist = load_spec(tmp_path / "s.yaml").search["inner_lr"]
    assert (dist.low, dist.high) == (0.001, 0.3)


def test_fixed_sections_merge_and_solver_name_maps_to_solver(tmp_path):
    (tmp_path / "s.yaml").write_text("task: {hidden: [32]}\ninner: {epochs: 2}\nsolver: {name: cg, max_iter: 4}\n"
                                     + GOOD_SEARCH)
    spec = load_spec(tmp_path / "s.yaml")
    assert spec.fixed_settings() == {"hidden": [32], "epochs": 2, "solver": "cg", "solver.max_iter": 4}
    assert spec.name == "s"


def test_missing_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot read the spec file"):
        load_spec(tmp_path / "nope.yaml")


def test_distributions_contain_exactly_what_they_can_sample():
    from hybrid_hpo.tune.distributions import Choice, IntRange, LogUniform, Uniform

    assert LogUniform(low=1e-3, high=0.1).contains(0.1) and not LogUniform(low=1e-3, high=0.1).contains(0.2)
    assert Uniform(low=0.0, high=0.7).contains(0) and not Uniform(low=0.0, high=0.7).contains("0.5")
    assert IntRange(low=1, high=10).contains(5) and not IntRange(low=1, high=10).contains(5.5)
    assert not IntRange(low=0, high=10).contains(True)  # a bool is not a count
    assert Choice(values=["sgd", 1]).contains("sgd") and not Choice(values=["sgd", 1]).contains(1.0)
