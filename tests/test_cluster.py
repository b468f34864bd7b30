"""A sweep on a real two-node Ray cluster, and studies on a real PostgreSQL server.

Run inside a loopback-only network namespace (README's test command): Ray would otherwise listen on the
machine's external interface. The cluster is two ``ray start`` nodes on 127.0.0.1 with one CPU and
a capped object store each, token authentication, their own ports and their own RAY_TMPDIR, so
they never meet the session's local Ray; PostgreSQL is Debian's server on a free 127.0.0.1 port.
Both are started and stopped by tests/services.py (shared with bench/outer_scale.py).
"""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys

import optuna
import pytest
from optuna.trial import TrialState

from hybrid_hpo import cli
from services import postgres_bin, postgres_server, ray_cluster

SPEC = """
task: {dataset: digits, model: mlp, hidden: [16]}
inner: {epochs: 3, inner_steps: 4}
solver: {name: neumann, terms: 2}
search:
  inner_lr: {type: loguniform, low: 1.0e-2, high: 0.3}
  hyper_lr: {type: loguniform, low: 1.0e-3, high: 0.1}
num_trials: 4
max_concurrent: 2
resources: {cpu: 1, gpu: 0}
checkpoint_every: 0
"""


@pytest.fixture
def two_node_cluster():
    """(address, env): a head and a worker node on 127.0.0.1, 1 CPU each, token authentication."""
    try:
        with ray_cluster(nodes=2) as started:
            yield started
    except subprocess.CalledProcessError as error:
        pytest.fail(f"ray start failed: {error.stdout[-2000:]}\n{error.stderr[-2000:]}")


def test_sweep_runs_trials_on_both_nodes_of_a_cluster(two_node_cluster, tmp_path):
    address, env = two_node_cluster
    (tmp_path / "tiny.yaml").write_text(SPEC)
    results = tmp_path / "shared" / "results"
    run = subprocess.run([sys.executable, "-m", "hybrid_hpo.cli", "sweep", str(tmp_path / "tiny.yaml"),
                          "--address", address, "--results-dir", str(results)],
                         env=env, capture_output=True, text=True, timeout=1800)  # a hang guard only
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert env["RAY_AUTH_TOKEN"] not in run.stdout + run.stderr

    node_of = {}
    for path in (results / "tune").glob("*/result.json"):
        lines = [json.loads(line) for line in path.read_text().splitlines()]
        assert [r["epoch"] for r in lines] == [1, 2, 3]
        assert len({r["node_id"] for r in lines}) == 1
        node_of[lines[0]["trial_id"]] = lines[-1]["node_id"]
    assert len(node_of) == 4
    assert len(set(node_of.values())) == 2, node_of  # both nodes ran trials
    assert all(re.fullmatch(r"[0-9a-f]{56}", node) for node in node_of.values())

    meta = json.loads((results / "sweep.json").read_text())
    study = optuna.load_study(study_name=meta["study_name"], storage=meta["storage"])
    assert len(study.trials) == 4 and all(t.state == TrialState.COMPLETE for t in study.trials)
    store = optuna.artifacts.FileSystemArtifactStore(str(results / "artifacts"))
    for trial in study.trials:
        assert trial.user_attrs["node_id"] == node_of[trial.user_attrs["ray_trial_id"]]
        metas = optuna.artifacts.get_all_artifact_meta(trial, storage=study._storage)
        assert "curves.png" in {m.filename for m in metas}  # pictures from either node reached the study
        for artifact in metas:
            assert artifact.filename.endswith(".png") and artifact.mimetype == "image/png"
            with store.open_reader(artifact.artifact_id) as reader:
                assert reader.read(8) == b"\x89PNG\r\n\x1a\n"


# ------------------------------------------------------------------------------------------ PostgreSQL
@pytest.fixture(scope="module")
def postgres_url():
    """postgresql://hpo:<password>@127.0.0.1:<port>/hpo on a throwaway server, stopped afterwards."""
    bindir = postgres_bin()
    if bindir is None or shutil.which("unshare") is None:
        pytest.skip("PostgreSQL server not installed (Debian package postgresql; .ci/system-packages.sh installs it)")
    pytest.importorskip("psycopg", reason="psycopg is not installed (the dev extra has psycopg[binary])")
    with postgres_server(bindir) as url:
        yield url


def test_two_drivers_share_one_postgres_study_without_leaking_the_password(ray_session, postgres_url, tmp_path,
                                                                           capsys):
    password = postgres_url.split(":")[2].split("@")[0]
    (tmp_path / "tiny.yaml").write_text(SPEC.replace("num_trials: 4", "num_trials: 1"))
    for driver in ("a", "b"):  # two sweeps (two drivers, each its results dir), one trial each, one study
        code = cli.main(["sweep", str(tmp_path / "tiny.yaml"), "--storage", postgres_url, "--study-name", "shared",
                         "--results-dir", str(tmp_path / driver)])
        captured = capsys.readouterr()
        assert code == 0, captured.out[-3000:] + captured.err[-3000:]
        assert password not in captured.out + captured.err
        assert "--storage postgresql://hpo:***@127.0.0.1:" in captured.out  # the dashboard command, redacted
        assert password not in (tmp_path / driver / "sweep.json").read_text()
    study = optuna.load_study(study_name="shared", storage=postgres_url)
    assert len(study.trials) == 2 and all(t.state == TrialState.COMPLETE for t in study.trials)
    assert len({t.user_attrs["ray_trial_id"] for t in study.trials}) == 2
    assert all(0.0 <= t.user_attrs["test_acc"] <= 1.0 for t in study.trials)

    # a third driver with another search space is refused before anything runs
    (tmp_path / "other.yaml").write_text(SPEC.replace("high: 0.3", "high: 0.5"))
    code = cli.main(["sweep", str(tmp_path / "other.yaml"), "--storage", postgres_url, "--study-name", "shared",
                     "--results-dir", str(tmp_path / "c")])
    err = capsys.readouterr().err
    assert code == 2 and "--study-name: 'shared' already exists in postgresql://hpo:***@" in err
    assert "with a different search space" in err and password not in err
    assert not (tmp_path / "c").exists()
    assert len(optuna.load_study(study_name="shared", storage=postgres_url).trials) == 2
