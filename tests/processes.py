"""Find and stop exactly the processes a test started, by a marker in their environment.

Tests give the Ray processes they start a unique ``RAY_TMPDIR``; these helpers find those processes
through /proc and SIGKILL them — never `ray stop`, which would stop every Ray on the machine.
"""
from __future__ import annotations

import os
import signal
import time
from pathlib import Path


def processes_with_env(assignment: str) -> list[int]:
    """Live PIDs whose environment holds ``assignment`` (e.g. RAY_TMPDIR=/tmp/x); zombies are dead."""
    needle, found = assignment.encode(), []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if needle in (entry / "environ").read_bytes().split(b"\0") and \
                        (entry / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def kill_all(assignment: str, timeout_s: float = 20.0) -> None:
    """SIGKILL every process whose environment holds ``assignment`` and wait until they are gone."""
    deadline = time.monotonic() + timeout_s
    while (pids := processes_with_env(assignment)) and time.monotonic() < deadline:
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.2)
