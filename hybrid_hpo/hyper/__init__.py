"""Hyperparameter families: kinds of λ tuned by hypergradient (see :mod:`hybrid_hpo.hyper.base`).

To add a family: subclass :class:`HyperFamily` in its own module and add it to :data:`FAMILIES`.
"""
from __future__ import annotations

from typing import Any

from hybrid_hpo.errors import ConfigError
from hybrid_hpo.hyper.augment import Augment, FixedAugment
from hybrid_hpo.hyper.base import Batch, FamilyContext, HyperFamily, ModelFn
from hybrid_hpo.hyper.distill import Distill
from hybrid_hpo.hyper.fixed import FixedRegularization
from hybrid_hpo.hyper.dropout import UnitDropout
from hybrid_hpo.hyper.reweight import Reweight
from hybrid_hpo.hyper.weight_decay import GRANULARITIES, WeightDecay

FAMILIES: dict[str, type[HyperFamily]] = {"weight_decay": WeightDecay, "reweight": Reweight, "dropout": UnitDropout}
FAMILIES.update({"augment": Augment, "fixed_augment": FixedAugment, "distill": Distill, "fixed": FixedRegularization})


def family_class(name: str) -> type[HyperFamily]:
    """The family class registered as ``name``; ConfigError naming ``family`` when unknown."""
    if name not in FAMILIES:
        raise ConfigError(f"family: unknown value {name!r}; choose one of {', '.join(FAMILIES)}")
    return FAMILIES[name]


def make_family(name: str, **kwargs: Any) -> HyperFamily:
    """``FAMILIES[name](**kwargs)``, e.g. ``make_family("weight_decay", params=..., granularity="global")``."""
    return family_class(name)(**kwargs)


__all__ = ["Augment", "Distill", "FixedAugment", "FixedRegularization",
           "FAMILIES", "GRANULARITIES", "Batch", "FamilyContext", "HyperFamily", "ModelFn", "WeightDecay",
           "family_class", "make_family"]
