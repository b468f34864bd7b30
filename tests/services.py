"""Throwaway services on loopback for the cluster test and bench/outer_scale.py: a multi-node Ray
cluster of ``ray start`` processes and a PostgreSQL server.

Run inside a loopback-only network namespace (README's test command): Ray would otherwise listen on
the machine's external interface. The cluster's nodes share one short ``RAY_TMPDIR`` (their marker)
and get their own ports; at the end exactly the processes carrying that RAY_TMPDIR are stopped
(never `ray stop`, which would stop every Ray on the machine). PostgreSQL is Debian's server,
started in a temporary folder on a free 127.0.0.1 port as the postgres user in a user namespace
(the server refuses to run as root), and stopped by its postmaster's PID.
"""
from __future__ import annotations

import glob
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from processes import kill_all, processes_with_env

OBJECT_STORE_BYTES = 80 * 1024**2  # Ray's minimum is 75 MiB


def free_ports(count: int) -> list[int]:
    """``count`` distinct TCP ports free on 127.0.0.1 right now."""
    sockets = [socket.socket() for _ in range(count)]
    for sock in sockets:
        sock.bind(("127.0.0.1", 0))
    ports = [sock.getsockname()[1] for sock in sockets]
    for sock in sockets:
        sock.close()
    return ports


def _node_ports() -> list[str]:
    """Fixed ports a node would otherwise take from Ray's defaults (equal for two nodes on one host)."""
    (manager, objects, agent, metrics, runtime_env) = free_ports(5)
    return [f"--node-manager-port={manager}", f"--object-manager-port={objects}",
            f"--dashboard-agent-listen-port={agent}", f"--metrics-export-port={metrics}",
            f"--runtime-env-agent-port={runtime_env}"]


@contextmanager
def ray_cluster(nodes: int, cpus_per_node: int = 1) -> Iterator[tuple[str, dict[str, str]]]:
    """(address, env): a head and ``nodes - 1`` worker nodes on 127.0.0.1 with token authentication
    (one token in ``env``, which a driver must run with). Raises CalledProcessError when a node does
    not start; every process of the cluster is gone afterwards (AssertionError otherwise)."""
    ray_bin = Path(sys.executable).with_name("ray")
    tmpdir = tempfile.mkdtemp(prefix="hc", dir="/tmp")  # short: Ray's socket paths must stay < 108 bytes
    env = dict(os.environ, RAY_TMPDIR=tmpdir, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(32),
               RAY_USAGE_STATS_ENABLED="0")
    (port,) = free_ports(1)
    common = ["--node-ip-address=127.0.0.1", f"--num-cpus={cpus_per_node}", "--num-gpus=0",
              f"--object-store-memory={OBJECT_STORE_BYTES}", "--disable-usage-stats"]
    try:
        subprocess.run([str(ray_bin), "start", "--head", f"--port={port}", "--include-dashboard=false", *common,
                        *_node_ports()], env=env, check=True, capture_output=True, text=True, timeout=600)
        for _ in range(nodes - 1):
            subprocess.run([str(ray_bin), "start", f"--address=127.0.0.1:{port}", *common, *_node_ports()],
                           env=env, check=True, capture_output=True, text=True, timeout=600)
        yield f"127.0.0.1:{port}", env
    finally:
        kill_all(f"RAY_TMPDIR={tmpdir}")
        shutil.rmtree(tmpdir, ignore_errors=True)
    assert not processes_with_env(f"RAY_TMPDIR={tmpdir}")


def postgres_bin() -> Path | None:
    """The newest installed PostgreSQL server's bin folder (Debian layout), or None."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"), key=lambda p: int(p.split("/")[4]))
    return Path(found[-1]).parent if found else None


@contextmanager
def postgres_server(bindir: Path) -> Iterator[str]:
    """postgresql://hpo:<password>@127.0.0.1:<port>/hpo on a throwaway server, stopped afterwards
    (needs ``unshare`` and psycopg)."""
    import pwd

    import psycopg

    postgres = pwd.getpwnam("postgres")
    as_postgres = ["unshare", "--user", f"--map-user={postgres.pw_uid}", f"--map-group={postgres.pw_gid}"]
    root = Path(tempfile.mkdtemp(prefix="hybrid-hpo-pg-"))
    password = secrets.token_hex(12)
    (root / "pw").write_text(password + "\n")
    (port,) = free_ports(1)
    data = root / "data"
    subprocess.run([*as_postgres, str(bindir / "initdb"), "-D", str(data), "-U", "hpo", "--auth=scram-sha-256",
                    f"--pwfile={root / 'pw'}", "-E", "UTF8"], check=True, capture_output=True, timeout=120)
    (root / "pw").unlink()
    subprocess.run([*as_postgres, str(bindir / "pg_ctl"), "-D", str(data), "-l", str(root / "log"), "-w",
                    "-o", f"-c listen_addresses=127.0.0.1 -p {port} -c unix_socket_directories=''", "start"],
                   check=True, capture_output=True, timeout=120)
    postmaster = int((data / "postmaster.pid").read_text().split()[0])
    try:
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
