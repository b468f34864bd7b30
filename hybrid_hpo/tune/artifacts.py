"""Trial pictures as Optuna artifacts.

A finished trial's last checkpoint (persisted by Ray under ``<results>/tune/<trial dir>/checkpoint_*``,
wherever the trial ran) holds ``pictures/*.png``; :func:`upload_pictures` attaches them to the
trial's Optuna trial through a ``FileSystemArtifactStore`` in ``<results>/artifacts``, which
``hybrid-hpo dashboard --artifact-dir`` hands to optuna-dashboard.
"""
from __future__ import annotations

import logging
import re
from pathlib import Path

import optuna
from optuna.artifacts import FileSystemArtifactStore, upload_artifact

from hybrid_hpo.tune.pictures import PICTURES_DIR

logger = logging.getLogger(__name__)

_CHECKPOINT = re.compile(r"checkpoint_(\d+)")


def last_checkpoint(experiment_dir: str | Path, ray_trial_id: str) -> Path | None:
    """The newest ``checkpoint_NNNNNN`` folder of the Ray trial ``ray_trial_id``, or None."""
    found = [path for trial_dir in Path(experiment_dir).glob(f"*_{ray_trial_id}_*") if trial_dir.is_dir()
             for path in trial_dir.glob("checkpoint_*") if _CHECKPOINT.fullmatch(path.name)]
    return max(found, key=lambda p: int(_CHECKPOINT.fullmatch(p.name).group(1)), default=None)


def upload_pictures(trial: optuna.Trial, checkpoint: Path, artifact_dir: str | Path) -> list[str]:
    """Upload ``<checkpoint>/pictures/*.png`` to ``trial`` (still running); returns the file names."""
    Path(artifact_dir).mkdir(parents=True, exist_ok=True)
    store = FileSystemArtifactStore(str(artifact_dir))
    names = []
    for picture in sorted((checkpoint / PICTURES_DIR).glob("*.png")):
        upload_artifact(artifact_store=store, file_path=str(picture), study_or_trial=trial)
        names.append(picture.name)
    return names
