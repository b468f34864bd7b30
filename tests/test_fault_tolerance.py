"""Failures during a sweep: a trial process killed, the driver killed, a hypergradient gone non-finite.

Each test checks the Optuna study and the Ray results afterwards. Run inside a loopback-only
network namespace (README's test command); the driver-kill test starts its own Ray in a child process with
its own RAY_TMPDIR and stops exactly the processes that carry it.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
import torch
from optuna.trial import TrialState
from ray import cloudpickle

from hybrid_hpo import cli
from processes import kill_all, processes_with_env
from hybrid_hpo.tune.trainable import IFTTrainable

cloudpickle.register_pickle_by_value(sys.modules[__name__])  # Ray workers cannot import tests/

SPEC = """
task: {{dataset: digits, model: mlp, hidden: [{hidden}]}}
inner: {{epochs: {epochs}, inner_steps: 4}}
solver: {{name: neumann, terms: 2}}
search:
{search}
num_trials: {trials}
max_concurrent: {concurrent}
checkpoint_every: {every}
max_failures: 2
seed: 0
"""
LR_SEARCH = "  inner_lr: {type: loguniform, low: 1.0e-2, high: 0.3}\n  hyper_lr: {type: loguniform, low: 1.0e-3, high: 0.1}"


def _spec(tmp_path: Path, *, epochs=3, hidden=16, trials=2, concurrent=2, every=1, search=LR_SEARCH) -> Path:
    path = tmp_path / "spec.yaml"
    path.write_text(SPEC.format(epochs=epochs, hidden=hidden, trials=trials, concurrent=concurrent, every=every,
                                search=search))
    return path


def _histories(experiment_dir: Path) -> dict[str, list[dict]]:
    """Ray trial id -> the lines of its result.json."""
    out = {}
    for path in experiment_dir.glob("*/result.json"):
        lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        if lines:
            out[lines[0]["trial_id"]] = lines
    return out


def _study(results: Path) -> optuna.Study:
    meta = json.loads((results / "sweep.json").read_text())
    return optuna.load_study(study_name=meta["study_name"], storage=meta["storage"])


class _DiesInEpoch2Once(IFTTrainable):
    """Kills its own process (SIGKILL) in the middle of its 2nd epoch, once per sweep (MARKER)."""

    MARKER = ""

    def step(self):
        if self.trainer.epoch == 1 and not os.path.exists(self.MARKER):
            Path(self.MARKER).write_text(str(os.getpid()))
            os.kill(os.getpid(), signal.SIGKILL)
        return super().step()


def test_killed_trial_process_resumes_from_its_checkpoint_and_is_told_once(ray_session, tmp_path, monkeypatch,
                                                                           capsys):
    from hybrid_hpo.bilevel import BilevelTrainer
    from hybrid_hpo.config import RunConfig

    dies = type("DiesInEpoch2Once", (_DiesInEpoch2Once,), {"MARKER": str(tmp_path / "died.pid")})
    monkeypatch.setattr("hybrid_hpo.tune.trainable.IFTTrainable", dies)
    results = tmp_path / "results"
    code = cli.main(["sweep", str(_spec(tmp_path)), "--results-dir", str(results)])
    out = capsys.readouterr().out
    assert code == 0, out[-3000:]
    dead_pid = int((tmp_path / "died.pid").read_text())

    histories = _histories(results / "tune")
    assert len(histories) == 2
    (victim,) = [tid for tid, lines in histories.items() if lines[0]["pid"] == dead_pid]
    lines = histories[victim]
    # epoch 1 by the killed process, then epochs 2-3 by a new one restored from the epoch-1 checkpoint
    assert [r["epoch"] for r in lines] == [1, 2, 3]
    assert lines[1]["pid"] != dead_pid and lines[1]["iterations_since_restore"] == 1

    study = _study(results)
    assert len(study.trials) == 2 and {t.state for t in study.trials} == {TrialState.COMPLETE}
    (trial,) = [t for t in study.trials if t.user_attrs["ray_trial_id"] == victim]
    assert trial.value == lines[-1]["sel_loss_best"]
    assert trial.intermediate_values == {r["epoch"]: r["sel_loss_best"] for r in lines}
    assert trial.user_attrs["test_acc"] == lines[-1]["test_acc"]

    # the right values: an uninterrupted run of the same config ends bit-identically
    config = {k: v for k, v in lines[-1]["config"].items()}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in the trial (1 CPU)
    try:
        trainer = BilevelTrainer(RunConfig.from_mapping(config), device="cpu")
        reference = [trainer.train_epoch() for _ in range(3)]
    finally:
        torch.set_num_threads(threads)
    assert [r["val_loss"] for r in reference] == [r["val_loss"] for r in lines]


def _terminated_in_snapshot(experiment_dir: Path) -> set[str]:
    """Ray trial ids that the newest experiment snapshot records as TERMINATED (none while that
    snapshot is being written)."""
    snapshots = sorted(experiment_dir.glob("experiment_state-*.json"), key=lambda p: p.stat().st_mtime)
    try:
        state = json.loads(snapshots[-1].read_text()) if snapshots else {}
        trials = [json.loads(trial) for trial, _ in state.get("trial_data", [])]
    except (OSError, ValueError):
        return set()
    return {trial["trial_id"] for trial in trials if trial.get("status") == "TERMINATED"}


def _completed(experiment_dir: Path, epochs: int) -> dict[str, str]:
    """Ray trial id -> result.json text, for trials whose result.json ends with their last epoch."""
    done = {}
    for path in experiment_dir.glob("*/result.json"):
        text = path.read_text()
        lines = [json.loads(line) for line in text.splitlines() if line.strip()]
        if lines and lines[-1].get("done") and lines[-1]["training_iteration"] == epochs:
            done[lines[0]["trial_id"]] = text
    return done


def test_sigkilled_driver_resumes_without_losing_or_duplicating_trials(ray_session, tmp_path, capsys):
    epochs, trials = 40, 6
    spec = _spec(tmp_path, epochs=epochs, hidden=64, trials=trials, concurrent=1, every=10)
    results = tmp_path / "results"
    ray_tmp = tempfile.mkdtemp(prefix="hh", dir="/tmp")  # short: Ray's socket paths must stay < 108 bytes
    env = dict(os.environ, RAY_TMPDIR=ray_tmp, RAY_USAGE_STATS_ENABLED="0")
    log = (tmp_path / "driver.log").open("w")
    driver = subprocess.Popen([sys.executable, "-m", "hybrid_hpo.cli", "sweep", str(spec), "--results-dir",
                               str(results)], env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    experiment = results / "tune"
    before: dict[str, str] = {}
    try:
        deadline = time.monotonic() + 1200  # a hang guard: the kill waits for a finished trial, however slow
        while time.monotonic() < deadline and driver.poll() is None:
            done = _completed(experiment, epochs)
            # Kill once Ray's newest experiment snapshot records some finished trials as TERMINATED (a
            # trial is recorded so only after its final checkpoint, which may take seconds under load;
            # no clock is involved). Trials that finished later are not in `before`.
            covered = {tid: text for tid, text in done.items() if tid in _terminated_in_snapshot(experiment)}
            if covered and len(done) < trials:
                before = covered
                os.kill(driver.pid, signal.SIGKILL)  # the `hybrid-hpo sweep` process itself
                break
            time.sleep(0.2)
        driver.wait(timeout=30)
    finally:
        kill_all(f"RAY_TMPDIR={ray_tmp}")
        shutil.rmtree(ray_tmp, ignore_errors=True)
        log.close()
    assert before, "the sweep ended before it could be killed mid-way:\n" + (tmp_path / "driver.log").read_text()[-3000:]
    assert driver.returncode == -signal.SIGKILL
    assert not processes_with_env(f"RAY_TMPDIR={ray_tmp}")

    assert cli.main(["sweep", str(spec), "--resume", "--results-dir", str(results)]) == 0, \
        capsys.readouterr().out[-3000:]
    histories = _histories(experiment)
    assert len(histories) == trials  # the requested number, none duplicated
    after = _completed(experiment, epochs)
    assert set(after) == set(histories)
    for tid, text in before.items():  # trials finished before the kill keep their results untouched
        assert after[tid] == text
    for lines in histories.values():
        assert {r["training_iteration"] for r in lines} == set(range(1, epochs + 1))

    study = _study(results)
    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
    ray_ids = [t.user_attrs["ray_trial_id"] for t in study.trials]
    assert len(ray_ids) == len(set(ray_ids))  # no trial twice in the study
    assert sorted(t.user_attrs["ray_trial_id"] for t in complete) == sorted(histories)
    for trial in complete:
        assert trial.value == histories[trial.user_attrs["ray_trial_id"]][-1]["sel_loss_best"]
    # an Optuna trial asked for after Ray's last snapshot never ran: FAIL, saying why
    for trial in study.trials:
        if trial.state != TrialState.COMPLETE:
            assert trial.state == TrialState.FAIL
            assert trial.user_attrs["end_reason"] == "sweep interrupted before Ray recorded this trial"
            assert trial.user_attrs["ray_trial_id"] not in histories


def test_non_finite_hypergradient_fails_only_its_trial(ray_session, tmp_path, capsys):
    search = "  hyper_lr: {type: choice, values: [1.0e+30, 1.0e-3]}\n  inner_lr: {type: loguniform, low: 0.05, high: 0.1}"
    results = tmp_path / "results"
    code = cli.main(["sweep", str(_spec(tmp_path, epochs=2, trials=4, search=search)), "--results-dir", str(results)])
    out = capsys.readouterr().out
    assert code == 0, out[-3000:]  # the sweep itself is fine
    histories = _histories(results / "tune")
    study = _study(results)
    assert len(study.trials) == len(histories) == 4
    by_lr = {1e30: [], 1e-3: []}
    for trial in study.trials:
        by_lr[trial.params["hyper_lr"]].append(trial)
    assert by_lr[1e30] and by_lr[1e-3], "the seeded sampler should try both hyper learning rates"
    for trial in by_lr[1e-3]:
        assert trial.state == TrialState.COMPLETE and trial.user_attrs["rejected_hyper_steps"] == 0
    for trial in by_lr[1e30]:
        last = histories[trial.user_attrs["ray_trial_id"]][-1]
        rejected = sum(r["rejected_hyper_steps"] for r in histories[trial.user_attrs["ray_trial_id"]])
        assert rejected >= 1  # the non-finite hyper steps were rejected, not applied
        if trial.state == TrialState.FAIL:  # the weights went non-finite as well
            assert trial.user_attrs["end_reason"] == f"sel_loss_best is {last['sel_loss_best']}"
        else:
            assert trial.state == TrialState.COMPLETE and trial.value == last["sel_loss_best"]
        assert last["training_iteration"] == 2  # it ran to its budget, it did not crash


def test_sigterm_stops_the_driver_like_ctrl_c_with_the_resume_hint(tmp_path):
    """SIGTERM (a scheduler's or `kill`'s stop) used to abort the driver with rc 134 and no hint."""
    spec = _spec(tmp_path, epochs=100000, trials=1, concurrent=1, every=0)  # cannot finish before the signal
    results = tmp_path / "results"
    ray_tmp = tempfile.mkdtemp(prefix="hh", dir="/tmp")
    env = dict(os.environ, RAY_TMPDIR=ray_tmp, RAY_USAGE_STATS_ENABLED="0")
    log = (tmp_path / "driver.log").open("w")
    driver = subprocess.Popen([sys.executable, "-m", "hybrid_hpo.cli", "sweep", str(spec), "--results-dir",
                               str(results)], env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 240  # a bound on a stuck start, not a speed requirement
        while time.monotonic() < deadline and driver.poll() is None and \
                not any(p.stat().st_size for p in (results / "tune").glob("*/result.json")):
            time.sleep(0.2)
        assert driver.poll() is None, (tmp_path / "driver.log").read_text()[-3000:]
        os.kill(driver.pid, signal.SIGTERM)
        driver.wait(timeout=120)
    finally:
        if driver.poll() is None:
            driver.kill()
        kill_all(f"RAY_TMPDIR={ray_tmp}")
        shutil.rmtree(ray_tmp, ignore_errors=True)
        log.close()
    output = (tmp_path / "driver.log").read_text()
    assert driver.returncode == 1, output[-3000:]
    assert f"interrupted; continue with --resume --results-dir {results}" in output
