"""One driver per results dir: an exclusive ``flock`` on ``<results dir>/driver.lock``.

The lock file holds the holder's PID and host (for the message a second driver gets). The kernel
drops the lock when the holding process ends in any way (exit, exception, SIGKILL), so a crashed
driver never leaves a stale lock; the file itself stays. ``flock`` works across NFS clients on
Linux (emulated with byte-range locks), where shared results dirs usually live.
"""
from __future__ import annotations

import fcntl
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from hybrid_hpo.errors import ConfigError

LOCK_FILE = "driver.lock"


@contextmanager
def results_dir_lock(results_dir: Path) -> Iterator[None]:
    """Hold ``results_dir``'s lock for the ``with`` block (creating the folder if needed).

    ConfigError naming the holder's PID and host when another process holds it.
    """
    results_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(results_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").split() or ["?", "?"]
            raise ConfigError(f"--results-dir: {results_dir} is in use by another hybrid-hpo sweep (PID {holder[0]} "
                              f"on host {holder[-1]}); wait for it to end or choose another directory") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()} {socket.gethostname()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock
