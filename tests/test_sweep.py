"""Real sweeps on the shared Ray instance with real SQLite studies, through the CLI and tune.run.

Run inside a loopback-only network namespace (README's test command). Tiny trials: a [16] MLP, 3 epochs.
"""
from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState
from ray import tune

from hybrid_hpo import cli

EPOCHS = 3
TINY = {"dataset": "digits", "model": "mlp", "hidden": [16], "epochs": EPOCHS, "inner_steps": 4, "solver.terms": 2}
SPEC = f"""
task: {{dataset: digits, model: mlp, hidden: [16]}}
inner: {{epochs: {EPOCHS}, inner_steps: 4}}
solver: {{name: neumann, terms: 2}}
search:
  inner_lr: {{type: loguniform, low: 1.0e-2, high: 0.3}}
  hyper_lr: {{type: loguniform, low: 1.0e-3, high: 0.1}}
num_trials: 5
max_concurrent: 2
checkpoint_every: 0
"""


@pytest.fixture(autouse=True)
def _quiet_optuna():
    optuna.logging.set_verbosity(optuna.logging.WARNING)


def _check_study(storage_url: str, study_name: str, ray_results: dict[str, list[dict]]) -> None:
    """The study holds each Ray trial exactly once, COMPLETE, with every epoch and Ray's test metrics."""
    study = optuna.load_study(study_name=study_name, storage=storage_url)
    assert study.metric_names == ["sel_loss_best"]  # optuna-dashboard names the objective, not "Objective 0"
    by_ray_id = {t.user_attrs["ray_trial_id"]: t for t in study.trials}
    assert len(study.trials) == len(ray_results) == len(by_ray_id)
    assert set(by_ray_id) == set(ray_results)
    for ray_id, history in ray_results.items():
        trial, last = by_ray_id[ray_id], history[-1]
        assert trial.state == TrialState.COMPLETE
        assert trial.intermediate_values == {r["training_iteration"]: r["sel_loss_best"] for r in history}
        assert sorted(trial.intermediate_values) == list(range(1, EPOCHS + 1))
        assert trial.value == last["sel_loss_best"] == min(r["sel_loss"] for r in history)  # the trial's best epoch
        for key in ("test_acc", "test_loss", "val_acc", "hypergrad_norm"):
            assert trial.user_attrs[key] == last[key], key
        assert trial.params["inner_lr"] == last["config"]["inner_lr"]


def _ray_histories(experiment_dir: Path) -> dict[str, list[dict]]:
    histories = {}
    for path in experiment_dir.glob("*/result.json"):
        lines = [json.loads(line) for line in path.read_text().splitlines()]
        histories[lines[0]["trial_id"]] = lines
    return histories


def test_cli_sweep_records_every_trial_once(ray_session, tmp_path, capsys):
    (tmp_path / "tiny.yaml").write_text(SPEC + "initial_points: [{inner_lr: 0.05}]\n")  # hyper_lr left out: sampled
    results = tmp_path / "results"
    code = cli.main(["sweep", str(tmp_path / "tiny.yaml"), "--results-dir", str(results), "--num-samples", "3"])
    out = capsys.readouterr().out
    assert code == 0, out[-2000:]
    meta = json.loads((results / "sweep.json").read_text())
    url = f"sqlite:///{results.resolve()}/optuna.sqlite3"
    assert meta["storage"] == url and meta["num_samples"] == 3
    assert f"hybrid-hpo dashboard --storage {url}" in out
    histories = _ray_histories(results / "tune")
    assert all(len(h) == EPOCHS for h in histories.values())
    _check_study(url, meta["study_name"], histories)
    first = optuna.load_study(study_name=meta["study_name"], storage=url).trials[0]
    assert first.params["inner_lr"] == 0.05 and 1e-3 <= first.params["hyper_lr"] <= 0.1
    best = min(histories, key=lambda i: histories[i][-1]["sel_loss_best"])
    table = out[out.index("Best trials by sel_loss_best"):].splitlines()
    assert table[2].split()[0] == best  # first row under the header is the best trial
    _check_trial_lines(out, histories, total=3)


def _check_trial_lines(out: str, histories: dict[str, list[dict]], total: int) -> None:
    """The console has one line per finished trial with its meta-settings and last metrics, numbered
    1..total, and none of Ray Tune's own output (boxes, status tables, checkpoint lines)."""
    from hybrid_hpo.tune.console import trial_line

    lines = [line for line in out.splitlines() if line.startswith("[") and "] trial " in line]
    assert sorted(line[:line.index("]") + 1] for line in lines) == [f"[{k}/{total}]" for k in range(1, total + 1)]
    for ray_id, history in histories.items():
        last = history[-1]
        shown = [line for line in lines if f"] trial {ray_id} done, {EPOCHS} epochs in " in line]
        assert len(shown) == 1, (ray_id, lines)
        expected = trial_line(ray_id, last["config"], last, ["inner_lr", "hyper_lr"], "sel_loss", EPOCHS)
        assert f"] {expected}" in shown[0]  # (then how many hyper steps were rejected, if any)
        for key in ("inner_lr", "hyper_lr"):
            assert f"{key}={last['config'][key]:.4g}" in shown[0]
        for key in ("sel_loss", "val_loss", "val_acc", "test_loss", "test_acc"):
            assert f"{key}={last[key]:.4g}" in shown[0]
    assert "╭" not in out and "Trial status" not in out and "Checkpoint successfully created" not in out


def test_verbose_sweep_prints_ray_tunes_own_output(ray_session, tmp_path, capsys):
    (tmp_path / "tiny.yaml").write_text(SPEC)
    code = cli.main(["sweep", str(tmp_path / "tiny.yaml"), "--results-dir", str(tmp_path / "res"),
                     "--num-samples", "1", "--verbose"])
    out = capsys.readouterr().out
    assert code == 0, out[-2000:]
    assert "Trial status" in out and "] trial " not in out  # Ray's status table instead of our trial lines


def test_tune_run_with_make_search_records_every_trial_once(ray_session, tmp_path):
    from hybrid_hpo.tune import IFTTrainable, LogUniform, make_search

    url = f"sqlite:///{tmp_path}/study.db"
    search = make_search({"inner_lr": LogUniform(low=1e-2, high=0.3)}, "sel_loss_best", "min", storage=url, seed=1)
    analysis = tune.run(IFTTrainable, config=dict(TINY), search_alg=search, num_samples=2, max_concurrent_trials=2,
                        resources_per_trial={"cpu": 1}, storage_path=str(tmp_path), name="run", verbose=0,
                        reuse_actors=True)
    assert all(t.status == "TERMINATED" and t.last_result["training_iteration"] == EPOCHS for t in analysis.trials)
    _check_study(url, search.study.study_name, _ray_histories(tmp_path / "run"))


def test_dashboard_binds_loopback_by_default(tmp_path, monkeypatch, capsys):
    import optuna_dashboard

    calls = []
    monkeypatch.setattr(optuna_dashboard, "run_server",
                        lambda storage, host, port, artifact_store=None: calls.append((storage, host, port)))
    url = f"sqlite:///{tmp_path}/s.db"
    optuna.create_study(storage=url, study_name="s")
    assert cli.main(["dashboard", "--storage", url]) == 0
    assert calls == [(url, "127.0.0.1", 8080)] and "warning" not in capsys.readouterr().err
    assert cli.main(["dashboard", "--storage", url, "--host", "0.0.0.0", "--port", "9000"]) == 0
    assert calls[-1] == (url, "0.0.0.0", 9000)
    assert "warning: binding 0.0.0.0" in capsys.readouterr().err


def test_dashboard_on_a_missing_file_exit_2_creates_nothing(tmp_path, capsys):
    assert cli.main(["dashboard", "--storage", f"sqlite:///{tmp_path}/nope.db"]) == 2
    assert "--storage: no SQLite file at" in capsys.readouterr().err
    assert not (tmp_path / "nope.db").exists()


def test_unreachable_address_fails_fast_with_one_line():
    from hybrid_hpo.errors import ConfigError
    from hybrid_hpo.tune.ray_start import probe_address

    with pytest.raises(ConfigError, match=r"--address: nothing answers at 127\.0\.0\.1:1 "):
        probe_address("127.0.0.1:1")


def test_existing_study_name_is_refused_without_resume(ray_session, tmp_path, capsys):
    (tmp_path / "tiny.yaml").write_text(SPEC)
    url = f"sqlite:///{tmp_path}/shared.db"
    optuna.create_study(storage=url, study_name="taken")
    code = cli.main(["sweep", str(tmp_path / "tiny.yaml"), "--storage", url, "--study-name", "taken",
                     "--results-dir", str(tmp_path / "res")])
    assert code == 2
    assert "--study-name: 'taken' already exists in" in capsys.readouterr().err
    assert optuna.load_study(study_name="taken", storage=url).trials == []
    assert not (tmp_path / "res").exists()


class _InterruptOnce(tune.Callback):
    """Sends the driver SIGUSR1 (Tune's stop signal, like Ctrl-C) when the first trial completes."""

    fired = False

    def on_trial_complete(self, iteration, trials, trial, **info):
        if not _InterruptOnce.fired:
            _InterruptOnce.fired = True
            os.kill(os.getpid(), signal.SIGUSR1)


def test_interrupted_sweep_resumes_without_duplicate_trials(ray_session, tmp_path, monkeypatch, capsys):
    from hybrid_hpo.tune import sweep

    make_run_config = sweep._run_config

    def with_interrupt(*args):
        run_config = make_run_config(*args)
        run_config.callbacks = [_InterruptOnce()]
        return run_config

    monkeypatch.setattr(sweep, "_run_config", with_interrupt)
    (tmp_path / "tiny.yaml").write_text(SPEC)
    results = tmp_path / "results"
    args = ["sweep", str(tmp_path / "tiny.yaml"), "--results-dir", str(results)]
    assert cli.main([*args, "--num-samples", "4"]) == 1
    assert "interrupted; continue with --resume" in capsys.readouterr().out
    meta = json.loads((results / "sweep.json").read_text())
    url = meta["storage"]
    before = optuna.load_study(study_name=meta["study_name"], storage=url).trials
    assert 1 <= sum(t.state == TrialState.COMPLETE for t in before) < 4

    moved = tmp_path / "moved"  # the results dir moves (a copy to another disk, a renamed folder) before resuming
    results.rename(moved)
    assert cli.main(["sweep", str(tmp_path / "tiny.yaml"), "--results-dir", str(moved), "--resume"]) == 0, \
        capsys.readouterr().out[-2000:]
    assert not results.exists()  # nothing written at the old place
    histories = _ray_histories(moved / "tune")
    assert len(histories) == 4
    _check_study(f"sqlite:///{moved}/optuna.sqlite3", meta["study_name"], histories)


BUDGET_S = 2.0


def test_time_budget_closes_the_trials_it_stopped_as_pruned(ray_session, tmp_path, monkeypatch, capsys):
    from hybrid_hpo.tune import trainable

    class IFTTrainable(trainable.IFTTrainable):  # defined here: Ray ships it to its workers by value
        """Every epoch takes at least twice the sweep's time budget, so no trial can end before the
        deadline on any machine (a slow one only ends later)."""

        def step(self):
            time.sleep(2 * BUDGET_S)
            return super().step()

    monkeypatch.setattr(trainable, "IFTTrainable", IFTTrainable)
    (tmp_path / "tiny.yaml").write_text(SPEC + f"time_budget_s: {BUDGET_S}\n")
    results = tmp_path / "results"
    assert cli.main(["sweep", str(tmp_path / "tiny.yaml"), "--results-dir", str(results)]) == 0
    assert f"stopped by its time_budget_s ({BUDGET_S:g} s)" in capsys.readouterr().out
    meta = json.loads((results / "sweep.json").read_text())
    for trial in optuna.load_study(study_name=meta["study_name"], storage=meta["storage"]).trials:
        assert trial.state == TrialState.PRUNED  # none left RUNNING, none could complete
        assert trial.user_attrs["end_reason"] == "stopped by the sweep's time_budget_s"


def test_trial_that_the_cluster_cannot_place_stops_the_sweep_with_a_message(ray_session, tmp_path, capsys):
    """One CPU of the 2-CPU test Ray is held by another job, so a trial asking for 2 CPUs passes the
    resource check (the cluster has 2) but can never start: with pending_timeout_s set tiny, the
    sweep stops with one line instead of waiting forever."""
    @ray_session.remote(num_cpus=1)
    class Holder:
        def ready(self):
            return True

    holder = Holder.remote()
    ray_session.get(holder.ready.remote())
    spec = SPEC.replace("max_concurrent: 2", "max_concurrent: 1\nresources: {cpu: 2, gpu: 0}\npending_timeout_s: 0.001")
    (tmp_path / "tiny.yaml").write_text(spec)
    try:
        code = cli.main(["sweep", str(tmp_path / "tiny.yaml"), "--results-dir", str(tmp_path / "res")])
    finally:
        ray_session.kill(holder)
    captured = capsys.readouterr()
    assert code == 1
    assert "waited PENDING for more than 0.001 s with no trial running: the cluster cannot place" in captured.err
    assert "interrupted; continue with --resume" in captured.out


def test_a_ray_gcs_passes_the_address_probe(ray_session):
    from hybrid_hpo.tune.ray_start import probe_address

    probe_address(ray_session.get_runtime_context().gcs_address)  # raises ConfigError when not answered as Ray


def test_a_full_disk_gives_one_line_with_the_resume_hint(ray_session, tmp_path, monkeypatch, capsys):
    """ENOSPC while the sweep writes its files: one line naming the disk and the resume command."""
    import errno
    import pathlib

    real_write = pathlib.Path.write_text

    def full(self, *args, **kwargs):
        if self.name == "sweep.json":
            raise OSError(errno.ENOSPC, "No space left on device", str(self))
        return real_write(self, *args, **kwargs)

    monkeypatch.setattr(pathlib.Path, "write_text", full)
    (tmp_path / "tiny.yaml").write_text(SPEC)
    results = tmp_path / "res"
    assert cli.main(["sweep", str(tmp_path / "tiny.yaml"), "--results-dir", str(results)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("hybrid-hpo sweep: error: disk full"), err
    assert f"--resume --results-dir {results}" in err
