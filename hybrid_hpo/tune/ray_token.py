"""Ray's token file, private to this user before the local Ray a sweep starts reads it.

A new local ``ray.init()`` runs with token authentication (Ray's default when ``RAY_AUTH_MODE`` is
unset) and, when no token exists, writes one to ``~/.ray/auth_token`` with the process umask's mode
(usually 644): every local user could read it and then submit jobs (code run as this user) to the
Ray that listens on 127.0.0.1. :func:`make_token_private` creates the token first, mode 600 in a
700 folder, and takes group/other access away from an existing one this user owns.
"""
from __future__ import annotations

import os
import secrets
import stat
from pathlib import Path


def default_token_path() -> Path:
    """Where Ray looks for its token unless ``RAY_AUTH_TOKEN(_PATH)`` says otherwise."""
    return Path.home() / ".ray" / "auth_token"


def make_token_private() -> Path | None:
    """Before a local Ray starts: ensure the token file Ray will use exists with mode 600 (returns
    its path), unless token authentication is off or the token comes from ``RAY_AUTH_TOKEN``."""
    if os.environ.get("RAY_AUTH_MODE", "token").lower() != "token" or os.environ.get("RAY_AUTH_TOKEN"):
        return None
    path = Path(os.environ.get("RAY_AUTH_TOKEN_PATH") or default_token_path()).expanduser()
    create_secret_file(path)
    info = path.stat()
    if info.st_uid == os.getuid() and info.st_mode & 0o077:
        path.chmod(stat.S_IMODE(info.st_mode) & 0o700)
    return path


def create_secret_file(path: Path) -> None:
    """Write 256 random bits as hex (Ray's token format) to ``path`` with mode 600, its folder 700,
    unless the file exists (another process may create it at the same moment: theirs is kept)."""
    if path.exists():
        return
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return
    with os.fdopen(fd, "w") as handle:
        handle.write(secrets.token_hex(32))
