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
SPLITS: tuple[str, ...] = ("train", "val", "test")
CURVES_MARGINS = {"left": 0.65, "top": 0.1, "gap": 0.85}  # inches (hybrid_hpo.pictures.fixed_layout)


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


def curve_kinds(keys: Sequence[str]) -> list[str]:
    """The metrics with a curve, in order: the suffixes of the ``train_*`` keys without the balanced
    accuracy, e.g. ["loss", "acc"] for a classification task, ["loss", "mae"] for a regression task
    with a metric."""
    return [key.removeprefix("train_") for key in keys if key.startswith("train_") and key != "train_balanced_acc"]


def render_curves(history: Sequence[Mapping[str, float]], path: str | Path) -> Path:
    """One panel per metric (loss first, then the task's metrics) with a curve per split present
    (train / val / test) over the epochs, as a PNG. ``history``: rows of ``epoch`` and
    ``<split>_<metric>`` keys."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    from hybrid_hpo.pictures import fixed_layout

    epochs = [row["epoch"] for row in history]
    kinds = curve_kinds(list(history[0]))
    figure = Figure(figsize=(4 * len(kinds), 3.2), dpi=80)
    for column, kind in enumerate(kinds):
        axes = figure.add_subplot(1, len(kinds), column + 1)
        for split in SPLITS:
            if f"{split}_{kind}" in history[0]:
                axes.plot(epochs, [row[f"{split}_{kind}"] for row in history], marker=".", label=split)
        axes.set_xlabel("epoch")
        axes.set_ylabel(kind.replace("_", " "))
        axes.grid(alpha=0.3)
        axes.legend()
    fixed_layout(figure, 1, len(kinds), **CURVES_MARGINS)
    figure.savefig(path)
    return Path(path)
