"""Per-unit dropout rates, tuned through a continuous relaxation: Gaussian dropout.

The model's dropout sites (:class:`hybrid_hpo.nn.HyperDropout` modules, found by
:func:`hybrid_hpo.nn.dropout_sites` in any model: after each hidden activation of the built-in
``mlp``; after the embedding and after the LSTM of ``lstm_lm``; wherever a user put them in their
own model) multiply activations h by a scale. In training this
family sets, for unit u of a site,

    scale_u = 1 + σ_u · ε,   ε ~ N(0, 1),   σ_u² = p_u / (1 − p_u),   p_u = sigmoid(λ_u),

the Gaussian relaxation of dropout with drop rate p_u (Srivastava et al. 2014; same mean and
variance as Bernoulli dropout with inverted scaling, so evaluation needs no rescaling). With
σ_u = exp(λ_u / 2) the loss is a smooth function of λ for a fixed draw ε (reparametrisation), so
the IFT applies: within one hypergradient L_T is built once with one draw, and every
Hessian-vector product differentiates that same graph, so L_T is a deterministic function of (w, λ).
ε is drawn per example and unit (``mlp``) or per sequence and unit, shared over time (``lstm_lm``,
variational dropout), from the family's seeded CPU generator (part of the state: runs continue bit
for bit). Prediction and L_V use no dropout (the gates keep their buffer of ones).

λ: one tensor per site, named like the site's buffer (e.g. ``"3.scale"``), shaped like the units
(``(width,)``); λ starts at logit(``init_dropout``).
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from hybrid_hpo.errors import ConfigError
from hybrid_hpo.hyper.base import Batch, FamilyContext, FamilyOptions, HyperFamily, ModelFn
from hybrid_hpo.models import has_dropout_sites
from hybrid_hpo.nn import dropout_sites
from hybrid_hpo.rules import Range, setting

if TYPE_CHECKING:
    from hybrid_hpo.config import RunConfig
    from hybrid_hpo.splits import DataSplits
    from hybrid_hpo.task.task import ExampleLoss

NO_SITES = ("{field}: the {family} family needs dropout sites, which {model} has not; use a built-in model "
            "with sites (mlp, lstm_lm) or put hybrid_hpo.nn.HyperDropout(units) modules into your own model")

PICTURE = "dropout_rates_by_layer.png"
_SEED_OFFSET = 0x0D50  # the generator's seed is config.seed + this (independent of the loop's stream)


@dataclass(frozen=True)
class DropoutOptions(FamilyOptions):
    """Options of ``dropout``."""

    init_dropout: float = setting(0.1, "initial drop rate", Range(0, 1, open_low=True, open_high=True))


class UnitDropout(HyperFamily):
    """Gaussian dropout with one learned rate per unit (see the module docstring).

    Args:
        sites: site buffer name -> site shape (units last), from :func:`dropout_sites`.
        like: a weight tensor giving λ's dtype and device.
        init_dropout: initial drop rate of every unit, in (0, 1).
        seed: seed of the noise generator.
        loss: the task's per-example loss (default: cross-entropy).
    """

    name = "dropout"
    options = DropoutOptions

    def __init__(self, sites: Mapping[str, tuple[int, ...]], *, like: Tensor,
                 init_dropout: float = DropoutOptions.init_dropout, seed: int = 0,
                 loss: ExampleLoss | None = None) -> None:
        super().__init__(loss)
        if not sites:
            raise ConfigError(NO_SITES.format(field="model", family=self.name, model="this model"))
        DropoutOptions(init_dropout=init_dropout)
        self.sites = {name: tuple(shape) for name, shape in sites.items()}
        logit = math.log(init_dropout / (1.0 - init_dropout))
        for name, shape in self.sites.items():
            self._register(name, torch.full((shape[-1],), logit, dtype=like.dtype, device=like.device))
        self._seed_generator(seed)

    @classmethod
    def from_config(cls, config: RunConfig, context: FamilyContext) -> UnitDropout:
        return cls(dropout_sites(context.model), like=next(iter(context.params.values())),
                   init_dropout=config.family_options["init_dropout"], seed=config.seed + _SEED_OFFSET,
                   loss=context.loss)

    @classmethod
    def validate_config(cls, config: RunConfig) -> None:
        if config.task is None and not has_dropout_sites(config.model):
            raise ConfigError(NO_SITES.format(field="model", family=cls.name, model=repr(config.model)))

    @staticmethod
    def rates(hparams: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Drop rate p = sigmoid(λ) per site, each shaped (units,)."""
        return {name: torch.sigmoid(raw) for name, raw in hparams.items()}

    def scales(self, hparams: Mapping[str, Tensor], batch_size: int) -> dict[str, Tensor]:
        """One noise draw: scale = 1 + exp(λ/2)·ε per site, shaped (batch_size, *site_shape)."""
        scales = {}
        for name, shape in self.sites.items():
            raw = hparams[name]
            noise = torch.randn((batch_size, *shape), generator=self.generator, dtype=raw.dtype)
            scales[name] = 1.0 + torch.exp(0.5 * raw) * noise.to(raw.device)
        return scales

    def train_loss(self, model_fn: ModelFn, params: Mapping[str, Tensor], hparams: Mapping[str, Tensor],
                   batch: Batch) -> Tensor:
        """Mean task loss of the model with one fresh Gaussian-dropout draw at every site."""
        x, y, _ = batch
        return self.data_loss(model_fn({**params, **self.scales(hparams, x.shape[0])}, x), y)

    def summaries(self, params: Mapping[str, Tensor]) -> dict[str, float]:
        """dropout_mean / _min / _max over all units, and dropout_mean_<site> per site (site = the
        gate's module name, e.g. ``dropout_mean_3`` or ``dropout_mean_embed_gate``)."""
        with torch.no_grad():
            rates = self.rates(self.hparams())
            every = torch.cat(list(rates.values()))
            stats = torch.stack([every.mean(), every.min(), every.max(), *(p.mean() for p in rates.values())])
            values = stats.tolist()
        out = {"dropout_mean": values[0], "dropout_min": values[1], "dropout_max": values[2]}
        out.update({f"dropout_mean_{_label(name)}": v for name, v in zip(rates, values[3:])})
        return out

    def render(self, params: Mapping[str, Tensor], directory: Path, data: DataSplits | None = None) -> list[Path]:
        """A histogram of the learned drop rates per layer (dropout site)."""
        from hybrid_hpo.pictures import histogram_by_group

        rates = self.rates({k: v.detach() for k, v in self.hparams().items()})
        groups = {f"site {_label(name)}": p for name, p in rates.items()}
        return [histogram_by_group(groups, Path(directory) / PICTURE, xlabel="drop rate p = sigmoid(λ)",
                                   bins=25, title="learned per-unit dropout rates by layer")]


def _label(site: str) -> str:
    return site.removesuffix(".scale").replace(".", "_")

