"""``fixed``: plain training with fixed regularisers, no λ (the BO-only baselines' family).

    L_T(w) = mean_b a_{y_b} · ℓ(f_m(x_b; w), y_b) + 1/2 · Σ_n c_n · ||w_n||²

over the parameter tensors w_n, where

* c_n, the tensor's L2 decay: ``layer_decay[k]`` when w_n is the k-th *decayed* tensor
  (:func:`~hybrid_hpo.hyper.penalty.decayed_tensors`: ``ndim >= 2``, the tensors ``weight_decay``
  decays; for ``mlp`` one weight matrix per layer) and ``layer_decay`` is given, else
  ``fixed_decay`` (so with ``layer_decay`` given, ``fixed_decay`` decays only biases and other 1-D
  tensors; ``fixed_decay: 0`` leaves them undecayed, as ``weight_decay`` does). ``layer_decay`` has
  exactly one entry per decayed tensor; a search tunes entry k as ``layer_decay.k``, one scalar each.
* a_c, the loss weight of class c (classification; 1 when ``class_weight_power`` p is 0):
  a_c ∝ n_c^(−p) with n_c the training examples of class c, normalised to mean 1 over the training
  examples, Σ_c n_c · a_c = N, so a_c = N · n_c^(−p) / Σ_c' n_c'^(1−p). p = 1 is scikit-learn's
  ``class_weight="balanced"`` (a_c = N / (C · n_c)); p = 0 is plain training. A batch's loss is the
  plain mean of the weighted losses, so an epoch's sum has the scale of the unweighted one.
* f_m is the model with (inverted) Bernoulli dropout of rate p_d = ``fixed_dropout`` at every
  dropout site (:func:`hybrid_hpo.nn.dropout_sites`; after each hidden activation of ``mlp``), ℓ the
  task's per-example loss: unit u of example b is scaled by m_bu / (1 − p_d), m_bu ~ Bernoulli(1 − p_d),
  so evaluation needs no rescaling.

Prediction and L_V use no dropout and no class weights. The masks come from the family's seeded
CPU generator (checkpointed), so runs are reproducible.

``num_hparams == 0``: the bilevel loop takes no hyper steps. This is what a low-dimensional
search (Optuna through Ray Tune over ``inner_lr``, ``fixed_decay`` or ``layer_decay.k``,
``fixed_dropout``, ``class_weight_power``) tunes, with no hypergradients, in ``hybrid-hpo compare``:
the same kinds of regulariser as the IFT families (per-tensor decays, class-level loss weights,
dropout) at a dimension a Bayesian search handles.
"""
from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from hybrid_hpo.errors import ConfigError
from hybrid_hpo.hyper.base import Batch, FamilyContext, FamilyOptions, HyperFamily, ModelFn
from hybrid_hpo.hyper.dropout import NO_SITES
from hybrid_hpo.hyper.penalty import FIXED_DECAY, decayed_tensors, fixed_decay_setting, l2_penalty
from hybrid_hpo.models import build_model, has_dropout_sites
from hybrid_hpo.nn import dropout_sites
from hybrid_hpo.rules import Each, Range, setting

if TYPE_CHECKING:
    from hybrid_hpo.config import RunConfig
    from hybrid_hpo.task.task import ExampleLoss

_SEED_OFFSET = 0xF1ED  # the mask generator's seed is config.seed + this


@dataclass(frozen=True)
class FixedOptions(FamilyOptions):
    """Options of ``fixed``."""

    fixed_decay: float = fixed_decay_setting()
    fixed_dropout: float = setting(0.0, "drop rate of plain training", Range(0, 1, open_high=True))
    layer_decay: tuple[float, ...] = setting(
        (), "one L2 decay per weight tensor (ndim >= 2), in parameter order, replacing fixed_decay "
            "there; item k alone as layer_decay.k (empty: fixed_decay everywhere)", Each(Range(0)))
    class_weight_power: float = setting(
        0.0, "loss weight of class c ∝ n_c^-p over the training examples, mean 1 (0: none, 1: balanced)",
        Range(0, 1))


class FixedRegularization(HyperFamily):
    """No λ: fixed per-tensor L2, class loss weights and Bernoulli dropout (module docstring).

    Args:
        sites: dropout site buffer name -> site shape (units last), from :func:`dropout_sites`.
        fixed_decay: c >= 0 of the L2 term of every tensor without a ``layer_decay`` entry.
        fixed_dropout: drop rate p in [0, 1); 0 disables dropout.
        layer_decay: one decay >= 0 per name of ``decayed``, in that order; empty: none.
        class_weight_power: p in [0, 1] of the class weights; 0: none.
        decayed: names of the decayed tensors (:func:`decayed_tensors` of the model's parameters).
        class_counts: training examples per class, (C,); needed when ``class_weight_power`` > 0.
        seed: seed of the mask generator.
        loss: the task's per-example loss (default: cross-entropy).
    """

    name = "fixed"
    options = FixedOptions
    tunable = False

    def __init__(self, sites: Mapping[str, tuple[int, ...]], *, fixed_decay: float = FIXED_DECAY,
                 fixed_dropout: float = FixedOptions.fixed_dropout, layer_decay: Sequence[float] = (),
                 class_weight_power: float = FixedOptions.class_weight_power, decayed: Sequence[str] = (),
                 class_counts: Tensor | None = None, seed: int = 0, loss: ExampleLoss | None = None) -> None:
        super().__init__(loss)
        FixedOptions(fixed_decay=fixed_decay, fixed_dropout=fixed_dropout, layer_decay=tuple(layer_decay),
                     class_weight_power=class_weight_power)
        if fixed_dropout > 0 and not sites:
            raise ConfigError(NO_SITES.format(field="fixed_dropout", family=self.name, model="this model") + ", or fixed_dropout 0")
        if layer_decay and len(layer_decay) != len(decayed):
            raise ConfigError(_count_message(len(layer_decay), len(decayed), "this model"))
        self.sites = {name: tuple(shape) for name, shape in sites.items()}
        self.fixed_decay, self.fixed_dropout = float(fixed_decay), float(fixed_dropout)
        self.layer_decay = dict(zip(decayed, map(float, layer_decay)))
        """Decayed tensor name -> its own decay (empty: every tensor has ``fixed_decay``)."""
        self.class_weight_power = float(class_weight_power)
        self.class_weights = None if class_weight_power == 0 else class_loss_weights(class_counts, class_weight_power)
        """a_c per class, (C,) float64 on the CPU (None: unweighted)."""
        self._placed: Tensor | None = None  # class_weights where the losses are (see _class_weights_like)
        self._seed_generator(seed + _SEED_OFFSET)

    @classmethod
    def from_config(cls, config: RunConfig, context: FamilyContext) -> FixedRegularization:
        options = config.family_options
        counts = None
        if options["class_weight_power"] > 0:
            counts = _training_class_counts(context)
        return cls(dropout_sites(context.model), **options, decayed=decayed_tensors(context.params),
                   class_counts=counts, seed=config.seed, loss=context.loss)

    @classmethod
    def validate_config(cls, config: RunConfig) -> None:
        options = config.family_options
        if options["fixed_dropout"] > 0 and config.task is None and not has_dropout_sites(config.model):
            raise ConfigError(NO_SITES.format(field="fixed_dropout", family=cls.name, model=repr(config.model))
                              + ", or fixed_dropout 0")
        if options["layer_decay"] and config.task is None:
            count = _decayed_count(config.model, len(config.hidden))
            if len(options["layer_decay"]) != count:
                raise ConfigError(_count_message(len(options["layer_decay"]), count, f"{config.model!r} "
                                                 f"(hidden {list(config.hidden)})"))
        if options["class_weight_power"] > 0 and config.task is None and config.dataset == "text":
            raise ConfigError("class_weight_power: the text dataset has no classes to weight; use 0")

    def masks(self, batch_size: int, like: Tensor) -> dict[str, Tensor]:
        """One draw of inverted-dropout scales m / (1 − p) per site, shaped (batch_size, *site_shape)."""
        keep = 1.0 - self.fixed_dropout
        return {name: torch.bernoulli(torch.full((batch_size, *shape), keep), generator=self.generator)
                .div_(keep).to(device=like.device, dtype=like.dtype) for name, shape in self.sites.items()}

    def penalty(self, params: Mapping[str, Tensor]) -> Tensor | None:
        """1/2 · Σ_n c_n · ||w_n||² (module docstring), a scalar; None when every c_n is 0. Without
        ``layer_decay`` it is the other families' fixed L2 term (:func:`l2_penalty`), term for term."""
        if not self.layer_decay:
            return l2_penalty(params, self.fixed_decay) if self.fixed_decay else None
        terms = [decay * p.square().sum() for name, p in params.items()
                 if (decay := self.layer_decay.get(name, self.fixed_decay))]
        return 0.5 * torch.stack(terms).sum() if terms else None

    def train_loss(self, model_fn: ModelFn, params: Mapping[str, Tensor], hparams: Mapping[str, Tensor],
                   batch: Batch) -> Tensor:
        x, y, _ = batch
        masks = self.masks(x.shape[0], next(iter(params.values()))) if self.fixed_dropout > 0 else {}
        losses = self.example_loss(model_fn({**params, **masks}, x), y)  # (B,)
        if self.class_weights is not None:
            losses = losses * self._class_weights_like(losses)[y]
        penalty = self.penalty(params)
        return losses.mean() if penalty is None else losses.mean() + penalty

    def _class_weights_like(self, losses: Tensor) -> Tensor:
        """:attr:`class_weights` on the device and in the dtype of ``losses``, copied there once."""
        if self._placed is None or (self._placed.device, self._placed.dtype) != (losses.device, losses.dtype):
            self._placed = self.class_weights.to(device=losses.device, dtype=losses.dtype)
        return self._placed

    def summaries(self, params: Mapping[str, Tensor]) -> dict[str, float]:
        return {"fixed_decay": self.fixed_decay, "fixed_dropout": self.fixed_dropout,
                "class_weight_power": self.class_weight_power}


def class_loss_weights(counts: Tensor | None, power: float) -> Tensor:
    """a_c = N · n_c^(−p) / Σ_c' n_c'^(1−p) for the training examples per class ``counts`` (C,),
    so Σ_c n_c · a_c = N (mean 1 over the examples); a class without examples gets 0. (C,) float64."""
    if counts is None or counts.ndim != 1 or counts.numel() < 2:
        raise ConfigError("class_weight_power: needs a classification task's training examples per class; "
                          "use 0 for this task")
    counts = counts.detach().to(device="cpu", dtype=torch.float64)
    present = counts > 0
    raw = torch.where(present, counts.clamp_min(1).pow(-power), torch.zeros_like(counts))
    return raw * counts.sum() / (counts * raw).sum()


def _training_class_counts(context: FamilyContext) -> Tensor | None:
    """Training examples per class (C,) of the run's data, or None when it has no class labels."""
    if context.data is None or context.num_classes is None:
        return None
    labels = context.data.train.targets()
    if labels.ndim != 1 or labels.is_floating_point():
        return None
    return torch.bincount(labels.cpu(), minlength=context.num_classes)


@functools.cache
def _decayed_count(model: str, depth: int) -> int:
    """Decayed tensors of built-in ``model`` with ``depth`` hidden widths (read off a tiny instance)."""
    shape = (4,) if model == "lstm_lm" else (1, 8, 8)
    return len(decayed_tensors(dict(build_model(model, input_shape=shape, num_classes=2,
                                                hidden=(2,) * depth).named_parameters())))


def _count_message(given: int, expected: int, model: str) -> str:
    return (f"layer_decay: {given} decays given, but {model} has {expected} weight tensors (ndim >= 2) to decay; "
            f"give layer_decay.0 to layer_decay.{expected - 1}")
