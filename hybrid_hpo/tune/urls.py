"""Optuna storage URLs (SQLAlchemy RDB URLs such as ``sqlite:////abs/optuna.sqlite3`` or
``postgresql://user@host:5432/db``): whether a string is one, which SQLite file one names, the URL
of a file, and a form safe to print (password hidden). Imports nothing heavy."""
from __future__ import annotations

import re
from pathlib import Path

from hybrid_hpo.errors import ConfigError

STORAGE_FILENAME = "optuna.sqlite3"
"""The default storage of a sweep or comparison: this file in its results dir."""
_SQLITE_FILE = "sqlite:///"  # + a path: sqlite:////abs/path (absolute) or sqlite:///rel/path


def is_rdb_url(value: object) -> bool:
    """Whether ``value`` looks like an RDB URL (``dialect[+driver]://...``)."""
    return isinstance(value, str) and "://" in value


def check_rdb_url(value: object, field: str) -> str:
    """``value`` when it is an RDB URL, else ConfigError ``<field>: ... is not an RDB URL; use e.g. ...``."""
    if not is_rdb_url(value):
        shown = redact(value) if isinstance(value, str) else value
        raise ConfigError(f"{field}: {shown!r} is not an RDB URL; use e.g. sqlite:////abs/path/optuna.sqlite3 "
                          "or postgresql://user@host:5432/db")
    return value


def is_sqlite_in_memory(url: str) -> bool:
    """``sqlite://`` or ``sqlite:///:memory:`` (with or without ``?options``): a database that
    lives in one process only."""
    if not url.startswith("sqlite:"):
        return False
    path = url.removeprefix("sqlite:").removeprefix("///").split("?", 1)[0]
    return path in ("", ":memory:") or not url.startswith(_SQLITE_FILE)


def sqlite_file(url: str) -> Path | None:
    """The database file of a ``sqlite:///path`` URL; None for other databases and in-memory SQLite."""
    if not url.startswith(_SQLITE_FILE) or is_sqlite_in_memory(url):
        return None
    return Path(url.removeprefix(_SQLITE_FILE).split("?", 1)[0])


def sqlite_url(path: str | Path) -> str:
    """RDB URL of a SQLite file, absolute: ``sqlite:////abs/path``."""
    return f"{_SQLITE_FILE}{Path(path).expanduser().resolve()}"


def results_dir_storage(results_dir: str | Path) -> str:
    """The default storage of a sweep's or comparison's results dir: its ``optuna.sqlite3``, as a URL."""
    return sqlite_url(Path(results_dir) / STORAGE_FILENAME)


def redact(url: str) -> str:
    """``url`` with its password replaced by ``***`` (for logs, tables, errors, sweep.json)."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        return make_url(url).render_as_string(hide_password=True)
    except (ArgumentError, ValueError):
        return re.sub(r"(://[^:/@]*:)[^@]*@", r"\1***@", url)
