"""Shared plotting helpers for the pictures families draw (PNG, headless, no pyplot state).

Every helper builds a :class:`matplotlib.figure.Figure` directly (never ``pyplot``), so it works
without a display, in threads and in Ray workers, and leaks no global figures. Stable API:

    new_figure(width, height) -> Figure
    tight_layout(figure, title_inches=0.0)                  # room for a suptitle
    fixed_layout(figure, rows, cols, title_inches=0.0)     # fixed margins: one draw less than tight_layout
    save_figure(figure, path) -> Path                      # PNG, parent folders created
    histogram_by_group(groups, path, *, xlabel, log_x=False, bins=30, title=None) -> Path
    image_grid(images, path, *, ncols=None, row_labels=None, titles=None, title=None,
               symmetric=False) -> Path

Arrays may be torch tensors or NumPy arrays (anything ``numpy.asarray`` accepts after
``.detach().cpu()``).
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from hybrid_hpo.errors import ConfigError

_DPI = 80


def _numpy(values: Any) -> np.ndarray:
    """A float64 NumPy copy of a tensor or array-like."""
    if hasattr(values, "detach"):
        values = values.detach().cpu().double().numpy()
    return np.asarray(values, dtype=np.float64)


def new_figure(width: float, height: float) -> Any:
    """A pyplot-free matplotlib Figure of ``width`` x ``height`` inches."""
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=_DPI)


def tight_layout(figure: Any, title_inches: float = 0.0) -> None:
    """``figure.tight_layout`` leaving ``title_inches`` at the top free for a suptitle."""
    height = figure.get_size_inches()[1]
    figure.tight_layout(pad=0.3, rect=(0.0, 0.0, 1.0, 1.0 - title_inches / height))


def fixed_layout(figure: Any, rows: int, cols: int, *, title_inches: float = 0.0, left: float = 0.75,
                 right: float = 0.15, bottom: float = 0.55, top: float = 0.12, gap: float = 0.75) -> None:
    """Margins in inches around a ``rows`` x ``cols`` grid of axes with tick labels and axis labels
    (``gap``: between columns, for the next panel's y labels; rows share x, so 0.12 in between them).
    It saves the extra draw :func:`tight_layout` makes to measure the figure (~1/3 of the drawing time)."""
    width, height = figure.get_size_inches()
    panel_width = (width - left - right - (cols - 1) * gap) / cols
    panel_height = (height - bottom - top - title_inches - (rows - 1) * 0.12) / rows
    figure.subplots_adjust(left=left / width, right=1.0 - right / width, bottom=bottom / height,
                           top=1.0 - (top + title_inches) / height, wspace=gap / panel_width,
                           hspace=0.12 / panel_height)


def save_figure(figure: Any, path: str | Path) -> Path:
    """Write ``figure`` as a PNG to ``path`` (creating parent folders); returns the path."""
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ConfigError(f"path: pictures are PNG files, got {str(path)!r}; use a name ending in .png")
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="png")
    return path


def histogram_by_group(groups: Mapping[str, Any], path: str | Path, *, xlabel: str, log_x: bool = False,
                       bins: int = 30, title: str | None = None) -> Path:
    """One histogram per group (one row each, shared x axis), e.g. learned decays per layer.

    Args:
        groups: name -> values of any shape (flattened); at least one group, none empty.
        xlabel: the x-axis label (the quantity).
        log_x: logarithmic bins and axis (all values must then be > 0).
        bins: number of bins, shared by all groups.
    """
    if not groups:
        raise ConfigError("groups: histogram_by_group needs at least one group of values")
    arrays = {name: _numpy(values).reshape(-1) for name, values in groups.items()}
    empty = [name for name, values in arrays.items() if values.size == 0]
    if empty:
        raise ConfigError(f"groups: group {empty[0]!r} has no values; pass only non-empty groups")
    everything = np.concatenate(list(arrays.values()))
    low, high = float(everything.min()), float(everything.max())
    if log_x:
        if low <= 0:
            raise ConfigError(f"log_x: values must be > 0 for a log axis (min {low:g}); use log_x=False")
        edges = np.geomspace(low, high if high > low else low * 1.01, bins + 1)
    else:
        edges = np.linspace(low, high if high > low else low + 1.0, bins + 1)
    figure = new_figure(6.5, 1.2 + 1.1 * len(arrays))
    axes = figure.subplots(len(arrays), 1, sharex=True, squeeze=False)[:, 0]
    for ax, (name, values) in zip(axes, arrays.items()):
        ax.hist(values, bins=edges, color="tab:blue")
        ax.set_ylabel("count")
        ax.text(0.99, 0.9, f"{name}  (n={values.size}, median {np.median(values):.3g})",
                transform=ax.transAxes, ha="right", va="top", fontsize=8)
        if log_x:
            ax.set_xscale("log")
    axes[-1].set_xlabel(xlabel)
    if title:
        figure.suptitle(title)
    fixed_layout(figure, len(arrays), 1, title_inches=0.35 if title else 0.0)
    return save_figure(figure, path)


def image_grid(images: Any, path: str | Path, *, ncols: int | None = None, row_labels: Sequence[str] | None = None,
               titles: Sequence[str] | None = None, title: str | None = None, symmetric: bool = False) -> Path:
    """Draw ``images`` row-major in a grid and save it.

    Args:
        images: (N, C, H, W) or (N, H, W) images (C = 1 grey, C = 3 RGB), or (N, 1, L) / (N, L) 1-D
            signals, drawn as line plots.
        ncols: images per row (default: ceil(sqrt(N))).
        row_labels: one label per row (left of it), e.g. class names.
        titles: one small title per image.
        title: the figure title.
        symmetric: grey colour scale centred at 0 (for signed maps); otherwise one scale
            [min, max] over all images, so brightness compares across the grid.
    """
    array = _numpy(images)
    if array.ndim == 4 and array.shape[1] == 1:
        array = array[:, 0]
    signals = array.ndim == 2 or (array.ndim == 3 and array.shape[1] == 1)
    if signals:
        array = array.reshape(array.shape[0], -1)
    elif array.ndim == 4 and array.shape[1] == 3:
        array = array.transpose(0, 2, 3, 1)
    elif array.ndim != 3:
        raise ConfigError(f"images: expected (N, C, H, W) with C in (1, 3), (N, H, W) or (N, L), "
                          f"got shape {tuple(array.shape)}")
    count = array.shape[0]
    if count == 0:
        raise ConfigError("images: image_grid needs at least one image")
    ncols = ncols or math.ceil(math.sqrt(count))
    nrows = math.ceil(count / ncols)
    for name, labels, expected in (("row_labels", row_labels, nrows), ("titles", titles, count)):
        if labels is not None and len(labels) != expected:
            raise ConfigError(f"{name}: got {len(labels)} labels for {expected} {name.split('_')[0]}s; pass one each")
    low, high = float(array.min()), float(array.max())
    if symmetric:
        high = max(abs(low), abs(high)) or 1.0
        low = -high
    elif high <= low:
        high = low + 1.0
    figure = new_figure(1.0 * ncols + (0.6 if row_labels else 0.2), 1.0 * nrows + (0.5 if title else 0.1))
    axes = figure.subplots(nrows, ncols, squeeze=False)
    for index, ax in enumerate(axes.reshape(-1)):
        ax.set_xticks([])
        ax.set_yticks([])
        if index >= count:
            ax.axis("off")
            continue
        if signals:
            ax.plot(array[index], color="black", linewidth=0.8)
            ax.set_ylim(low, high)
        elif array.ndim == 4:
            ax.imshow(np.clip((array[index] - low) / (high - low), 0.0, 1.0), interpolation="nearest")
        else:
            ax.imshow(array[index], cmap="RdBu_r" if symmetric else "gray", vmin=low, vmax=high,
                      interpolation="nearest")
        if titles is not None:
            ax.set_title(titles[index], fontsize=7)
        if row_labels is not None and index % ncols == 0:
            ax.set_ylabel(row_labels[index // ncols], fontsize=8)
    if title:
        figure.suptitle(title, fontsize=10)
    tight_layout(figure, 0.35 if title else 0.0)
    return save_figure(figure, path)
