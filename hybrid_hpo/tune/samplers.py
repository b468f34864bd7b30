"""The outer search's samplers: the one list of their names (spec files, the Python API) and the
Optuna sampler each name builds. Optuna is imported only when a sampler is built."""
from __future__ import annotations

import typing
from typing import TYPE_CHECKING, Literal

from hybrid_hpo.errors import ConfigError

if TYPE_CHECKING:
    from optuna.samplers import BaseSampler

SamplerName = Literal["tpe", "gp"]
"""A sampler name, as a type (the ``sampler`` field of sweep and comparison files)."""
SAMPLERS: tuple[str, ...] = typing.get_args(SamplerName)


def make_sampler(sampler: str, seed: int | None, n_startup_trials: int | None) -> "BaseSampler":
    """TPE (constant liar, so concurrent trials do not get the same suggestion) or GP."""
    import optuna

    startup = {} if n_startup_trials is None else {"n_startup_trials": n_startup_trials}
    if sampler == "tpe":
        return optuna.samplers.TPESampler(seed=seed, constant_liar=True, **startup)
    if sampler == "gp":
        return optuna.samplers.GPSampler(seed=seed, **startup)
    raise ConfigError(f"sampler: unknown sampler {sampler!r}; choose one of {', '.join(SAMPLERS)}")
