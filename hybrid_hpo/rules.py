"""Allowed values of a setting, stated once: each rule checks a value and describes itself.

The same rule object validates a RunConfig field (:meth:`RunConfig.validate`) and writes the
"allowed values" half of its ``hybrid-hpo run --help`` line, so the two cannot disagree.
"""
from __future__ import annotations

import math
import dataclasses
import typing
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from hybrid_hpo.errors import ConfigError


@dataclass(frozen=True)
class OneOf:
    """A name from ``choices``: a tuple, or a function returning names (lazy: registries that
    import torch are read only when needed)."""

    choices: tuple[str, ...] | Callable[[], Iterable[str]]

    def names(self) -> tuple[str, ...]:
        return tuple(self.choices() if callable(self.choices) else self.choices)

    def check(self, name: str, value: Any) -> None:
        if value not in self.names():
            raise ConfigError(f"{name}: unknown value {value!r}; choose one of {', '.join(self.names())}")

    def describe(self) -> str:
        return "one of " + ", ".join(self.names())


@dataclass(frozen=True)
class Range:
    """A number in [low, high] (open at an end when ``open_low``/``open_high``); an integer with
    ``integer``; ``None`` allowed with ``optional`` (e.g. "the whole split")."""

    low: float | None = None
    high: float | None = None
    open_low: bool = False
    open_high: bool = False
    integer: bool = False
    optional: str = ""
    """What None means, e.g. "the whole split"; empty: None is not allowed."""

    def check(self, name: str, value: Any) -> None:
        if value is None and self.optional:
            return
        low_ok = self.low is None or (value > self.low if self.open_low else value >= self.low)
        high_ok = self.high is None or (value < self.high if self.open_high else value <= self.high)
        whole = not self.integer or (isinstance(value, (int, float)) and float(value).is_integer())
        if not (isinstance(value, (int, float)) and math.isfinite(value) and low_ok and high_ok and whole):
            raise ConfigError(f"{name} must be {self.describe()} (got {value!r})")

    def describe(self) -> str:
        noun = "an integer" if self.integer else "a number"
        bounds = []
        if self.low is not None and self.high is not None and self.open_low and self.open_high:
            noun, bounds = "", [f"strictly between {_text(self.low)} and {_text(self.high)}"]
        else:
            if self.low is not None:
                bounds.append(f"{'>' if self.open_low else '>='} {_text(self.low)}")
            if self.high is not None:
                bounds.append(f"{'<' if self.open_high else '<='} {_text(self.high)}")
        text = f"{noun} {' and '.join(bounds)}".strip()
        return f"{text}, or none for {self.optional}" if self.optional else text


@dataclass(frozen=True)
class Each:
    """A list (a tuple) whose every item follows ``item``; item k is named ``<name>.<k>`` in errors,
    the name that sets it alone (``layer_decay.1``, see :func:`hybrid_hpo.config.indexed_setting`)."""

    item: Any

    def check(self, name: str, value: Any) -> None:
        if not isinstance(value, tuple):
            raise ConfigError(f"{name} must be a list, each item {self.item.describe()} (got {value!r})")
        for index, entry in enumerate(value):
            self.item.check(f"{name}.{index}", entry)

    def describe(self) -> str:
        return f"a list, each item {self.item.describe()}"


def setting(default: Any, help: str, rule: Any) -> Any:
    """A declared setting (a RunConfig field, or a field of a family's options): a dataclass field
    with its default, one line of help and the rule of its allowed values (None: its type is the
    rule); ``hybrid-hpo run --help`` shows ``help; allowed values``."""
    return dataclasses.field(default=default, metadata={"help": help, "rule": rule})


@dataclass(frozen=True)
class OptionInfo:
    """One declared option: name, type hint (e.g. ``int``), default, one-line help and rule (None:
    validated elsewhere, e.g. by a solver's constructor)."""

    name: str
    type: Any
    default: Any
    help: str
    rule: Any = None


def options_of(cls: type) -> tuple[OptionInfo, ...]:
    """The options a dataclass declares (its fields), in declaration order."""
    hints = typing.get_type_hints(cls)
    return tuple(OptionInfo(f.name, hints[f.name], f.default, f.metadata.get("help", ""), f.metadata.get("rule"))
                 for f in dataclasses.fields(cls))


def check_rules(instance: Any) -> None:
    """Check every field of the dataclass ``instance`` against its declared rule (one-line ConfigError
    naming the field on the first bad value)."""
    for item in dataclasses.fields(instance):
        rule = item.metadata.get("rule")
        if rule is not None:
            rule.check(item.name, getattr(instance, item.name))


def _text(number: float) -> str:
    return "2**32" if number == 2**32 else f"{number:g}"


@dataclass(frozen=True)
class Described:
    """A rule checked by ``check(name, value)`` written elsewhere, with its one-line description."""

    text: str
    check_value: Callable[[str, Any], None]

    def check(self, name: str, value: Any) -> None:
        self.check_value(name, value)

    def describe(self) -> str:
        return self.text
