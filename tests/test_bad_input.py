"""The bad-input table of docs/errors.md, one test per row: one line naming the problem and the fix, exit
code 2, and nothing written (no results dir, no study, no trial).

No Ray is needed: every row is caught before Ray starts. Rows are (id, spec text, extra command
line, expected text); ``{tmp}`` in the command line is the test's folder.
"""
from __future__ import annotations

import json
import os
import socket
import threading
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
    # issue 14: values that used to fail every trial after Ray started, and inputs that used to hang or trace back
    ("duplicate_key", "seed: 1\n" + SEARCH + "seed: 2\n", STORAGE, "invalid YAML at line 4, column 1: duplicate key 'seed'"),
    ("bool_is_not_an_int", "num_trials: true\n" + SEARCH, STORAGE, "num_trials: Input should be a valid integer (got True)"),
    ("negative_sampler_seed", "seed: -1\n" + SEARCH, STORAGE, "seed: Input should be greater than or equal to 0"),
    ("empty_train_split", "task: {val_fraction: 0.9999}\n" + SEARCH, STORAGE,
     "task.val_fraction: 0.9999 leaves no training examples out of 1149"),
    ("searched_split_empty", "search:\n  val_fraction: {type: uniform, low: 0.2, high: 0.9999}\n", STORAGE,
     "search.val_fraction: 0.9999 leaves no training examples out of 1149; use a smaller value, e.g. 0.2 (at "),
    ("train_size_too_large", "task: {train_size: 5000}\n" + SEARCH, STORAGE, "task.train_size: 5000 exceeds the"),
    ("gpu_nan", "resources: {gpu: .nan}\n" + SEARCH, STORAGE, "resources.gpu: must be 'auto' or a number >= 0 (got nan)"),
    ("more_cpus_than_the_machine", "resources: {cpu: 100000}\n" + SEARCH, STORAGE,
     "resources.cpu: a trial needs 100000 CPUs but the cluster has"),
    ("cuda_without_gpu", "task: {device: 'cuda:99'}\n" + SEARCH, STORAGE, "task.device: cuda:99 requested but"),
    ("spec_not_utf8", SEARCH, STORAGE, "spec.yaml: not UTF-8 text"),
    ("spec_binary", SEARCH, STORAGE, "spec.yaml: a binary file (NUL bytes)"),
    ("spec_fifo", SEARCH, STORAGE, "spec.yaml: not a regular file"),
    ("spec_too_large", SEARCH, STORAGE, "bytes is too large for a spec"),
    ("spec_deep_nesting", "task: {hidden: " + "[" * 3000 + "]" * 3000 + "}\n" + SEARCH, STORAGE,
     "spec.yaml: nested deeper than 20 levels"),
    ("spec_alias_bomb", "".join(f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9) if i else 'x'}]\n" for i in range(8))
     + "task: {hidden: *l7}\n" + SEARCH, STORAGE, "spec.yaml: expands to more than 100,000 values (YAML aliases)"),
    ("storage_in_memory", SEARCH, ["--storage", "sqlite://"], "--storage: 'sqlite://' is an in-memory SQLite database"),
    ("storage_parent_is_a_file", SEARCH, ["--storage", "sqlite:///{tmp}/a-file/study.db"],
     "--storage: {tmp}/a-file cannot be created: {tmp}/a-file is a file, not a folder"),
    ("storage_not_sqlite", SEARCH, ["--storage", "sqlite:///{tmp}/notes.txt"], "--storage: {tmp}/notes.txt is not a SQLite"),
    ("corrupt_sweep_json", SEARCH, ["--resume", "--results-dir", "{tmp}/old"],
     "--resume: {tmp}/old/sweep.json is unreadable or corrupt (JSONDecodeError)"),
    ("address_auto_without_cluster", SEARCH, [*STORAGE, "--address", "auto"], "--address: auto found no Ray cluster"),
    ("address_ipv6_nothing_answers", SEARCH, [*STORAGE, "--address", "[::1]:1"], "--address: nothing answers at [::1]:1"),
    ("more_initial_points_than_trials", "num_trials: 2\ninitial_points: [{inner_lr: 0.1}, {inner_lr: 0.2}, {}]\n" + SEARCH,
     STORAGE, "initial_points: 3 points but only 2 trials (num_trials or --num-samples)"),
]


def _setup(row_id: str, tmp: Path, monkeypatch) -> None:
    if row_id == "study_with_other_space":  # a study of another sweep (other space) under that name
        study = optuna.create_study(storage=f"sqlite:///{tmp}/study.db", study_name="taken")
        study.set_user_attr("search_space", {"hyper_lr": "{}"})
    elif row_id in ("results_dir_unwritable", "storage_parent_is_a_file"):
        (tmp / "a-file").write_text("not a folder")
    elif row_id == "spec_not_utf8":
        (tmp / "spec.yaml").write_bytes(b"name: caf\xe9\n" + SEARCH.encode())
    elif row_id == "spec_binary":
        (tmp / "spec.yaml").write_bytes(SEARCH.encode() + b"\0\0")
    elif row_id == "spec_fifo":  # reading a FIFO would block forever
        (tmp / "spec.yaml").unlink()
        os.mkfifo(tmp / "spec.yaml")
    elif row_id == "spec_too_large":
        (tmp / "spec.yaml").write_text(SEARCH + "# " + "x" * (2 << 20) + "\n")
    elif row_id == "storage_not_sqlite":
        (tmp / "notes.txt").write_text("my notes\n")
    elif row_id == "corrupt_sweep_json":
        (tmp / "old" / "tune").mkdir(parents=True)
        (tmp / "old" / "sweep.json").write_text('{"storage": "sqlite:///x.db", "study_na')
    elif row_id == "address_auto_without_cluster":  # no RAY_ADDRESS and no `ray start` record in RAY_TMPDIR
        monkeypatch.delenv("RAY_ADDRESS", raising=False)
        monkeypatch.setenv("RAY_TMPDIR", str(tmp / "ray-tmp"))


def _listing(tmp: Path) -> set[str]:
    """Every path under tmp, minus SQLite's journal of an open database (not ours to write)."""
    return {str(p.relative_to(tmp)) for p in tmp.rglob("*") if not p.name.endswith(("-wal", "-shm", "-journal"))}


@pytest.mark.parametrize("row", ROWS, ids=[row[0] for row in ROWS])
def test_bad_input_one_line_exit_2_nothing_written(row, tmp_path, monkeypatch, capsys):
    row_id, spec, extra, expected = row
    tmp = tmp_path.resolve()
    (tmp / "spec.yaml").write_text(spec.replace("{tmp}", str(tmp)))
    _setup(row_id, tmp, monkeypatch)
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


def _listener(reply: bytes | None) -> tuple[socket.socket, int]:
    """A TCP listener on 127.0.0.1 that is not Ray: it sends ``reply`` to each connection (None:
    says nothing and keeps the connection open)."""
    server = socket.create_server(("127.0.0.1", 0))

    def serve():
        held = []
        while True:
            try:
                connection, _ = server.accept()
            except OSError:
                return
            if reply is None:
                held.append(connection)
            else:
                connection.sendall(reply)
                connection.close()

    threading.Thread(target=serve, daemon=True).start()
    return server, server.getsockname()[1]


@pytest.mark.parametrize("reply, expected", [
    (b"HTTP/1.1 400 Bad Request\r\n\r\n", "answers, but not as a Ray GCS (gRPC)"),
    (None, "accepts connections but gives no Ray (gRPC) answer within"),
])
def test_address_of_a_listener_that_is_not_ray_is_refused_before_anything_is_written(reply, expected, tmp_path,
                                                                                     monkeypatch, capsys):
    """A port where something else listens used to hang in ray.init (after the storage was created)."""
    from hybrid_hpo.tune import ray_start

    monkeypatch.setattr(ray_start.probe_address, "__defaults__", (0.5,))  # the bound: a silent listener never answers
    server, port = _listener(reply)
    (tmp_path / "spec.yaml").write_text(SEARCH)
    monkeypatch.chdir(tmp_path)
    try:
        code = cli.main(["sweep", "spec.yaml", "--storage", f"sqlite:///{tmp_path}/study.db",
                         "--address", f"127.0.0.1:{port}"])
    finally:
        server.close()
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and expected in err, err
    assert _listing(tmp_path) == {"spec.yaml"}  # neither the storage nor a results dir


def test_download_that_fails_offline_is_refused_before_ray(tmp_path, monkeypatch, capsys):
    """download: true on a machine without internet used to fail every trial after Ray started."""
    import urllib.error

    import torchvision

    def offline(self, *args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torchvision.datasets.MNIST, "download", offline)
    (tmp_path / "spec.yaml").write_text(f"task: {{dataset: mnist, download: true, data_root: {tmp_path}/data}}\n"
                                        + SEARCH)
    monkeypatch.chdir(tmp_path)
    code = cli.main(["sweep", "spec.yaml", "--storage", f"sqlite:///{tmp_path}/study.db"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1, err
    assert "task.dataset: dataset 'mnist' download failed under" in err and "URLError" in err
    assert not (tmp_path / "study.db").exists() and not (tmp_path / "results").exists()


def test_dashboard_on_a_busy_port_is_one_line(tmp_path, capsys):
    optuna.create_study(storage=f"sqlite:///{tmp_path}/s.db", study_name="s")
    busy = socket.create_server(("127.0.0.1", 0))
    try:
        code = cli.main(["dashboard", "--storage", f"sqlite:///{tmp_path}/s.db", "--port", str(busy.getsockname()[1])])
    finally:
        busy.close()
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "is already in use" in err, err


def test_dashboard_on_a_file_that_is_not_a_database_is_one_line(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("my notes\n")
    code = cli.main(["dashboard", "--storage", f"sqlite:///{tmp_path}/notes.txt"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "notes.txt is not a SQLite database" in err, err
    assert (tmp_path / "notes.txt").read_text() == "my notes\n"
