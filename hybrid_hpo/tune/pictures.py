"""Pictures of a trial for people: written into each checkpoint under ``pictures/*.png``.

The driver uploads the pictures of a finished trial's last checkpoint to its Optuna trial as
artifacts (:mod:`hybrid_hpo.tune.artifacts`), so optuna-dashboard shows them next to the trial.
Checkpoints are persisted by Ray to the sweep's storage path, so this works for trials that ran on
another node of a cluster.
"""
from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

PICTURES_DIR = "pictures"
CURVES_FILE = "curves.png"
CURVE_KEYS: tuple[str, ...] = ("train_loss", "val_loss", "test_loss", "train_acc", "val_acc", "test_acc")


def render_trial(trainer: Any, history: Sequence[Mapping[str, float]], checkpoint_dir: str | Path) -> list[Path]:
    """Write ``<checkpoint_dir>/pictures/*.png``: the learning curves, plus whatever the trainer's
    own ``render(directory) -> list[Path]`` draws (e.g. the weight-decay histogram) when it has one.

    Pictures are for people: a picture that cannot be drawn (e.g. a histogram of non-finite
    hyperparameters after a diverged run) is logged and skipped, never fails the checkpoint.
    """
    directory = Path(checkpoint_dir) / PICTURES_DIR
    directory.mkdir(parents=True, exist_ok=True)
    written = [render_curves(history, directory / CURVES_FILE)] if history else []
    render = getattr(trainer, "render", None)
    if callable(render):
        try:
            written += [Path(p) for p in render(directory)]
        except Exception as error:  # noqa: BLE001 - any drawing failure; the checkpoint must still be written
            logger.warning("trainer pictures skipped: %s: %s", type(error).__name__, error)
    return written


def render_curves(history: Sequence[Mapping[str, float]], path: str | Path) -> Path:
    """Loss (left) and accuracy (right) per epoch for the train / val / test splits, as a PNG."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    epochs = [row["epoch"] for row in history]
    figure = Figure(figsize=(8, 3.2), dpi=80)
    for column, kind in enumerate(("loss", "acc")):
        axes = figure.add_subplot(1, 2, column + 1)
        for split in ("train", "val", "test"):
            axes.plot(epochs, [row[f"{split}_{kind}"] for row in history], marker=".", label=split)
        axes.set_xlabel("epoch")
        axes.set_ylabel(f"cross-entropy {kind}" if kind == "loss" else "accuracy")
        axes.grid(alpha=0.3)
        axes.legend()
    figure.tight_layout()
    figure.savefig(path)
    return Path(path)
