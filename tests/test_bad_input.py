"""The README's bad-input table, one test per row: one line naming the problem and the fix, exit
code 2, and nothing written (no results dir, no study, no trial).

No Ray is needed: every row is caught before Ray starts. Rows are (id, spec text, extra command
line, expected text); ``{tmp}`` in the command line is the test's folder.
"""
from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest

from hybrid_hpo import cli

SEARCH = "search:\n  inner_lr: {type: loguniform, low: 1.0e-2, high: 0.3}\n"
STORAGE = ["--storage", "sqlite:///{tmp}/study.db"]

ROWS = [
    # id, spec, extra args, expected in the one error line
    ("malformed_yaml", "search: {inner_lr: [\n", STORAGE, "spec.yaml: invalid YAML at line 2, column 1"),
    ("unknown_key", "serach: {}\n" + SEARCH, STORAGE, "serach: unknown key; did you mean 'search'?"),
    ("wrong_type", "max_concurrent: two\n" + SEARCH, STORAGE, "max_concurrent: Input should be a valid integer"),
    ("inverted_range", "search:\n  inner_lr: {type: loguniform, low: 0.3, high: 0.01}\n", STORAGE,
     "search.inner_lr: low (0.3) must be < high (0.01); swap them"),
    ("unknown_dataset", "task: {dataset: imagenet}\n" + SEARCH, STORAGE, "task.dataset: unknown value 'imagenet'"),
    ("unknown_model", "task: {model: transformer}\n" + SEARCH, STORAGE, "task.model: unknown value 'transformer'"),
    ("unknown_solver", "solver: {name: lbfgs}\n" + SEARCH, STORAGE, "solver.name: unknown value 'lbfgs'"),
    ("unknown_family", "task: {family: dropoutz}\n" + SEARCH, STORAGE, "task.family: unknown value 'dropoutz'"),
    ("dataset_missing_offline", "task: {dataset: mnist, data_root: '{tmp}/no-data'}\n" + SEARCH, STORAGE,
     "task.dataset: dataset 'mnist' not found under {tmp}/no-data"),
    ("unreachable_address", SEARCH, [*STORAGE, "--address", "127.0.0.1:1"],
     "--address: nothing answers at 127.0.0.1:1"),
    ("storage_not_a_url", SEARCH, ["--storage", "optuna.db"], "--storage: 'optuna.db' is not an RDB URL"),
    ("storage_unreachable", SEARCH, ["--storage", "postgresql://hpo:hunter2@127.0.0.1:1/hpo"],
     "storage: cannot open 'postgresql://hpo:***@127.0.0.1:1/hpo'"),
    ("study_with_other_space", SEARCH, [*STORAGE, "--study-name", "taken"],
     "--study-name: 'taken' already exists in sqlite:///{tmp}/study.db with a different search space"),
    ("results_dir_unwritable", SEARCH, [*STORAGE, "--results-dir", "{tmp}/a-file/results"],
     "--results-dir: {tmp}/a-file/results cannot be created: {tmp}/a-file is a file, not a folder"),
    ("resume_without_sweep", SEARCH, ["--resume", "--results-dir", "{tmp}/nothing"],
     "--resume: {tmp}/nothing holds no sweep.json"),
    ("negative_terms", "solver: {terms: -1}\n" + SEARCH, STORAGE, "solver.terms: must be an integer >= 0 (got -1)"),
    ("alpha_out_of_range", "solver: {alpha: -0.5}\n" + SEARCH, STORAGE, "solver.alpha: must be > 0 or 'auto'"),
    ("searched_val_fraction_out_of_range", "search:\n  val_fraction: {type: uniform, low: 0.5, high: 1.0}\n",
     STORAGE, "search.val_fraction: must be strictly between 0 and 1 (got 1.0)"),
    ("zero_samples", SEARCH, [*STORAGE, "--num-samples", "0"], "--num-samples: must be >= 1 (got 0)"),
    ("test_metric", "metric: test_acc\nmode: max\n" + SEARCH, STORAGE, "metric: test_acc would tune on the test set"),
    ("negative_max_failures", "max_failures: -1\n" + SEARCH, STORAGE, "max_failures: Input should be greater than"),
    ("more_initial_points_than_trials", "num_trials: 2\ninitial_points: [{inner_lr: 0.1}, {inner_lr: 0.2}, {}]\n" + SEARCH,
     STORAGE, "initial_points: 3 points but only 2 trials (num_trials or --num-samples)"),
]


def _setup(row_id: str, tmp: Path) -> None:
    if row_id == "study_with_other_space":  # a study of another sweep (other space) under that name
        study = optuna.create_study(storage=f"sqlite:///{tmp}/study.db", study_name="taken")
        study.set_user_attr("search_space", {"hyper_lr": "{}"})
    elif row_id == "results_dir_unwritable":
        (tmp / "a-file").write_text("not a folder")


def _listing(tmp: Path) -> set[str]:
    """Every path under tmp, minus SQLite's journal of an open database (not ours to write)."""
    return {str(p.relative_to(tmp)) for p in tmp.rglob("*") if not p.name.endswith(("-wal", "-shm", "-journal"))}


@pytest.mark.parametrize("row", ROWS, ids=[row[0] for row in ROWS])
def test_bad_input_one_line_exit_2_nothing_written(row, tmp_path, monkeypatch, capsys):
    row_id, spec, extra, expected = row
    tmp = tmp_path.resolve()
    (tmp / "spec.yaml").write_text(spec.replace("{tmp}", str(tmp)))
    _setup(row_id, tmp)
    monkeypatch.chdir(tmp)  # the default results dir would be ./results
    before = _listing(tmp)
    trials_before = _trials(tmp)
    code = cli.main(["sweep", "spec.yaml", *(arg.replace("{tmp}", str(tmp)) for arg in extra)])
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("hybrid-hpo sweep: error: ") and err.count("\n") == 1, err
    assert expected.replace("{tmp}", str(tmp)) in err, err
    assert "hunter2" not in err
    assert _listing(tmp) == before  # nothing half-written
    assert _trials(tmp) == trials_before


def _trials(tmp: Path) -> dict[str, int]:
    if not (tmp / "study.db").exists():
        return {}
    storage = f"sqlite:///{tmp}/study.db"
    return {s.study_name: len(optuna.load_study(study_name=s.study_name, storage=storage).trials)
            for s in optuna.get_all_study_summaries(storage)}


def test_the_table_has_at_least_15_rows_and_unique_ids():
    assert len(ROWS) >= 15 and len({row[0] for row in ROWS}) == len(ROWS)


DASHBOARD_ROWS = [
    ("port_out_of_range", ["--storage", "sqlite:///{tmp}/s.db", "--port", "70000"], "--port: 70000 is not a port"),
    ("storage_file_missing", ["--storage", "sqlite:///{tmp}/nope.db"], "--storage: no SQLite file at {tmp}/nope.db"),
    ("artifact_dir_missing", ["--storage", "sqlite:///{tmp}/s.db", "--artifact-dir", "{tmp}/none"],
     "--artifact-dir: no folder at {tmp}/none"),
]


@pytest.mark.parametrize("row", DASHBOARD_ROWS, ids=[row[0] for row in DASHBOARD_ROWS])
def test_bad_dashboard_input_one_line_exit_2(row, tmp_path, capsys):
    row_id, args, expected = row
    tmp = tmp_path.resolve()
    optuna.create_study(storage=f"sqlite:///{tmp}/s.db", study_name="s")
    before = _listing(tmp)
    assert cli.main(["dashboard", *(arg.replace("{tmp}", str(tmp)) for arg in args)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("hybrid-hpo dashboard: error: ") and err.count("\n") == 1, err
    assert expected.replace("{tmp}", str(tmp)) in err, err
    assert _listing(tmp) == before


def test_resume_keeps_a_hidden_password_out_of_sweep_json(tmp_path, monkeypatch, capsys):
    """A sweep.json never holds a password; resuming such a sweep asks for the full URL once more."""
    results = tmp_path / "results"
    (results / "tune").mkdir(parents=True)
    (results / "sweep.json").write_text(json.dumps({"storage": "postgresql://hpo:***@db:5432/hpo",
                                                    "study_name": "s", "num_samples": 2}))
    (tmp_path / "spec.yaml").write_text(SEARCH)
    assert cli.main(["sweep", str(tmp_path / "spec.yaml"), "--resume", "--results-dir", str(results)]) == 2
    assert "--storage: 'postgresql://hpo:***@db:5432/hpo' was saved without its password" in capsys.readouterr().err
