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
import numbers
import re
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from hybrid_hpo.errors import ConfigError
from hybrid_hpo.optimizers import OPTIMIZERS
from hybrid_hpo.rules import Described, OneOf, Range

DIVERGED_POLICIES: tuple[str, ...] = ("reject", "apply")
"""``diverged_policy``: what a hyper step does with a finite hypergradient whose solver diverged."""

_DEVICE = re.compile(r"auto|cpu|cuda(:\d+)?")

FIXED_DECAY: float = 1e-3
"""The default c of the fixed L2 term c/2·Σ‖w‖² (``fixed_decay``), for RunConfig and the families."""
FIXED_DECAY_RULE = Range(0)
"""``fixed_decay``: a number >= 0 (0: no L2); checked by RunConfig and the families' constructors."""

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


def setting(default: Any, help: str, rule: Any) -> Any:
    """A RunConfig field: its default, one line of help and the rule of its allowed values (None:
    its type is the rule); ``hybrid-hpo run --help`` shows ``help; allowed values``."""
    return field(default=default, metadata={"help": help, "rule": rule})


def _datasets() -> tuple[str, ...]:
    from hybrid_hpo.data import DATASETS

    return DATASETS


def _models() -> tuple[str, ...]:
    from hybrid_hpo.models import MODELS

    return MODELS


def _activations() -> tuple[str, ...]:
    from hybrid_hpo.models import ACTIVATIONS

    return tuple(ACTIVATIONS)


def _families() -> tuple[str, ...]:
    from hybrid_hpo.hyper import FAMILIES

    return tuple(FAMILIES)


def _granularities() -> tuple[str, ...]:
    from hybrid_hpo.hyper import GRANULARITIES

    return GRANULARITIES


def _solvers() -> tuple[str, ...]:
    from hybrid_hpo.implicit import SOLVERS

    return tuple(SOLVERS)


def _check_device(name: str, value: str) -> None:
    if not _DEVICE.fullmatch(value):
        raise ConfigError(f"{name} must be auto, cpu, cuda or cuda:N (got {value!r})")


def _check_hidden(name: str, value: tuple[int, ...]) -> None:
    if any(width < 1 for width in value):
        raise ConfigError(f"hidden layer widths must be integers >= 1 (got {list(value)}); e.g. --hidden 256 256")


def _check_task(name: str, value: str | None) -> None:
    if value is not None and ":" not in value:
        raise ConfigError(f"task: {value!r} is not a factory name; use FILE.py:FUNCTION or MODULE:FUNCTION, "
                          "e.g. my_tasks.py:make_task")


_DEVICE_RULE = Described("auto, cpu, cuda or cuda:N", _check_device)
_HIDDEN = Described("integers >= 1, e.g. 256 256", _check_hidden)
_TASK = Described("FILE.py:FUNCTION or MODULE:FUNCTION", _check_task)


@dataclass
class RunConfig:
    """Settings of one bilevel run (see the module docstring; ``hybrid-hpo run --help`` lists them).

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

    task: str | None = setting(None, "your own task: a factory returning a hybrid_hpo.Task (none: the built-in task)", _TASK)
    dataset: str = setting("digits", "built-in dataset", OneOf(_datasets))
    model: str = setting("mlp", "built-in model", OneOf(_models))
    family: str = setting("weight_decay", "hyperparameter family tuned by hypergradient", OneOf(_families))
    granularity: str = setting("per_weight", "one decay for all weights, per tensor, or per weight", OneOf(_granularities))
    solver: str = setting("neumann", "inverse-HVP solver; its options via --solver-option", OneOf(_solvers))
    solver_options: dict[str, Any] = field(default_factory=dict, metadata={"help": "the solver's own options (solver.<option>)"})
    diverged_policy: str = setting("reject", "a finite hypergradient from a diverged solve: reject the hyper step or apply it", OneOf(DIVERGED_POLICIES))
    inner_lr: float = setting(0.1, "learning rate of the weights", Range(0, open_low=True))
    inner_optimizer: str = setting("momentum", "optimizer of the weights (momentum = SGD, momentum 0.9)", OneOf(OPTIMIZERS))
    hyper_lr: float = setting(0.03, "learning rate of the hyperparameters λ", Range(0, open_low=True))
    hyper_optimizer: str = setting("adam", "optimizer of the hyperparameters λ", OneOf(OPTIMIZERS))
    val_fraction: float = setting(0.5, "validation share of the non-test data (L_V)", Range(0, 1, open_low=True, open_high=True))
    selection_fraction: float = setting(0.2, "held-out share of the non-test data on which the outer search and the pick compare trials (sel_*; 0: none, they read val_*)", Range(0, 1, open_high=True))
    inner_steps: int = setting(2, "weight steps per hyper step", Range(1, integer=True))
    epochs: int = setting(100, "passes over the training split", Range(1, integer=True))
    batch_size: int = setting(64, "mini-batch size", Range(1, integer=True))
    seed: int = setting(0, "seed of the data split, initialisation and batches", Range(0, 2**32, open_high=True, integer=True))
    device: str = setting("auto", "where to train", _DEVICE_RULE)
    hidden: tuple[int, ...] = setting((512, 256), "layer widths of mlp (lstm_lm: its width)", _HIDDEN)
    activation: str = setting("relu", "activation of mlp", OneOf(_activations))
    init_decay: float = setting(1e-3, "initial decay", Range(0, open_low=True))
    fixed_decay: float = setting(FIXED_DECAY, "fixed L2 c/2·||w||² in L_T (0: none)", FIXED_DECAY_RULE)
    augment_width: int = setting(8, "channels of the learned augmenter", Range(1, integer=True))
    augment_shift: int = setting(1, "largest random shift in pixels", Range(0, integer=True))
    augment_flip: bool = setting(False, "mirror images at random", None)
    distill_per_class: int = setting(1, "distilled images per class", Range(1, integer=True))
    data_root: str | None = setting(None, "folder of downloaded datasets (none: the default cache)", None)
    download: bool = setting(False, "download a missing dataset (mnist, cifar...)", None)
    train_size: int | None = setting(None, "training examples used", Range(1, integer=True, optional="the whole split"))
    val_size: int | None = setting(None, "validation examples used", Range(1, integer=True, optional="the whole split"))
    imbalance: float | None = setting(None, "largest / smallest train class ratio", Range(1, optional="balanced"))
    init_dropout: float = setting(0.1, "initial drop rate", Range(0, 1, open_low=True, open_high=True))
    fixed_dropout: float = setting(0.0, "drop rate of plain training", Range(0, 1, open_high=True))
    num_workers: int = setting(0, "DataLoader workers for datasets that are not in-memory tensors", Range(0, integer=True))

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
        """Raise ConfigError (one line: the field and the fix) on the first bad setting: each field's
        rule (the allowed values ``hybrid-hpo run --help`` shows), the solver's own constructor, then
        the family's own checks."""
        from hybrid_hpo.hyper import FAMILIES

        for item in dataclasses.fields(self):
            rule = item.metadata.get("rule")
            if rule is not None:
                rule.check(item.name, getattr(self, item.name))
        self.make_solver()
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
