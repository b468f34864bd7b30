"""The hyperparameter-family interface: what the bilevel loop needs from a kind of λ.

A family owns
  * its λ tensors: unconstrained *raw* leaf tensors (``requires_grad=True``) that the hyper
    optimizer steps; a family maps them to constrained values itself (e.g. decay = softplus(raw));
  * how λ enters the training loss L_T (and, if at all, the validation loss L_V, and the forward
    pass through :meth:`HyperFamily.predict`);
  * summaries for metrics (plain floats, computed once per epoch) and its state.

The loss methods are pure functions of their arguments, so the same code serves the inner weight
steps (live parameters, detached λ) and the hypergradient (detached copies of both, re-attached by
:func:`hybrid_hpo.implicit.hypergradient`):

    model_fn(params, x) -> outputs  # torch.func.functional_call(model, params, (x,)); logits for
                                    # classification
    batch = (x, y, index)           # x (B, *input_shape), y (B, ...) targets, index (B,) int64
                                    # positions of the examples in their split (per-example families)

The data term of both losses is the task's per-example loss (:attr:`HyperFamily.example_loss`,
cross-entropy by default; any ``(output, target) -> (B,)`` of a user's Task), averaged by
:meth:`HyperFamily.data_loss` (or weighted, by ``reweight``), so every family works on every task
whose inputs it can handle.

How later families fit: learned augmentation (λ = weights of a network transforming x inside
``train_loss``), dataset distillation (λ = synthetic images; ``train_loss`` ignores the real batch),
per-example loss weights (λ of shape (num_train,), gathered with ``batch[2]``), per-unit dropout
(λ = drop-rate logits; ``predict`` and ``train_loss`` change the forward pass).

Randomness inside a loss (augmentation noise, dropout masks) comes from the family's own CPU
``torch.Generator`` (:meth:`HyperFamily._seed_generator`), whose state is part of
:meth:`HyperFamily.state_dict`, so a restored run continues bit for bit; draw on the CPU and move
the result to the data's device. :meth:`HyperFamily.render` draws λ for people as PNG files.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

import torch
from torch import Tensor, nn

from hybrid_hpo.errors import ConfigError
from hybrid_hpo.rules import check_rules
from hybrid_hpo.task.task import ExampleLoss, cross_entropy

if TYPE_CHECKING:
    from hybrid_hpo.config import RunConfig
    from hybrid_hpo.splits import DataSplits

ModelFn = Callable[[Mapping[str, Tensor], Tensor], Tensor]
Batch = tuple[Tensor, Tensor, Tensor]

GENERATOR_KEY = "rng_state"
"""Key of the family generator's state in :meth:`HyperFamily.state_dict` (never a λ name)."""


@dataclass(frozen=True)
class FamilyOptions:
    """A family's options, declared in the family's own file: subclass this frozen dataclass and
    declare each option with :func:`hybrid_hpo.rules.setting` (default, one line of help, the rule
    of its allowed values), e.g. ``init_decay: float = setting(1e-3, "initial decay", Range(0,
    open_low=True))``. Constructing it checks every value against its rule — the only validation
    of a family option, shared by the family's constructor, RunConfig, the sweep specs and the CLI.

    Options are flat settings (``--init-decay``, ``init_decay:`` in YAML, a searchable Tune key):
    their names must not clash with RunConfig's own fields, and an option several families declare
    (``fixed_decay``) must be declared alike in each (the family contract test checks both).
    """

    def __post_init__(self) -> None:
        check_rules(self)

    @classmethod
    def names(cls) -> tuple[str, ...]:
        """The declared option names, in declaration order."""
        return tuple(item.name for item in fields(cls))


@dataclass(frozen=True)
class FamilyContext:
    """What a family may need to size and place its λ.

    params:      the model's named parameters (shapes, dtype and device of the weights).
    num_train:   training-split size (per-example families have one λ per example).
    input_shape: shape of one input x, e.g. (1, 8, 8).
    num_classes: number of classes C of the logits; None for a task that is not classification.
    model:       the model (families find its :class:`hybrid_hpo.nn.HyperDropout` sites in it).
    loss:        the task's per-example loss (output, target) -> (B,).
    data:        the run's splits (a family that needs the training labels reads ``data.train``,
                 e.g. the class weights of ``fixed``); None where no run builds the family.
    """

    params: Mapping[str, Tensor]
    num_train: int
    input_shape: tuple[int, ...]
    num_classes: int | None
    model: nn.Module | None = None
    loss: ExampleLoss = cross_entropy
    data: DataSplits | None = None


class HyperFamily(ABC):
    """Base class of a hyperparameter family (see the module docstring).

    Subclasses set ``name`` (and ``options`` when they have any), create their raw leaf tensors in
    ``__init__`` and store them with :meth:`_register`, and implement :meth:`from_config`,
    :meth:`train_loss` and :meth:`summaries`.
    """

    name: ClassVar[str]
    tunable: ClassVar[bool] = True
    """False for baselines without λ (the bilevel loop takes no hyper steps with them)."""
    options: ClassVar[type[FamilyOptions]] = FamilyOptions
    """The family's options (a :class:`FamilyOptions` subclass declared in the family's file):
    RunConfig's ``family_options``, the ``hybrid-hpo run`` flags, the YAML keys and the help lines
    derive from it; the family contract test checks that each option refuses a bad value."""

    def __init__(self, loss: ExampleLoss | None = None) -> None:
        self._raw: dict[str, Tensor] = {}
        self.generator: torch.Generator | None = None
        self.example_loss: ExampleLoss = cross_entropy if loss is None else loss
        """The task's per-example loss (output, target) -> (B,)."""

    def data_loss(self, output: Tensor, target: Tensor) -> Tensor:
        """mean_b example_loss(output, target)_b: the unweighted data term of L_T and L_V (a scalar)."""
        return self.example_loss(output, target).mean()

    def _register(self, name: str, value: Tensor) -> None:
        """Keep ``value`` as the raw leaf λ tensor ``name`` (a detached copy that requires grad)."""
        if name == GENERATOR_KEY:
            raise ValueError(f"{GENERATOR_KEY!r} is reserved for the generator state; name the λ tensor otherwise")
        self._raw[name] = value.detach().clone().requires_grad_(True)

    def _seed_generator(self, seed: int) -> torch.Generator:
        """Create :attr:`generator`, the family's CPU random stream (saved in :meth:`state_dict`)."""
        self.generator = torch.Generator().manual_seed(seed)
        return self.generator

    # ------------------------------------------------------------------ construction and config
    @classmethod
    @abstractmethod
    def from_config(cls, config: RunConfig, context: FamilyContext) -> HyperFamily:
        """The family a run configuration asks for, sized by ``context``; its options are
        ``config.family_options`` (name -> value, validated, defaults filled in)."""

    @classmethod
    def validate_config(cls, config: RunConfig) -> None:
        """Raise ConfigError for settings this family cannot use (default: accept all)."""

    # --------------------------------------------------------------------------------- λ tensors
    def hparams(self) -> dict[str, Tensor]:
        """The raw λ leaf tensors, name -> tensor (the hyper optimizer steps exactly these)."""
        return dict(self._raw)

    @property
    def num_hparams(self) -> int:
        """Total number of scalar hyperparameters."""
        return sum(t.numel() for t in self._raw.values())

    # ---------------------------------------------------------------------------------- losses
    def predict(self, model_fn: ModelFn, params: Mapping[str, Tensor], hparams: Mapping[str, Tensor],
                x: Tensor) -> Tensor:
        """Outputs (logits (B, C) for classification) for inputs x (B, *input_shape); default: the
        model unchanged."""
        return model_fn(params, x)

    @abstractmethod
    def train_loss(self, model_fn: ModelFn, params: Mapping[str, Tensor], hparams: Mapping[str, Tensor],
                   batch: Batch) -> Tensor:
        """L_T(w, λ) on a training batch: a scalar tensor, differentiable in params and hparams."""

    def val_loss(self, model_fn: ModelFn, params: Mapping[str, Tensor], hparams: Mapping[str, Tensor],
                 batch: Batch) -> Tensor:
        """L_V on a validation batch; default: the mean task loss of :meth:`predict` (λ enters only
        through the weights)."""
        x, y, _ = batch
        return self.data_loss(self.predict(model_fn, params, hparams, x), y)

    # ------------------------------------------------------------------------- metrics and state
    @abstractmethod
    def summaries(self, params: Mapping[str, Tensor]) -> dict[str, float]:
        """Human-readable numbers about λ (e.g. decay_mean), as Python floats; called once per
        epoch, so it may synchronise with the device."""

    def render(self, params: Mapping[str, Tensor], directory: Path, data: DataSplits | None = None) -> list[Path]:
        """Write PNG pictures of λ for people into ``directory`` and return their paths (default:
        none). ``params`` are the current weights, ``data`` the run's splits (for families that
        show examples). Must not touch :attr:`generator` (drawing pictures cannot change training)."""
        return []

    def state_dict(self) -> dict[str, Tensor]:
        """Copies of the raw λ tensors, plus the generator state under :data:`GENERATOR_KEY` when the
        family has a generator (loadable with ``torch.load(weights_only=True)``)."""
        state = {name: t.detach().clone() for name, t in self._raw.items()}
        if self.generator is not None:
            state[GENERATOR_KEY] = self.generator.get_state()
        return state

    def load_state_dict(self, state: Mapping[str, Tensor]) -> None:
        """Copy saved raw λ into the existing leaves in place (optimizers keep referencing them) and
        restore the generator state."""
        state = dict(state)
        generator_state = state.pop(GENERATOR_KEY, None)
        if (generator_state is None) != (self.generator is None):
            raise ConfigError(f"hparams: saved state {'lacks' if generator_state is None else 'has'} a random "
                              f"generator state but the {self.name} family {'has' if self.generator else 'has no'} "
                              "generator; restore with the same family")
        if generator_state is not None:
            self.generator.set_state(generator_state.cpu())
        if set(state) != set(self._raw):
            raise ConfigError(f"hparams: saved state has tensors {sorted(state)} but the {self.name} family "
                              f"has {sorted(self._raw)}; restore with the same family settings")
        with torch.no_grad():
            for name, leaf in self._raw.items():
                if state[name].shape != leaf.shape:
                    raise ConfigError(f"hparams: saved {name!r} has shape {tuple(state[name].shape)}, expected "
                                      f"{tuple(leaf.shape)}; restore with the same model and family settings")
                leaf.copy_(state[name])
