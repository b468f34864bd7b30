"""Checks of the world outside a config, run before anything is trained or written: folders and
files we will write, a local SQLite storage, the device, the data split, a port to listen on.

Each raises a one-line :class:`ConfigError` ``<field>: <problem>; <fix>`` and creates nothing
(a writability probe is an anonymous temporary file, gone when closed).
"""
from __future__ import annotations

import errno
import socket
import tempfile
from pathlib import Path

from hybrid_hpo.errors import ConfigError

SQLITE_HEADER = b"SQLite format 3\x00"


def check_writable(directory: str | Path, field: str) -> None:
    """``directory`` exists as a writable folder or can be created: its nearest existing ancestor
    is a folder we can write (probed with a temporary file, so read-only mounts are caught even
    for root)."""
    directory = Path(directory).expanduser().resolve()
    existing = directory
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(f"{field}: {directory} cannot be created: {existing} is a file, not a folder; "
                          "choose another directory")
    try:
        tempfile.TemporaryFile(dir=existing).close()
    except OSError as error:
        raise ConfigError(f"{field}: {directory} is not writable ({error.strerror} in {existing}); "
                          "choose a writable directory") from None


def check_output_file(path: str | Path, field: str) -> None:
    """A file we will write at the end of a run: its folder exists and is writable, and the path is
    not a folder (so a finished run never loses its result to a bad path)."""
    path = Path(path).expanduser().resolve()
    if path.is_dir():
        raise ConfigError(f"{field}: {path} is a folder; give a file path, e.g. {path / 'metrics.json'}")
    if not path.parent.is_dir():
        raise ConfigError(f"{field}: the folder {path.parent} does not exist; create it first or choose another path")
    check_writable(path.parent, field)


def sqlite_path(url: str) -> Path | None:
    """The file of a ``sqlite:///path`` URL (None for other databases); ConfigError for an in-memory
    SQLite URL (``sqlite://``, ``sqlite:///:memory:``), which vanishes with this process and which
    Ray's processes could never share."""
    from hybrid_hpo.tune.urls import is_sqlite_in_memory, sqlite_file

    if is_sqlite_in_memory(url):
        raise ConfigError(f"--storage: {url!r} is an in-memory SQLite database, lost when the sweep ends; "
                          "use a file, e.g. sqlite:////abs/path/optuna.sqlite3")
    return sqlite_file(url)


def check_sqlite_file(path: Path, field: str) -> None:
    """A SQLite storage file: its folder can be written (SQLite creates the file and its journal
    there), and an existing non-empty file is a SQLite database."""
    check_writable(path.parent, field)
    if not path.parent.is_dir():
        raise ConfigError(f"{field}: the folder {path.parent} does not exist; create it or choose another path")
    if path.is_dir():
        raise ConfigError(f"{field}: {path} is a folder; give the database file, e.g. {path / 'optuna.sqlite3'}")
    check_is_sqlite(path, field)


def check_is_sqlite(path: Path, field: str) -> None:
    """An existing, non-empty ``path`` starts with SQLite's header (an empty file is a new database)."""
    try:
        with open(path, "rb") as handle:
            header = handle.read(len(SQLITE_HEADER))
    except FileNotFoundError:
        return
    except OSError as error:
        raise ConfigError(f"{field}: cannot read {path} ({error.strerror}); check its permissions") from None
    if header and header != SQLITE_HEADER:
        raise ConfigError(f"{field}: {path} is not a SQLite database; pass the optuna.sqlite3 a sweep wrote")


def check_device(device: str, field: str = "device") -> None:
    """``cuda``/``cuda:N`` needs a visible GPU (with that index)."""
    if not device.startswith("cuda"):
        return
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    index = int(device.partition(":")[2] or 0)
    if index >= count:
        have = f"{count} visible GPU{'s' if count != 1 else ''}" if count else "no GPU is visible"
        raise ConfigError(f"{field}: {device} requested but {have}; use device auto (a GPU when there is one) or cpu")


def check_data_split(config, field_prefix: str = "") -> None:
    """Load and split the data exactly as a run of ``config`` (a RunConfig) will, so a split that
    comes out empty, a size larger than the data, an impossible imbalance or a dataset that is
    missing (or cannot be downloaded) fails here, in one line."""
    from hybrid_hpo.data import load_dataset

    try:
        load_dataset(config.dataset, val_fraction=config.val_fraction, seed=config.seed, root=config.data_root,
                     download=config.download, train_size=config.train_size, val_size=config.val_size,
                     imbalance=config.imbalance, selection_fraction=config.selection_fraction)
    except ConfigError as error:
        raise ConfigError(f"{field_prefix}{error}") from None


def check_port_free(host: str, port: int, field: str = "--port") -> None:
    """Nothing listens on ``host:port`` yet (binding it once, then releasing it)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((host, port))
        except OSError as error:
            if error.errno == errno.EADDRINUSE:
                raise ConfigError(f"{field}: {host}:{port} is already in use (another dashboard?); choose "
                                  "another port, e.g. --port 8081") from None
            raise ConfigError(f"{field}: cannot listen on {host}:{port} ({error.strerror}); check --host") from None


def is_disk_full(error: BaseException | None) -> bool:
    """Whether ``error`` or any exception it was raised from is a full disk (ENOSPC, SQLite's
    "database or disk is full")."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if "No space left on device" in str(error) or "database or disk is full" in str(error):
            return True
        error = error.__cause__ or error.__context__
    return False
