"""The trust boundary of ``--resume``: Ray's state files are signed by the driver that wrote them.

``Tuner.restore`` unpickles ``tune/tuner.pkl``, the searcher's ``searcher-state-*.pkl``, the
cloudpickled parts of ``experiment_state-*.json`` / ``search_gen_state-*.json``, and a trial's
``error.pkl`` or ``dict_checkpoint.pkl``: whoever can write a results dir could make ``--resume``
run code. So the driver signs what it writes and ``--resume`` checks before Ray reads anything:

- the key: 32 random bytes in ``$XDG_CONFIG_HOME/hybrid-hpo/resume.key`` (default
  ``~/.config/hybrid-hpo/``), created on first use with mode 600, never in a results dir;
- the signature: ``HMAC-SHA256(key, relative path + NUL + content)`` of every file Ray may
  unpickle (every file directly in ``tune/``, and every ``*.pkl`` below it), kept in
  ``<results dir>/ray-state.sig`` (JSON: path -> the last :data:`HISTORY` digests);
- when: ``tuner.pkl`` once after the Tuner writes it; the rest at each of Ray's experiment
  snapshots (:class:`SignedSearchGenerator`), after Ray writes them to its staging folder and
  *before* Ray copies them into the results dir, so a driver killed at any moment leaves files
  whose digests are already recorded (the history covers copies still in flight);
- :func:`verify` refuses the resume (one line) when the signature file is missing or any such
  file has no matching digest. Files Ray only reads as JSON/CSV (``result.json``, ...) and our
  checkpoints (``torch.load(weights_only=True)``) are not pickles and are not signed.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ray.tune.search import SearchGenerator

from hybrid_hpo.errors import ConfigError
from hybrid_hpo.tune.ray_token import create_secret_file

SIGNATURE_FILE = "ray-state.sig"
KEY_FILE = "resume.key"
HISTORY = 16  # digests kept per file: Ray rewrites its state files every snapshot
STORAGE_MARKER = ".validate_storage_marker"  # Ray only checks that it exists


def key_path() -> Path:
    """``$XDG_CONFIG_HOME/hybrid-hpo/resume.key`` (``~/.config`` when the variable is unset)."""
    base = os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config"
    return Path(base) / "hybrid-hpo" / KEY_FILE


def load_key() -> bytes:
    """This user's signing key, created (mode 600, folder 700) if missing; ConfigError when
    another user could read or replace it."""
    path = key_path()
    create_secret_file(path)
    info = path.stat()
    if info.st_uid != os.getuid() or info.st_mode & 0o077:
        raise ConfigError(f"{path}: the resume key is readable or owned by someone else (mode "
                          f"{info.st_mode & 0o777:o}); chmod 600 it (or delete it: results dirs signed with it "
                          "can then not be resumed)")
    return path.read_bytes().strip()


def _digest(key: bytes, relpath: str, data: bytes) -> str:
    return hmac.new(key, relpath.encode() + b"\0" + data, hashlib.sha256).hexdigest()


def _unpickled_by_ray(relpath: Path) -> bool:
    """Files Ray may unpickle on restore: everything directly in the experiment folder (but the
    empty marker Ray writes to check that workers see the storage), any ``*.pkl``."""
    return (len(relpath.parts) == 1 and relpath.name != STORAGE_MARKER) or relpath.suffix == ".pkl"


def _ray_files(root: Path) -> Iterator[tuple[str, Path]]:
    for path in sorted(root.rglob("*")):
        relpath = path.relative_to(root)
        if _unpickled_by_ray(relpath) and not path.is_dir():
            yield relpath.as_posix(), path


class RayStateSigner:
    """Records the digests of Ray's state files in ``<results_dir>/ray-state.sig``."""

    def __init__(self, results_dir: Path, key: bytes, signatures: dict[str, list[str]] | None = None) -> None:
        self.results_dir = results_dir
        self._key = key
        self.signatures: dict[str, list[str]] = signatures or {}

    def __getstate__(self) -> dict[str, Any]:
        raise TypeError("RayStateSigner holds the signing key and must never be pickled")

    def sign_tree(self, root: Path) -> None:
        """Sign every file under ``root`` that Ray may unpickle (paths relative to ``root``)."""
        if sum(self._add(relpath, path) for relpath, path in _ray_files(root)):
            self._write()

    def sign_file(self, relpath: str, path: Path) -> None:
        """Sign one file as ``relpath`` (e.g. ``tuner.pkl``, which Ray writes into the results dir itself)."""
        if self._add(relpath, path):
            self._write()

    def _add(self, relpath: str, path: Path) -> bool:
        try:
            data = path.read_bytes()
        except FileNotFoundError:  # a temporary file Ray renamed meanwhile
            return False
        known = self.signatures.setdefault(relpath, [])
        digest = _digest(self._key, relpath, data)
        if digest in known:
            return False
        known.append(digest)
        del known[:-HISTORY]
        return True

    def _write(self) -> None:
        target = self.results_dir / SIGNATURE_FILE
        temporary = target.with_name(f".{SIGNATURE_FILE}.{os.getpid()}.tmp")
        temporary.write_text(json.dumps(self.signatures, indent=1, sort_keys=True) + "\n")
        os.replace(temporary, target)


def verify(results_dir: Path, experiment_dir: Path, key: bytes) -> dict[str, list[str]]:
    """Check every file of ``experiment_dir`` that Ray may unpickle against ``ray-state.sig``
    (before Ray reads any of them); return the signatures. ConfigError (one line) otherwise."""
    refuse = "; Ray's pickles there are not loaded: resume only results dirs your own sweeps wrote"
    try:
        signatures = json.loads((results_dir / SIGNATURE_FILE).read_text())
        assert isinstance(signatures, dict)
    except (OSError, ValueError, AssertionError):
        raise ConfigError(f"--resume: {results_dir} has no valid {SIGNATURE_FILE} (written by another user, by a "
                          f"hybrid-hpo without signatures, or altered){refuse}") from None
    for relpath, path in _ray_files(experiment_dir):
        if _digest(key, relpath, path.read_bytes()) not in signatures.get(relpath, ()):
            raise ConfigError(f"--resume: {path} is not signed by your key {key_path()} (written by someone else "
                              f"or changed since){refuse}")
    return signatures


class _Session:
    signer: RayStateSigner | None = None
    on_restore: Callable[[Any], None] | None = None


@contextmanager
def signing(signer: RayStateSigner, on_restore: Callable[[Any], None] | None = None) -> Iterator[None]:
    """While the ``with`` block runs ``Tuner.fit``, each experiment snapshot is signed by ``signer``
    and ``on_restore`` gets the search generator once Ray restored it from its pickle (``--resume``)."""
    _Session.signer, _Session.on_restore = signer, on_restore
    try:
        yield
    finally:
        _Session.signer = _Session.on_restore = None


class SignedSearchGenerator(SearchGenerator):
    """Ray's SearchGenerator, hooked into the experiment snapshot: it saves last of Ray's driver
    state (after ``experiment_state-*.json`` and the searcher's pickle), so its save signs the
    whole staging folder before Ray copies it into the results dir. The key is never stored here
    (this object is pickled into ``tuner.pkl``): the active :func:`signing` session holds it."""

    def save_to_dir(self, dirpath: str, session_str: str) -> None:
        super().save_to_dir(dirpath, session_str)
        if _Session.signer is not None:
            _Session.signer.sign_tree(Path(dirpath))

    def restore_from_dir(self, dirpath: str) -> None:
        super().restore_from_dir(dirpath)
        if _Session.on_restore is not None:
            _Session.on_restore(self)
