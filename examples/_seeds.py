"""Shared by the experiment scripts of examples/: run one setting over seeds, summarise, print rows.

A row is one setting (a RunConfig mapping without the seed) run once per seed on the CPU; the
final epoch's metrics of each run are kept with its wall time. :func:`command` prints the
``hybrid-hpo run`` line that reproduces one seed of a row.
"""
from __future__ import annotations

import statistics
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

NO_HYPER_STEPS = 10**9
"""``inner_steps`` value that never reaches a hyper step: the baseline with λ fixed at its init."""


def run_seeds(settings: Mapping[str, Any], seeds: Iterable[int], pictures: Path | None = None) -> list[dict]:
    """Train ``settings`` once per seed; returns each run's final metrics plus ``wall_s`` and
    ``sizes`` (examples in train, val and, if there is one, the selection split sel). With
    ``pictures``, the first seed's family pictures go to that folder."""
    from hybrid_hpo.bilevel import BilevelTrainer
    from hybrid_hpo.config import RunConfig

    finals = []
    for index, seed in enumerate(seeds):
        config = RunConfig.from_mapping({**settings, "seed": seed, "device": "cpu"})
        start = time.perf_counter()
        trainer = BilevelTrainer(config)
        final = dict(trainer.fit(progress=False)[-1])
        final["wall_s"] = time.perf_counter() - start
        final["sizes"] = {name: len(split) for name, split in (("train", trainer.data.train), ("val", trainer.data.val),
                                                               ("sel", trainer.data.selection)) if split is not None}
        finals.append(final)
        if pictures is not None and index == 0:
            trainer.family.render(dict(trainer.model.named_parameters()), pictures, trainer.data)
    return finals


def mean_std(finals: list[dict], key: str, scale: float = 1.0, digits: int = 1) -> str:
    """"mean ± std" of ``key`` over runs (sample std), times ``scale``."""
    values = [scale * f[key] for f in finals]
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):.{digits}f} ± {spread:.{digits}f}"


def print_commands(commands: list[str], seeds: Iterable[int]) -> None:
    """After a table: the ``hybrid-hpo run`` line of one seed of each row (``commands``)."""
    print("\nOne seed of each row (seeds " + " ".join(map(str, seeds)) + "):")
    print("\n".join(commands))


def command(settings: Mapping[str, Any], seed: int = 0) -> str:
    """The ``hybrid-hpo run`` command line of one seed of ``settings``."""
    flags = []
    for key, value in {**settings, "seed": seed, "device": "cpu"}.items():
        text = " ".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)
        if key.startswith("solver."):  # a solver option
            flags.append(f"--solver-option {key.removeprefix('solver.')}={text}")
        else:
            flags.append(f"--{key.replace('_', '-')} {text}")
    return "hybrid-hpo run " + " ".join(flags) + " --quiet"
