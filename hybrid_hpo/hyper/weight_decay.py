"""Weight decay as a hyperparameter: one decay, one per weight tensor, or one per weight.

Training loss (the convention everywhere in hybrid-hpo):

    L_T(w, λ) = mean_b ℓ(f(x_b; w), y_b) + 1/2 Σ_{n ∈ decayed} Σ_i decay_{n,i} · w_{n,i}²

with ℓ the task's per-example loss (cross-entropy by default)

and decay = softplus(raw) > 0, raw the unconstrained λ the hyper optimizer steps.
Decayed tensors are the parameters with ``ndim >= 2`` (Linear weights, conv kernels); biases and
normalisation scales/shifts (1-D) are not decayed, the usual practice, so they carry no λ.

Granularity (λ shapes; T = number of decayed tensors, P_n = shape of tensor n):
  global      one λ:           {"decay": ()}
  per_tensor  one per tensor:  {"decay": (T,)}, in the order of :attr:`WeightDecay.decayed`
  per_weight  one per weight:  {n: P_n for each decayed n}  — as many λ as decayed weights
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor

from hybrid_hpo.errors import ConfigError
from hybrid_hpo.hyper.base import Batch, FamilyContext, FamilyOptions, HyperFamily, ModelFn
from hybrid_hpo.hyper.penalty import decayed_tensors
from hybrid_hpo.rules import OneOf, Range, setting

if TYPE_CHECKING:
    from hybrid_hpo.config import RunConfig
    from hybrid_hpo.splits import DataSplits
    from hybrid_hpo.task.task import ExampleLoss

GRANULARITIES: tuple[str, ...] = ("global", "per_tensor", "per_weight")
HISTOGRAM_FILE = "weight_decay_histogram.png"


def inverse_softplus(value: float) -> float:
    """raw with softplus(raw) = value > 0: log(expm1(value)), computed stably."""
    return value + math.log(-math.expm1(-value))


@dataclass(frozen=True)
class WeightDecayOptions(FamilyOptions):
    """Options of ``weight_decay``."""

    granularity: str = setting("per_weight", "one decay for all weights, per tensor, or per weight", OneOf(GRANULARITIES))
    init_decay: float = setting(1e-3, "initial decay", Range(0, open_low=True))


class WeightDecay(HyperFamily):
    """L2 penalty with learned, positive decays (see the module docstring for the math).

    Args:
        params: the model's named parameters (only shapes, dtype and device are used).
        granularity: "global", "per_tensor" or "per_weight".
        init_decay: initial value of every decay (> 0).
        loss: the task's per-example loss (default: cross-entropy).
    """

    name = "weight_decay"
    options = WeightDecayOptions

    def __init__(self, params: Mapping[str, Tensor], *, granularity: str = WeightDecayOptions.granularity,
                 init_decay: float = WeightDecayOptions.init_decay, loss: ExampleLoss | None = None) -> None:
        super().__init__(loss)
        WeightDecayOptions(granularity=granularity, init_decay=init_decay)
        self.granularity = granularity
        self.decayed: tuple[str, ...] = decayed_tensors(params)
        if not self.decayed:
            raise ConfigError("model: weight_decay needs a parameter with ndim >= 2 to decay; the model has none")
        first = params[self.decayed[0]]
        raw = inverse_softplus(init_decay)
        if granularity == "global":
            self._register("decay", torch.full((), raw, dtype=first.dtype, device=first.device))
        elif granularity == "per_tensor":
            self._register("decay", torch.full((len(self.decayed),), raw, dtype=first.dtype, device=first.device))
        else:
            for name in self.decayed:
                self._register(name, torch.full_like(params[name], raw))

    @classmethod
    def from_config(cls, config: RunConfig, context: FamilyContext) -> WeightDecay:
        return cls(context.params, **config.family_options, loss=context.loss)

    def decays(self, hparams: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """decay for each decayed tensor name, broadcastable to that tensor: softplus(raw)."""
        if self.granularity == "per_weight":
            return {name: F.softplus(hparams[name]) for name in self.decayed}
        decay = F.softplus(hparams["decay"])
        if self.granularity == "global":
            return {name: decay for name in self.decayed}
        return dict(zip(self.decayed, decay.unbind()))

    def penalty(self, params: Mapping[str, Tensor], hparams: Mapping[str, Tensor]) -> Tensor:
        """1/2 Σ decay ⊙ w² over the decayed tensors (a scalar tensor)."""
        terms = [(decay * params[name].square()).sum() for name, decay in self.decays(hparams).items()]
        return 0.5 * torch.stack(terms).sum()

    def train_loss(self, model_fn: ModelFn, params: Mapping[str, Tensor], hparams: Mapping[str, Tensor],
                   batch: Batch) -> Tensor:
        x, y, _ = batch
        return self.data_loss(self.predict(model_fn, params, hparams, x), y) + self.penalty(params, hparams)

    def summaries(self, params: Mapping[str, Tensor]) -> dict[str, float]:
        """decay_mean / decay_min / decay_max over the λ entries, and the penalty's value."""
        with torch.no_grad():
            hparams = self.hparams()
            values = torch.cat([F.softplus(t).reshape(-1) for t in hparams.values()])
            stats = torch.stack([values.mean(), values.min(), values.max(), self.penalty(params, hparams)])
            mean, low, high, penalty = stats.tolist()
        return {"decay_mean": mean, "decay_min": low, "decay_max": high, "penalty": penalty}

    def render(self, params: Mapping[str, Tensor], directory: Path, data: DataSplits | None = None) -> list[Path]:
        """``weight_decay_histogram.png``: the learned decays of each decayed tensor (one row per
        layer, log-x axis)."""
        from hybrid_hpo.pictures import histogram_by_group

        groups, dropped = {}, 0
        with torch.no_grad():
            for name, decay in self.decays(self.hparams()).items():
                values = decay.expand_as(params[name]).detach().cpu().reshape(-1)
                finite = values[torch.isfinite(values)]
                dropped += values.numel() - finite.numel()
                if finite.numel():  # softplus underflows to 0 for very negative raw λ: floor it for the log axis
                    groups[name] = finite.clamp_min(torch.finfo(finite.dtype).tiny)
        if not groups:
            return []
        title = f"learned weight decays ({self.granularity}, {self.num_hparams} λ)"
        if dropped:
            title += f"; {dropped} non-finite not shown"
        return [histogram_by_group(groups, Path(directory) / HISTOGRAM_FILE, xlabel="decay (softplus(raw))",
                                   log_x=True, title=title)]
