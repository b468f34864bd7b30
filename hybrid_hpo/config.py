"""RunConfig: every setting of one bilevel run, the single source of truth.

Field names are the ``hybrid-hpo run`` flag names (``--inner-lr`` for ``inner_lr``) and the keys of
a Ray Tune trial config. :meth:`RunConfig.from_mapping` accepts the values a CLI, a YAML file or a
Tune search space produce (numbers, numeric strings, lists) and converts them to the field types;
:meth:`RunConfig.validate` rejects bad values with a one-line :class:`ConfigError` naming the field
and the fix.

The defaults are a meaningful ~30-60 s CPU run: an MLP on sklearn's digits with one weight decay
per weight, tuned by the IFT hypergradient with a 5-term Neumann series.
"""
from __future__ import annotations

import dataclasses
import math
import numbers
import re
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from hybrid_hpo.errors import ConfigError

OPTIMIZERS: tuple[str, ...] = ("sgd", "momentum", "adam", "rmsprop")
"""Names accepted by ``inner_optimizer`` and ``hyper_optimizer`` (``momentum`` = SGD, momentum 0.9)."""
DIVERGED_POLICIES: tuple[str, ...] = ("reject", "apply")
"""``diverged_policy``: what a hyper step does with a finite hypergradient whose solver diverged."""

_DEVICE = re.compile(r"auto|cpu|cuda(:\d+)?")

SOLVER_PREFIX = "solver."
"""A solver option's setting name is ``solver.<option>`` (``solver.max_iter``): a YAML ``solver:``
key, a ``--solver-option`` of the CLI, a searched name and a Ray Tune config key."""
MOVED: dict[str, str] = {
    "terms": "solver.terms (neumann) or solver.max_iter (cg)",
    "alpha": "solver.alpha (neumann)",
    "damping": "solver.damping (neumann, cg, exact) or solver.rho (nystrom)",
    "rank": "solver.rank (nystrom)",
}
"""Settings that became solver options, and what to write instead."""


@dataclass
class RunConfig:
    """Settings of one bilevel run (see the module docstring; README-bilevel.md has a table).

    Task: ``task``, a factory ``FILE.py:FUNCTION`` or ``MODULE:FUNCTION`` returning a
    :class:`hybrid_hpo.Task` (your own model, data, loss and metrics; it receives these settings as
    a dict), or None for the built-in task chosen by ``dataset``, ``model`` (+ ``hidden``,
    ``activation``), ``train_size``, ``val_size``, ``imbalance``, ``data_root``, ``download``;
    ``val_fraction`` (the validation share of the pool); ``num_workers`` (DataLoader workers for
    datasets that are not in-memory tensors). Hyperparameters tuned by gradient: ``family``
    (+ ``granularity``, ``init_decay``; ``fixed_decay``, a fixed L2 c/2·||w||² on all weights in L_T of
    the augment, fixed_augment and distill families; ``augment_width``, channels of the learned
    augmenter; ``augment_shift`` / ``augment_flip``, the fixed_augment baseline's max shift in pixels
    and mirroring; ``distill_per_class``, distilled images per class; ``fixed_dropout``, the drop rate of the ``fixed``
    family, which has no λ: plain training with a fixed L2 ``fixed_decay`` and fixed dropout). Hypergradient: ``solver`` with
    ``solver_options`` (that solver's own options, set as ``solver.<option>``: ``solver.terms``
    and ``solver.alpha`` of neumann, ``solver.max_iter`` of cg, ``solver.rank`` of nystrom, ...; see
    docs/solvers.md), ``diverged_policy`` (a finite hypergradient from a diverged solve: "reject"
    the hyper step, the default, or "apply" it).
    Loop (Algorithm 2 of Lorraine et al. 2020): ``inner_steps`` optimizer steps on the weights
    (``inner_optimizer``, ``inner_lr``, mini-batches of ``batch_size``), then one step on λ
    (``hyper_optimizer``, ``hyper_lr``); ``epochs`` passes over the training split.
    """

    task: str | None = None
    dataset: str = "digits"
    model: str = "mlp"
    family: str = "weight_decay"
    granularity: str = "per_weight"
    solver: str = "neumann"
    solver_options: dict[str, Any] = field(default_factory=dict)
    diverged_policy: str = "reject"
    inner_lr: float = 0.1
    inner_optimizer: str = "momentum"
    hyper_lr: float = 0.03
    hyper_optimizer: str = "adam"
    val_fraction: float = 0.5
    inner_steps: int = 2
    epochs: int = 100
    batch_size: int = 64
    seed: int = 0
    device: str = "auto"
    hidden: tuple[int, ...] = (512, 256)
    activation: str = "relu"
    init_decay: float = 1e-3
    fixed_decay: float = 1e-3
    augment_width: int = 8
    augment_shift: int = 1
    augment_flip: bool = False
    distill_per_class: int = 1
    data_root: str | None = None
    download: bool = False
    train_size: int | None = None
    val_size: int | None = None
    imbalance: float | None = None
    init_dropout: float = 0.1
    fixed_dropout: float = 0.0
    num_workers: int = 0

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> "RunConfig":
        """Build and validate a config from ``values`` (missing keys keep their defaults).

        Keys ``solver.<option>`` set ``solver_options``. Raises ConfigError on an unknown key, a
        value of the wrong type, or a bad value.
        """
        names = field_names()
        plain = {key: value for key, value in values.items() if not key.startswith(SOLVER_PREFIX)}
        for key in sorted(set(plain) - set(names) - {"solver_options"}):
            raise ConfigError(unknown_setting_message(key))
        dotted = {key.removeprefix(SOLVER_PREFIX): value for key, value in values.items()
                  if key.startswith(SOLVER_PREFIX)}
        options = dict(plain.pop("solver_options", None) or {})
        for key in sorted(set(dotted) & set(options)):
            raise ConfigError(f"solver.{key}: given twice (in solver_options and as solver.{key}); keep one")
        config = cls(**plain, solver_options={**options, **dotted})
        config.validate()
        return config

    def __post_init__(self) -> None:
        """Convert each value to its field type (e.g. "0.1" -> 0.1, [256] -> (256,)); ConfigError
        naming the field when impossible. Value ranges are checked by :meth:`validate`."""
        for name, hint in _type_hints().items():
            if name != "solver_options":
                setattr(self, name, _coerce(name, hint, getattr(self, name)))
        self.solver_options = _solver_options(self.solver, self.solver_options)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON/YAML-ready values (``hidden`` as a list, each solver option as
        ``solver.<option>``); ``from_mapping`` inverts it."""
        values = dataclasses.asdict(self)
        values["hidden"] = list(self.hidden)
        for key, value in values.pop("solver_options").items():
            values[SOLVER_PREFIX + key] = value
        return values

    def make_solver(self) -> Any:
        """The configured inverse-HVP solver (its constructor validates the options)."""
        from hybrid_hpo.implicit import make_solver

        return make_solver(self.solver, self.solver_options)

    def validate(self) -> None:
        """Raise ConfigError (one line: the field and the fix) on the first bad setting."""
        from hybrid_hpo.data import DATASETS
        from hybrid_hpo.hyper import FAMILIES
        from hybrid_hpo.models import ACTIVATIONS, MODELS

        _choice("dataset", self.dataset, DATASETS)
        _choice("model", self.model, MODELS)
        _choice("family", self.family, tuple(FAMILIES))
        self.make_solver()
        _choice("inner_optimizer", self.inner_optimizer, OPTIMIZERS)
        _choice("hyper_optimizer", self.hyper_optimizer, OPTIMIZERS)
        _choice("activation", self.activation, tuple(ACTIVATIONS))
        _choice("diverged_policy", self.diverged_policy, DIVERGED_POLICIES)
        _positive("inner_lr", self.inner_lr)
        _positive("hyper_lr", self.hyper_lr)
        _positive("init_decay", self.init_decay)
        if not (math.isfinite(self.fixed_decay) and self.fixed_decay >= 0):
            raise ConfigError(f"fixed_decay must be >= 0 (got {self.fixed_decay!r}); e.g. 1e-3, or 0 for no L2")
        _at_least("augment_width", self.augment_width, 1)
        _at_least("augment_shift", self.augment_shift, 0)
        _at_least("distill_per_class", self.distill_per_class, 1)
        if not 0.0 < self.val_fraction < 1.0:
            raise ConfigError(f"val_fraction must be strictly between 0 and 1 (got {self.val_fraction!r}); "
                              "e.g. 0.5")
        _at_least("inner_steps", self.inner_steps, 1)
        _at_least("epochs", self.epochs, 1)
        _at_least("batch_size", self.batch_size, 1)
        if not 0 <= self.seed < 2**32:
            raise ConfigError(f"seed must be an integer in [0, 2**32) (got {self.seed!r})")
        if not _DEVICE.fullmatch(self.device):
            raise ConfigError(f"device must be auto, cpu, cuda or cuda:N (got {self.device!r})")
        if any(width < 1 for width in self.hidden):
            raise ConfigError(f"hidden layer widths must be integers >= 1 (got {list(self.hidden)}); "
                              "e.g. --hidden 256 256")
        for name in ("train_size", "val_size"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"{name} must be an integer >= 1 or none for the whole split (got {value!r})")
        _at_least("num_workers", self.num_workers, 0)
        if self.task is not None and ":" not in self.task:
            raise ConfigError(f"task: {self.task!r} is not a factory name; use FILE.py:FUNCTION or MODULE:FUNCTION, "
                              "e.g. my_tasks.py:make_task")
        if self.imbalance is not None and not (math.isfinite(self.imbalance) and self.imbalance >= 1):
            raise ConfigError(f"imbalance must be a ratio >= 1 (largest / smallest train class) or none "
                              f"(got {self.imbalance!r}); e.g. 50")
        FAMILIES[self.family].validate_config(self)


def field_names() -> tuple[str, ...]:
    """RunConfig's settings in declaration order (the CLI flag order); ``solver_options`` is set
    as ``solver.<option>`` (see :func:`is_setting`)."""
    return tuple(f.name for f in dataclasses.fields(RunConfig) if f.name != "solver_options")


def is_setting(key: str) -> bool:
    """``key`` names a RunConfig setting: a field, or ``solver.<option>`` (checked against the
    chosen solver when the config is built)."""
    return key in field_names() or (key.startswith(SOLVER_PREFIX) and key != SOLVER_PREFIX)


def unknown_setting_message(key: str, field: str | None = None) -> str:
    """One line for an unknown setting ``key`` (at spec field ``field``): the moved solver
    settings name their new spelling, others get the closest valid name."""
    import difflib

    where = field or key
    if key in MOVED:
        return f"{where}: is now a solver option; write {MOVED[key]}"
    names = field_names()
    guess = difflib.get_close_matches(key, names, n=1)
    hint = f"did you mean {guess[0]!r}?" if guess else f"valid settings: {', '.join(names)}, solver.<option>"
    return f"{where}: unknown setting; {hint}"


def _solver_options(solver: Any, options: Any) -> dict[str, Any]:
    """``options`` converted to the types the solver declares, its defaults filled in (so equal
    settings compare equal); unchanged when ``solver`` is not registered (validate reports it)."""
    from hybrid_hpo.implicit import SOLVERS, options_of

    if not isinstance(options, Mapping):
        raise ConfigError(f"solver_options must be a mapping of option -> value (got {options!r})")
    if solver not in SOLVERS:
        return dict(options)
    declared = {info.name: info for info in options_of(SOLVERS[solver])}
    return {**{name: info.default for name, info in declared.items()},
            **{key: _coerce(SOLVER_PREFIX + key, declared[key].type, value) if key in declared else value
               for key, value in options.items()}}


def _type_hints() -> dict[str, Any]:
    return typing.get_type_hints(RunConfig)


def _choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"{name}: unknown value {value!r}; choose one of {', '.join(choices)}")


def _at_least(name: str, value: int, low: int) -> None:
    if value < low:
        raise ConfigError(f"{name} must be an integer >= {low} (got {value!r})")


def _positive(name: str, value: float) -> None:
    if not (math.isfinite(value) and value > 0):
        raise ConfigError(f"{name} must be a number > 0 (got {value!r})")


_NUMBERS = {int: (numbers.Integral, "an integer"), float: (numbers.Real, "a number")}  # type -> (accepted, noun)


def _coerce(name: str, hint: Any, value: Any) -> Any:
    """Convert ``value`` to the field type ``hint`` (str, int, float, bool, tuple[int, ...],
    ``X | None``, ``float | str``) or raise ConfigError naming the field."""
    args = typing.get_args(hint)
    if type(None) in args:  # X | None
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null", "")):
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _coerce(name, inner, value)
    if hint == float | str:  # alpha: a number or the word "auto"
        if isinstance(value, str) and value == "auto":
            return value
        return _coerce(name, float, value)
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "yes", "1", "false", "no", "0"):
            return value.lower() in ("true", "yes", "1")
        raise ConfigError(f"{name} must be true or false (got {value!r})")
    if hint in _NUMBERS:
        kind, noun = _NUMBERS[hint]
        if isinstance(value, kind) and not isinstance(value, bool):
            return hint(value)
        if isinstance(value, str):
            try:
                return hint(value)
            except ValueError:
                pass
        raise ConfigError(f"{name} must be {noun} (got {value!r})")
    if hint is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{name} must be a string (got {value!r})")
    if typing.get_origin(hint) is tuple:  # hidden: tuple[int, ...]
        if isinstance(value, str):
            value = value.replace(",", " ").split()
        if isinstance(value, numbers.Integral) and not isinstance(value, bool):
            value = [value]
        if isinstance(value, (list, tuple)):
            return tuple(_coerce(name, int, item) for item in value)
        raise ConfigError(f"{name} must be a list of integers, e.g. [256, 256] (got {value!r})")
    raise TypeError(f"RunConfig.{name}: unsupported field type {hint!r}")
