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
from hybrid_hpo.rules import Described, OneOf, Range, check_rules, options_of, setting

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
    datasets that are not in-memory tensors). Hyperparameters tuned by gradient: ``family`` with
    ``family_options`` (that family's own options, declared in its file and set by their plain
    names: ``granularity`` and ``init_decay`` of weight_decay, ``fixed_decay`` of augment, distill
    and fixed, ...; see docs/families.md). Hypergradient: ``solver`` with
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
    family: str = setting("weight_decay", "hyperparameter family tuned by hypergradient; its options below", OneOf(_families))
    family_options: dict[str, Any] = field(default_factory=dict, metadata={"help": "the family's own options"})
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
    data_root: str | None = setting(None, "folder of downloaded datasets (none: the default cache)", None)
    download: bool = setting(False, "download a missing dataset (mnist, cifar...)", None)
    train_size: int | None = setting(None, "training examples used", Range(1, integer=True, optional="the whole split"))
    val_size: int | None = setting(None, "validation examples used", Range(1, integer=True, optional="the whole split"))
    imbalance: float | None = setting(None, "largest / smallest train class ratio", Range(1, optional="balanced"))
    num_workers: int = setting(0, "DataLoader workers for datasets that are not in-memory tensors", Range(0, integer=True))

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> "RunConfig":
        """Build and validate a config from ``values`` (missing keys keep their defaults).

        Keys ``solver.<option>`` set ``solver_options``; a family option's plain name (e.g.
        ``init_decay``, declared by a registered family) sets ``family_options``, and ``<option>.<k>``
        sets item k of a family's list option (``layer_decay.0``, ``layer_decay.1``, ...: all of
        0 .. K−1, assembled into the list; see :func:`indexed_setting`). Raises
        ConfigError on an unknown key, a value of the wrong type, or a bad value.
        """
        plain, dotted, family, items = {}, {}, {}, {}
        own, options, lists = field_names() + _OPTION_FIELDS, family_option_names(), list_option_names()
        for key in sorted(values):
            if key.startswith(SOLVER_PREFIX):
                dotted[key.removeprefix(SOLVER_PREFIX)] = values[key]
            elif key in own:
                plain[key] = values[key]
            elif key in options:
                family[key] = values[key]
            elif (item := indexed_setting(key, lists)) is not None:
                items.setdefault(item[0], {})[item[1]] = values[key]
            else:
                raise ConfigError(unknown_setting_message(key))
        family.update(_assembled(items, family))
        solver = _merged("solver_options", SOLVER_PREFIX, dotted, plain.pop("solver_options", None))
        family = _merged("family_options", "", family, plain.pop("family_options", None))
        config = cls(**plain, solver_options=solver, family_options=family)
        config.validate()
        return config

    def __post_init__(self) -> None:
        """Convert each value to its field type (e.g. "0.1" -> 0.1, [256] -> (256,)); ConfigError
        naming the field when impossible. Value ranges are checked by :meth:`validate`."""
        for name, hint in _type_hints().items():
            if name not in _OPTION_FIELDS:
                setattr(self, name, _coerce(name, hint, getattr(self, name)))
        from hybrid_hpo.hyper import FAMILIES
        from hybrid_hpo.implicit import SOLVERS

        self.solver_options = _typed_options("solver_options", SOLVERS.get(self.solver), self.solver_options,
                                             SOLVER_PREFIX)
        family = FAMILIES.get(self.family)
        self.family_options = _typed_options("family_options", family and family.options, self.family_options)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON/YAML-ready values (``hidden`` and list options as lists, each solver option as
        ``solver.<option>``, each family option by its name); ``from_mapping`` inverts it."""
        values = dataclasses.asdict(self)
        values["hidden"] = list(self.hidden)
        for key, value in values.pop("solver_options").items():
            values[SOLVER_PREFIX + key] = value
        values.update({key: list(value) if isinstance(value, tuple) else value
                       for key, value in values.pop("family_options").items()})
        return values

    def make_solver(self) -> Any:
        """The configured inverse-HVP solver (its constructor validates the options)."""
        from hybrid_hpo.implicit import make_solver

        return make_solver(self.solver, self.solver_options)

    def validate(self) -> None:
        """Raise ConfigError (one line: the field and the fix) on the first bad setting: each field's
        rule (the allowed values ``hybrid-hpo run --help`` shows), the solver's own constructor, the
        family's declared options, then the family's own checks."""
        from hybrid_hpo.hyper import FAMILIES

        check_rules(self)
        self.make_solver()
        family = FAMILIES[self.family]
        for key in self.family_options:
            if key not in family.options.names():
                raise ConfigError(_not_an_option_message(key, self.family))
        family.options(**self.family_options)
        family.validate_config(self)


_OPTION_FIELDS = ("solver_options", "family_options")
"""The RunConfig fields set through other names: ``solver.<option>`` and the family options' own names."""


def field_names() -> tuple[str, ...]:
    """RunConfig's own settings in declaration order (the CLI flag order); the solver's and the
    family's options are set by their own names (see :func:`is_setting`)."""
    return tuple(f.name for f in dataclasses.fields(RunConfig) if f.name not in _OPTION_FIELDS)


def family_option_names() -> tuple[str, ...]:
    """Every option a registered family declares (each name once, in registry order)."""
    from hybrid_hpo.hyper import FAMILIES

    return tuple(dict.fromkeys(name for family in FAMILIES.values() for name in family.options.names()))


def list_option_names() -> tuple[str, ...]:
    """The registered families' list options (declared with a tuple type, e.g. ``layer_decay`` of
    ``fixed``), whose items are also settings of their own (:func:`indexed_setting`)."""
    from hybrid_hpo.hyper import FAMILIES

    return tuple(dict.fromkeys(info.name for family in FAMILIES.values() for info in options_of(family.options)
                               if typing.get_origin(info.type) is tuple))


_INDEXED = re.compile(r"(?P<option>[a-z_][a-z0-9_]*)\.(?P<index>0|[1-9][0-9]*)")


def indexed_setting(key: str, lists: tuple[str, ...] | None = None) -> tuple[str, int] | None:
    """``(option, k)`` when ``key`` is ``<option>.<k>``, item k = 0, 1, ... of a family's list option
    (``layer_decay.1``: the second decayed tensor's decay), else None. Each item is one scalar a
    search can tune; the items given are assembled into the list, so all of 0 .. K−1 must be given.
    ``lists``: :func:`list_option_names` when already read."""
    match = _INDEXED.fullmatch(key)
    if match and match["option"] in (list_option_names() if lists is None else lists):
        return match["option"], int(match["index"])
    return None


def is_setting(key: str) -> bool:
    """``key`` names a RunConfig setting: a field, ``solver.<option>`` (checked against the chosen
    solver when the config is built), a registered family's option or an item ``<option>.<k>`` of
    its list option (checked against the chosen family)."""
    return (key in field_names() or (key.startswith(SOLVER_PREFIX) and key != SOLVER_PREFIX)
            or key in family_option_names() or indexed_setting(key) is not None)


def unknown_setting_message(key: str, field: str | None = None) -> str:
    """One line for an unknown setting ``key`` (at spec field ``field``): the moved solver
    settings name their new spelling, others get the closest valid name."""
    import difflib

    where = field or key
    if key in MOVED:
        return f"{where}: is now a solver option; write {MOVED[key]}"
    names = field_names() + family_option_names()
    guess = difflib.get_close_matches(key, names, n=1)
    hint = f"did you mean {guess[0]!r}?" if guess else f"valid settings: {', '.join(names)}, solver.<option>"
    return f"{where}: unknown setting; {hint}"


def _not_an_option_message(key: str, family: str) -> str:
    """One line for an option ``key`` the chosen ``family`` does not declare."""
    from hybrid_hpo.hyper import FAMILIES

    owners = [name for name, cls in FAMILIES.items() if key in cls.options.names()]
    if not owners:
        return unknown_setting_message(key)
    mine = ", ".join(FAMILIES[family].options.names()) or "none"
    return (f"{key}: an option of the {' and '.join(owners)} family, not of {family} (its options: {mine}); "
            f"remove it or set family: {owners[0]}")


def _assembled(items: dict[str, dict[int, Any]], named: Mapping[str, Any]) -> dict[str, list[Any]]:
    """The items ``<option>.<k>`` (option -> k -> value) as one list per option, in k order;
    ConfigError when an item of 0 .. max k is missing or the option is also given whole in ``named``."""
    lists = {}
    for option, given in items.items():
        if option in named:
            raise ConfigError(f"{option}: given twice (as a list and as {option}.<k>); keep one")
        missing = next(index for index in range(len(given) + 1) if index not in given)
        if missing < len(given):
            raise ConfigError(f"{option}.{missing}: missing; give every item {option}.0 to {option}.{max(given)} "
                              f"(or {option} as one list)")
        lists[option] = [given[index] for index in range(len(given))]
    return lists


def _merged(field_name: str, prefix: str, named: dict[str, Any], mapping: Any) -> Any:
    """Options given by name (``named``) and as the mapping ``field_name`` (``solver_options`` /
    ``family_options``); ConfigError when an option is given both ways."""
    if mapping is None:
        return named
    if not isinstance(mapping, Mapping):
        return mapping  # __post_init__ names the field and the fix
    for key in sorted(set(named) & set(mapping)):
        raise ConfigError(f"{prefix}{key}: given twice (in {field_name} and as {prefix}{key}); keep one")
    return {**mapping, **named}


def _typed_options(field_name: str, declaring: type | None, options: Any, prefix: str = "") -> dict[str, Any]:
    """``options`` converted to the types the ``declaring`` dataclass (a solver or a family's
    options) declares, its defaults filled in (so equal settings compare equal); unchanged when
    ``declaring`` is None (an unknown solver or family: validate reports it). Undeclared keys are
    kept for :meth:`RunConfig.validate` to refuse."""
    if not isinstance(options, Mapping):
        raise ConfigError(f"{field_name} must be a mapping of option -> value (got {options!r})")
    if declaring is None:
        return dict(options)
    declared = {info.name: info for info in options_of(declaring)}
    return {**{name: info.default for name, info in declared.items()},
            **{key: _coerce(prefix + key, declared[key].type, value) if key in declared else value
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
    if typing.get_origin(hint) is tuple:  # hidden: tuple[int, ...]; a family's list option: tuple[float, ...]
        if isinstance(value, str):
            value = value.replace(",", " ").split()
        if isinstance(value, numbers.Integral) and not isinstance(value, bool):
            value = [value]
        item_type = typing.get_args(hint)[0]
        if isinstance(value, numbers.Real) and not isinstance(value, bool) and item_type is float:
            value = [value]
        if isinstance(value, (list, tuple)):
            return tuple(_coerce(f"{name}.{index}", item_type, item) for index, item in enumerate(value))
        noun, example = ("integers", "[256, 256]") if item_type is int else ("numbers", "[1.0e-4, 1.0e-3]")
        raise ConfigError(f"{name} must be a list of {noun}, e.g. {example} (got {value!r})")
    raise TypeError(f"RunConfig.{name}: unsupported field type {hint!r}")
