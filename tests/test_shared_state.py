"""Shared state: two drivers on one study, one driver per results dir, a results dir someone else
wrote, a resumed sweep whose spec changed, Ray's token file.

Real driver processes join the session's Ray (``--address``); a gated trainable
(tests/gated_driver.py) keeps a trial RUNNING until the test opens its gate, so nothing here depends
on the machine's speed. Run inside a loopback-only network namespace (README's test command).
"""
from __future__ import annotations

import json
import os
import pickle
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from hybrid_hpo import cli
from processes import kill_all

TESTS = Path(__file__).resolve().parent
SPEC = """
task: {{dataset: digits, model: mlp, hidden: [8], train_size: 64, val_size: 64}}
inner: {{epochs: {epochs}, inner_steps: 2}}
solver: {{name: neumann, terms: 1}}
search:
  inner_lr: {{type: loguniform, low: 1.0e-2, high: 0.3}}
  hyper_lr: {{type: loguniform, low: 1.0e-3, high: 0.1}}
num_trials: 1
max_concurrent: 1
resources: {{cpu: 1, gpu: 0}}
checkpoint_every: 0
{extra}
"""
WAIT_S = 900  # a bound on waiting for a driver, so a broken driver fails the test instead of hanging it


@pytest.fixture(autouse=True)
def _quiet_optuna():
    optuna.logging.set_verbosity(optuna.logging.WARNING)


def _spec(path: Path, epochs: int = 1, extra: str = "") -> Path:
    path.write_text(SPEC.format(epochs=epochs, extra=extra))
    return path


def _driver(args: list[str], log: Path, gate: Path | None = None) -> subprocess.Popen:
    command = [sys.executable, str(TESTS / "gated_driver.py"), str(gate)] if gate else \
        [sys.executable, "-m", "hybrid_hpo.cli"]
    return subprocess.Popen([*command, *args], stdout=log.open("w"), stderr=subprocess.STDOUT, cwd=TESTS.parent)


def _wait_for(condition, what: str, process: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        assert process.poll() is None, f"{what}: the driver ended ({process.returncode}):\n{log.read_text()[-3000:]}"
        assert time.monotonic() < deadline, f"{what}: not within {WAIT_S} s:\n{log.read_text()[-3000:]}"
        time.sleep(0.2)


def _running_trials(storage: str, study_name: str) -> int:
    try:
        study = optuna.load_study(study_name=study_name, storage=storage)
    except KeyError:  # not created yet
        return 0
    return sum(t.state == TrialState.RUNNING for t in study.trials)


def _one_error_line(run: subprocess.CompletedProcess) -> str:
    assert run.returncode == 2, run.stdout + run.stderr
    assert run.stderr.count("\n") == 1 and run.stderr.startswith("hybrid-hpo sweep: error: "), run.stderr
    return run.stderr


def test_two_drivers_share_a_study_and_a_second_driver_on_a_results_dir_is_refused(ray_session, tmp_path, capsys):
    address = ray_session.get_runtime_context().gcs_address
    spec = _spec(tmp_path / "spec.yaml", epochs=2)
    first, second, gate = tmp_path / "first", tmp_path / "second", tmp_path / "gate"
    storage, study_name = f"sqlite:///{first}/optuna.sqlite3", "shared"
    common = ["sweep", str(spec), "--address", address, "--study-name", study_name]
    log_first = tmp_path / "first.log"
    driver = _driver([*common, "--results-dir", str(first)], log_first, gate=gate)
    try:  # the first driver's trial waits at the gate, RUNNING in the study
        _wait_for(lambda: (first / "tune").is_dir() and _running_trials(storage, study_name) == 1,
                  "the first driver's trial running", driver, log_first)

        # a second driver on the same results dir (two --resume at once): one line naming the holder
        listing = sorted(p.name for p in first.iterdir())
        refused = subprocess.run([sys.executable, "-m", "hybrid_hpo.cli", "sweep", str(spec), "--resume",
                                  "--results-dir", str(first), "--address", address],
                                 capture_output=True, text=True, cwd=TESTS.parent)
        line = _one_error_line(refused)
        assert f"{first} is in use by another hybrid-hpo sweep (PID {driver.pid} on host {socket.gethostname()})" \
            in line
        assert sorted(p.name for p in first.iterdir()) == listing

        # another driver joins the study with its own results dir and finishes while the first's trial runs
        log_second = tmp_path / "second.log"
        joined = _driver([*common, "--results-dir", str(second), "--storage", storage], log_second)
        assert joined.wait(timeout=WAIT_S) == 0, log_second.read_text()[-3000:]
        assert _running_trials(storage, study_name) == 1  # the first driver's trial was left alone
    finally:
        gate.touch()
        try:
            driver.wait(timeout=WAIT_S)
        finally:
            driver.kill()
    assert driver.returncode == 0, log_first.read_text()[-3000:]

    study = optuna.load_study(study_name=study_name, storage=storage)
    ids = {json.loads((folder / "sweep.json").read_text())["sweep_id"] for folder in (first, second)}
    assert len(study.trials) == 2 and {t.state for t in study.trials} == {TrialState.COMPLETE}
    assert {t.user_attrs["sweep_id"] for t in study.trials} == ids and len(ids) == 2
    assert all(sorted(t.intermediate_values) == [1, 2] for t in study.trials)  # no epoch past the budget

    # a driver that dies (SIGKILL) while holding the lock releases it: a later --resume runs
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from pathlib import Path; "
                               "from hybrid_hpo.tune.lock import results_dir_lock\n"
                               "with results_dir_lock(Path(sys.argv[1])):\n print('locked', flush=True); time.sleep(600)",
                               str(first)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "locked\n"
        assert cli.main(["sweep", str(spec), "--resume", "--results-dir", str(first)]) == 2
        assert f"(PID {holder.pid} on host" in capsys.readouterr().err
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert cli.main(["sweep", str(spec), "--resume", "--results-dir", str(first)]) == 0, capsys.readouterr()
    assert [t.state for t in optuna.load_study(study_name=study_name, storage=storage).trials] == \
        [TrialState.COMPLETE] * 2


@pytest.fixture(scope="module")
def finished_sweep(ray_session, tmp_path_factory) -> Path:
    """A folder with spec.yaml and results/, a finished one-trial sweep of it."""
    folder = tmp_path_factory.mktemp("finished")
    spec = _spec(folder / "spec.yaml")
    assert cli.main(["sweep", str(spec), "--results-dir", str(folder / "results")]) == 0
    return folder


class _Payload:
    """Unpickling this creates ``path``: proof that code from the results dir ran."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return open, (self.path, "w")


def _plant_tuner(results: Path, payload: bytes) -> None:
    (results / "tune" / "tuner.pkl").write_bytes(payload)


def _plant_checkpoint_pickle(results: Path, payload: bytes) -> None:
    (checkpoint,) = (results / "tune").glob("*/checkpoint_*")
    (checkpoint / "dict_checkpoint.pkl").write_bytes(payload)  # Ray would unpickle it in the trial


def _plant_newer_state(results: Path, payload: bytes) -> None:
    (results / "tune" / "searcher-state-2099-01-01_00-00-00.pkl").write_bytes(payload)  # Ray takes the newest


def _drop_signatures(results: Path, payload: bytes) -> None:
    (results / "ray-state.sig").unlink()
    _plant_tuner(results, payload)


@pytest.mark.parametrize(("plant", "expected"), [
    (_plant_tuner, "tune/tuner.pkl is not signed by your key"),
    (_plant_checkpoint_pickle, "dict_checkpoint.pkl is not signed by your key"),
    (_plant_newer_state, "searcher-state-2099-01-01_00-00-00.pkl is not signed by your key"),
    (_drop_signatures, "has no valid ray-state.sig"),
], ids=["tuner", "checkpoint", "newer_state", "no_signatures"])
def test_resume_refuses_a_planted_pickle_and_never_runs_it(finished_sweep, tmp_path, plant, expected, capsys):
    marker = tmp_path / "code-ran"
    payload = pickle.dumps(_Payload(str(marker)))
    pickle.loads(pickle.dumps(_Payload(str(tmp_path / "proof"))))
    assert (tmp_path / "proof").exists()  # the payload does run when unpickled
    results = tmp_path / "results"
    shutil.copytree(finished_sweep / "results", results)
    plant(results, payload)
    code = cli.main(["sweep", str(finished_sweep / "spec.yaml"), "--resume", "--results-dir", str(results)])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and expected in err, err
    assert not marker.exists()


def test_resume_with_a_changed_spec_names_the_changed_fields(finished_sweep, tmp_path, capsys):
    changed = (finished_sweep / "spec.yaml").read_text().replace("epochs: 1", "epochs: 3").replace("high: 0.3", "high: 0.5")
    (tmp_path / "spec.yaml").write_text(changed.replace("cpu: 1", "cpu: 2"))  # resources may change
    results = tmp_path / "results"
    shutil.copytree(finished_sweep / "results", results)
    assert cli.main(["sweep", str(tmp_path / "spec.yaml"), "--resume", "--results-dir", str(results)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "the spec differs from the one this sweep started with in inner.epochs, search.inner_lr.high; " in err


def test_key_readable_by_others_is_refused(tmp_path, monkeypatch):
    from hybrid_hpo.errors import ConfigError
    from hybrid_hpo.tune.trust import load_key

    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    key = load_key()
    path = tmp_path / "hybrid-hpo" / "resume.key"
    assert len(key) == 64 and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert load_key() == key  # one key per user, kept
    path.chmod(0o644)
    with pytest.raises(ConfigError, match="resume key is readable or owned by someone else"):
        load_key()


def test_the_local_ray_of_a_sweep_gets_a_private_token_file(tmp_path):
    """A first sweep on a machine: Ray's token file is created mode 600 in a 700 folder."""
    ray_tmp = tempfile.mkdtemp(prefix="ht", dir="/tmp")  # short: Ray's socket paths must stay < 108 bytes
    env = {key: value for key, value in os.environ.items() if not key.startswith("RAY_AUTH")}
    env.update(HOME=str(tmp_path), RAY_TMPDIR=ray_tmp, RAY_USAGE_STATS_ENABLED="0")
    try:
        run = subprocess.run([sys.executable, "-c", "import ray; from hybrid_hpo.tune.ray_start import init_ray; "
                              "init_ray(None); assert ray.is_initialized(); ray.shutdown()"],
                             env=env, capture_output=True, text=True, timeout=WAIT_S)
    finally:
        kill_all(f"RAY_TMPDIR={ray_tmp}")
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert run.returncode == 0, run.stderr[-3000:]
    token = tmp_path / ".ray" / "auth_token"
    assert stat.S_IMODE(token.stat().st_mode) == 0o600 and len(token.read_text().strip()) == 64
    assert stat.S_IMODE(token.parent.stat().st_mode) == 0o700
