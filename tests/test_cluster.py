"""A sweep on a real two-node Ray cluster, and studies on a real PostgreSQL server.

Run inside a loopback-only network namespace (README's test command): Ray would otherwise listen on the
machine's external interface. The cluster is two ``ray start`` nodes on 127.0.0.1 with one CPU and
a capped object store each, token authentication, their own ports and their own RAY_TMPDIR, so
they never meet the session's local Ray; the test stops exactly the processes carrying that
RAY_TMPDIR. PostgreSQL is Debian's server, started by the test in a temporary folder on a free
127.0.0.1 port (as the postgres user, in a user namespace: the server refuses to run as root).
"""
from __future__ import annotations

import glob
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from hybrid_hpo import cli
from processes import kill_all, processes_with_env

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
OBJECT_STORE_BYTES = 80 * 1024**2  # Ray's minimum is 75 MiB


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for sock in sockets:
        sock.bind(("127.0.0.1", 0))
    ports = [sock.getsockname()[1] for sock in sockets]
    for sock in sockets:
        sock.close()
    return ports


def _node_ports() -> list[str]:
    """Fixed ports a node would otherwise take from Ray's defaults (equal for two nodes on one host)."""
    (manager, objects, agent, metrics, runtime_env) = _free_ports(5)
    return [f"--node-manager-port={manager}", f"--object-manager-port={objects}",
            f"--dashboard-agent-listen-port={agent}", f"--metrics-export-port={metrics}",
            f"--runtime-env-agent-port={runtime_env}"]


@pytest.fixture
def two_node_cluster():
    """(address, env): a head and a worker node on 127.0.0.1, 1 CPU each, token authentication."""
    ray_bin = Path(sys.executable).with_name("ray")
    tmpdir = tempfile.mkdtemp(prefix="hc", dir="/tmp")  # short: Ray's socket paths must stay < 108 bytes
    env = dict(os.environ, RAY_TMPDIR=tmpdir, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(32),
               RAY_USAGE_STATS_ENABLED="0")
    (port,) = _free_ports(1)
    common = ["--node-ip-address=127.0.0.1", "--num-cpus=1", "--num-gpus=0",
              f"--object-store-memory={OBJECT_STORE_BYTES}", "--disable-usage-stats"]
    try:
        subprocess.run([str(ray_bin), "start", "--head", f"--port={port}", "--include-dashboard=false", *common,
                        *_node_ports()], env=env, check=True, capture_output=True, text=True, timeout=600)
        subprocess.run([str(ray_bin), "start", f"--address=127.0.0.1:{port}", *common, *_node_ports()],
                       env=env, check=True, capture_output=True, text=True, timeout=600)
        yield f"127.0.0.1:{port}", env
    except subprocess.CalledProcessError as error:
        pytest.fail(f"ray start failed: {error.stdout[-2000:]}\n{error.stderr[-2000:]}")
    finally:
        kill_all(f"RAY_TMPDIR={tmpdir}")  # never `ray stop`: it would stop every Ray on the machine
        shutil.rmtree(tmpdir, ignore_errors=True)
    assert not processes_with_env(f"RAY_TMPDIR={tmpdir}")


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
def _postgres_bin() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"), key=lambda p: int(p.split("/")[4]))
    return Path(found[-1]).parent if found else None


@pytest.fixture(scope="module")
def postgres_url():
    """postgresql://hpo:<password>@127.0.0.1:<port>/hpo on a throwaway server, stopped afterwards."""
    bindir = _postgres_bin()
    if bindir is None or shutil.which("unshare") is None:
        pytest.skip("PostgreSQL server not installed (Debian package postgresql; .ci/system-packages.sh installs it)")
    pytest.importorskip("psycopg", reason="psycopg is not installed (the dev extra has psycopg[binary])")
    import pwd

    postgres = pwd.getpwnam("postgres")
    as_postgres = ["unshare", "--user", f"--map-user={postgres.pw_uid}", f"--map-group={postgres.pw_gid}"]
    root = Path(tempfile.mkdtemp(prefix="hybrid-hpo-pg-"))
    password = secrets.token_hex(12)
    (root / "pw").write_text(password + "\n")
    (port,) = _free_ports(1)
    data = root / "data"
    subprocess.run([*as_postgres, str(bindir / "initdb"), "-D", str(data), "-U", "hpo", "--auth=scram-sha-256",
                    f"--pwfile={root / 'pw'}", "-E", "UTF8"], check=True, capture_output=True, timeout=120)
    (root / "pw").unlink()
    subprocess.run([*as_postgres, str(bindir / "pg_ctl"), "-D", str(data), "-l", str(root / "log"), "-w",
                    "-o", f"-c listen_addresses=127.0.0.1 -p {port} -c unix_socket_directories=''", "start"],
                   check=True, capture_output=True, timeout=120)
    postmaster = int((data / "postmaster.pid").read_text().split()[0])
    try:
        import psycopg

        with psycopg.connect(host="127.0.0.1", port=port, user="hpo", password=password, dbname="postgres",
                             autocommit=True) as connection:  # CREATE DATABASE cannot run in a transaction
            connection.execute("CREATE DATABASE hpo")
        yield f"postgresql://hpo:{password}@127.0.0.1:{port}/hpo"
    finally:
        os.kill(postmaster, signal.SIGINT)  # "fast" shutdown of exactly our server
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and Path(f"/proc/{postmaster}").exists():
            time.sleep(0.1)
        shutil.rmtree(root, ignore_errors=True)


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
