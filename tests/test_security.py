"""Security defaults: servers on 127.0.0.1, checkpoints unpickled with weights_only, no passwords in output."""
from __future__ import annotations

import os
import pickle
import socket
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import torch
import yaml

from hybrid_hpo import cli
from hybrid_hpo.errors import ConfigError
from hybrid_hpo.tune.urls import redact

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


class _Payload:
    """Unpickling this would create ``path``: proof that code ran."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return open, (self.path, "w")


def test_checkpoint_with_code_is_refused_not_run(tmp_path, monkeypatch):
    from hybrid_hpo.tune import IFTTrainable
    from hybrid_hpo.tune.trainable import CHECKPOINT_FILE

    monkeypatch.setattr("ray.tune.trainable.trainable.DEFAULT_STORAGE_PATH", str(tmp_path / "logs"))
    marker = tmp_path / "code-ran"
    (tmp_path / "ckpt").mkdir()
    torch.save({"format": 1, "evil": _Payload(str(marker))}, tmp_path / "ckpt" / CHECKPOINT_FILE)
    trainable = IFTTrainable({"hidden": [8], "epochs": 1, "device": "cpu"})
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        trainable.load_checkpoint(str(tmp_path / "ckpt"))
    assert not marker.exists()
    trainable.stop()


@pytest.mark.parametrize(("url", "shown"), [
    ("postgresql://hpo:s3cret@db.example:5432/hpo", "postgresql://hpo:***@db.example:5432/hpo"),
    ("postgresql+psycopg://u:p%40ss@127.0.0.1/x", "postgresql+psycopg://u:***@127.0.0.1/x"),
    ("mysql://root:pw@h/db?charset=utf8", "mysql://root:***@h/db?charset=utf8"),
    ("sqlite:////abs/optuna.sqlite3", "sqlite:////abs/optuna.sqlite3"),
    ("postgresql://hpo@db/hpo", "postgresql://hpo@db/hpo"),
])
def test_redact_hides_only_the_password(url, shown):
    assert redact(url) == shown


def test_storage_errors_do_not_echo_the_password():
    from hybrid_hpo.tune.search import make_storage

    with pytest.raises(ConfigError) as error:
        make_storage("postgresql://hpo:s3cret@127.0.0.1:1/hpo")
    assert "s3cret" not in str(error.value) and "postgresql://hpo:***@127.0.0.1:1/hpo" in str(error.value)


def test_dashboard_banner_hides_the_password(monkeypatch, capsys):
    import optuna_dashboard

    seen = []
    monkeypatch.setattr(optuna_dashboard, "run_server", lambda storage, **kwargs: seen.append(storage))
    url = "postgresql://hpo:s3cret@127.0.0.1:5432/hpo"
    assert cli.main(["dashboard", "--storage", url]) == 0
    out = capsys.readouterr().out
    assert seen == [url] and "s3cret" not in out and "postgresql://hpo:***@127.0.0.1:5432/hpo" in out


def _listening_addresses(port: int) -> set[str]:
    """Local IPv4 addresses with a listening TCP socket on ``port`` (from /proc/net/tcp)."""
    found = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        address, hex_port = local.split(":")
        if state == "0A" and int(hex_port, 16) == port:  # 0A = LISTEN
            found.add(socket.inet_ntoa(bytes.fromhex(address)[::-1]))
    return found


def test_dashboard_listens_on_loopback_only_by_default(tmp_path):
    url = f"sqlite:///{tmp_path}/s.db"
    optuna.create_study(storage=url, study_name="s")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "hybrid_hpo.cli", "dashboard", "--storage", url, "--port",
                               str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 600  # a hang guard, not a speed requirement
        while not _listening_addresses(port) and time.monotonic() < deadline and server.poll() is None:
            time.sleep(0.3)
        assert _listening_addresses(port) == {"127.0.0.1"}
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_local_ray_of_a_sweep_binds_loopback_without_dashboard(monkeypatch):
    import ray

    from hybrid_hpo.tune import ray_start

    calls = []
    monkeypatch.setattr(ray, "init", lambda **kwargs: calls.append(kwargs))
    ray_start.init_ray(None)
    (kwargs,) = calls
    assert {key: kwargs.pop(key) for key in ("num_cpus", "include_dashboard", "_node_ip_address")} == \
        {"num_cpus": os.cpu_count() or 1, "include_dashboard": False, "_node_ip_address": "127.0.0.1"}
    assert set(kwargs) <= {"logging_level"}  # nothing else: no address to join, no dashboard host


def test_cluster_example_keeps_the_ray_dashboard_on_loopback():
    config = yaml.safe_load((EXAMPLES / "cluster.yaml").read_text())
    head_start = " ".join(config["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head_start
    types = config["available_node_types"]
    assert config["head_node_type"] in types
    assert any(t["resources"].get("GPU", 0) >= 1 for t in types.values())  # a GPU worker type
    assert any("pip install" in command and "hybrid-hpo" in command for command in config["setup_commands"])
