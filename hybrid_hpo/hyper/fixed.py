"""``fixed``: plain training with a fixed L2 and fixed dropout, no λ (the BO-only baseline).

    L_T(w) = mean_b ℓ(f_m(x_b; w), y_b) + 1/2 · c · ||w||²,   c = ``fixed_decay``

where f_m is the model with (inverted) Bernoulli dropout of rate p = ``fixed_dropout`` at every
dropout site (:func:`hybrid_hpo.nn.dropout_sites`; after each hidden activation of ``mlp``), ℓ the
task's per-example loss:
unit u of example b is scaled by m_bu / (1 − p), m_bu ~ Bernoulli(1 − p), so evaluation needs no
rescaling. Prediction and L_V use no dropout. The masks come from the family's seeded CPU
generator (checkpointed), so runs are reproducible.

``num_hparams == 0``: the bilevel loop takes no hyper steps. This is what a low-dimensional
search (Optuna through Ray Tune over ``inner_lr``, ``fixed_decay``, ``fixed_dropout``) tunes,
with no hypergradients, in ``hybrid-hpo compare``.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from hybrid_hpo.errors import ConfigError
from hybrid_hpo.hyper.base import Batch, FamilyContext, FamilyOptions, HyperFamily, ModelFn
from hybrid_hpo.hyper.dropout import NO_SITES
from hybrid_hpo.hyper.penalty import FIXED_DECAY, fixed_decay_setting, with_fixed_decay
from hybrid_hpo.models import has_dropout_sites
from hybrid_hpo.nn import dropout_sites
from hybrid_hpo.rules import Range, setting

if TYPE_CHECKING:
    from hybrid_hpo.config import RunConfig
    from hybrid_hpo.task.task import ExampleLoss

_SEED_OFFSET = 0xF1ED  # the mask generator's seed is config.seed + this


@dataclass(frozen=True)
class FixedOptions(FamilyOptions):
    """Options of ``fixed``."""

    fixed_decay: float = fixed_decay_setting()
    fixed_dropout: float = setting(0.0, "drop rate of plain training", Range(0, 1, open_high=True))


class FixedRegularization(HyperFamily):
    """No λ: fixed L2 ``fixed_decay`` and fixed Bernoulli dropout ``fixed_dropout`` (module docstring).

    Args:
        sites: dropout site buffer name -> site shape (units last), from :func:`dropout_sites`.
        fixed_decay: c >= 0 of the L2 term.
        fixed_dropout: drop rate p in [0, 1); 0 disables dropout.
        seed: seed of the mask generator.
        loss: the task's per-example loss (default: cross-entropy).
    """

    name = "fixed"
    options = FixedOptions
    tunable = False

    def __init__(self, sites: Mapping[str, tuple[int, ...]], *, fixed_decay: float = FIXED_DECAY,
                 fixed_dropout: float = FixedOptions.fixed_dropout, seed: int = 0,
                 loss: ExampleLoss | None = None) -> None:
        super().__init__(loss)
        FixedOptions(fixed_decay=fixed_decay, fixed_dropout=fixed_dropout)
        if fixed_dropout > 0 and not sites:
            raise ConfigError(NO_SITES.format(field="fixed_dropout", family=self.name, model="this model") + ", or fixed_dropout 0")
        self.sites = {name: tuple(shape) for name, shape in sites.items()}
        self.fixed_decay, self.fixed_dropout = float(fixed_decay), float(fixed_dropout)
        self._seed_generator(seed + _SEED_OFFSET)

    @classmethod
    def from_config(cls, config: RunConfig, context: FamilyContext) -> FixedRegularization:
        return cls(dropout_sites(context.model), **config.family_options, seed=config.seed, loss=context.loss)

    @classmethod
    def validate_config(cls, config: RunConfig) -> None:
        dropout = config.family_options["fixed_dropout"]
        if dropout > 0 and config.task is None and not has_dropout_sites(config.model):
            raise ConfigError(NO_SITES.format(field="fixed_dropout", family=cls.name, model=repr(config.model))
                              + ", or fixed_dropout 0")

    def masks(self, batch_size: int, like: Tensor) -> dict[str, Tensor]:
        """One draw of inverted-dropout scales m / (1 − p) per site, shaped (batch_size, *site_shape)."""
        keep = 1.0 - self.fixed_dropout
        return {name: torch.bernoulli(torch.full((batch_size, *shape), keep), generator=self.generator)
                .div_(keep).to(device=like.device, dtype=like.dtype) for name, shape in self.sites.items()}

    def train_loss(self, model_fn: ModelFn, params: Mapping[str, Tensor], hparams: Mapping[str, Tensor],
                   batch: Batch) -> Tensor:
        x, y, _ = batch
        masks = self.masks(x.shape[0], next(iter(params.values()))) if self.fixed_dropout > 0 else {}
        loss = self.data_loss(model_fn({**params, **masks}, x), y)
        return with_fixed_decay(loss, params, self.fixed_decay)

    def summaries(self, params: Mapping[str, Tensor]) -> dict[str, float]:
        return {"fixed_decay": self.fixed_decay, "fixed_dropout": self.fixed_dropout}

