"""Search-space distributions for the outer (Bayesian) search over meta-settings.

Each class is a pydantic model, so the same objects validate ``search:`` entries of a
``searches/*.yaml`` file and serve as the Python API of :func:`hybrid_hpo.tune.make_search`:

    LogUniform(low=1e-3, high=0.3)      # log-uniform on [low, high], low > 0
    Uniform(low=0.1, high=0.5)          # uniform on [low, high]
    IntRange(low=1, high=20, log=False) # integers low..high, both ends included (Optuna semantics)
    Choice(values=["sgd", "adam"])      # one of the values

``to_optuna()`` gives the matching ``optuna.distributions`` object; ``corners()`` gives the
extreme values a sweep validates against ``RunConfig`` before anything starts.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, model_validator

if TYPE_CHECKING:
    from optuna.distributions import BaseDistribution

Scalar = Union[bool, int, float, str]


class _Distribution(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)  # a bool is no number

    def to_optuna(self) -> "BaseDistribution":
        raise NotImplementedError

    def corners(self) -> list[Scalar]:
        """Values at the edges of the distribution (checked against RunConfig before a sweep)."""
        raise NotImplementedError

    def contains(self, value: Any) -> bool:
        """Whether the distribution can produce ``value`` (for points given by hand)."""
        raise NotImplementedError


class _Range(_Distribution):
    low: float
    high: float

    @model_validator(mode="after")
    def _ordered(self) -> "_Range":
        if self.low > self.high:
            raise ValueError(f"low ({self.low:g}) must be < high ({self.high:g}); swap them")
        if self.low == self.high:
            raise ValueError(
                f"empty range: low == high == {self.low:g}; widen it or make the setting fixed"
            )
        return self

    def corners(self) -> list[Scalar]:
        return [self.low, self.high]

    def contains(self, value: Any) -> bool:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and self.low <= value <= self.high


class LogUniform(_Range):
    """Log-uniform on [low, high] with 0 < low < high (learning rates, damping)."""

    type: Literal["loguniform"] = "loguniform"

    @model_validator(mode="after")
    def _positive(self) -> "LogUniform":
        if self.low <= 0:
            raise ValueError(f"low ({self.low:g}) must be > 0 for loguniform; use a positive low or uniform")
        return self

    def to_optuna(self) -> "BaseDistribution":
        from optuna.distributions import FloatDistribution

        return FloatDistribution(self.low, self.high, log=True)


class Uniform(_Range):
    """Uniform on [low, high] with low < high (Neumann alpha, val_fraction)."""

    type: Literal["uniform"] = "uniform"

    def to_optuna(self) -> "BaseDistribution":
        from optuna.distributions import FloatDistribution

        return FloatDistribution(self.low, self.high)


class IntRange(_Distribution):
    """Integers low..high, both included; log=True samples on a log scale (needs low >= 1)."""

    type: Literal["int"] = "int"
    low: int
    high: int
    log: bool = False

    @model_validator(mode="after")
    def _ordered(self) -> "IntRange":
        if self.low > self.high:
            raise ValueError(f"low ({self.low}) must be < high ({self.high}); swap them")
        if self.low == self.high:
            raise ValueError(f"empty range: low == high == {self.low}; widen it or make the setting fixed")
        if self.log and self.low < 1:
            raise ValueError(f"low ({self.low}) must be >= 1 with log: true; raise low or set log: false")
        return self

    def to_optuna(self) -> "BaseDistribution":
        from optuna.distributions import IntDistribution

        return IntDistribution(self.low, self.high, log=self.log)

    def corners(self) -> list[Scalar]:
        return [self.low, self.high]

    def contains(self, value: Any) -> bool:
        return isinstance(value, int) and not isinstance(value, bool) and self.low <= value <= self.high


class Choice(_Distribution):
    """One of ``values`` (at least two, no repeats)."""

    type: Literal["choice"] = "choice"
    values: list[Scalar]

    @model_validator(mode="after")
    def _distinct(self) -> "Choice":
        if len(self.values) < 2:
            raise ValueError(f"needs at least 2 values (got {len(self.values)}); add values or make the setting fixed")
        if len(set(map(repr, self.values))) != len(self.values):
            raise ValueError(f"values repeat ({self.values}); list each value once")
        return self

    def to_optuna(self) -> "BaseDistribution":
        from optuna.distributions import CategoricalDistribution

        return CategoricalDistribution(tuple(self.values))

    def corners(self) -> list[Scalar]:
        return list(self.values)

    def contains(self, value: Any) -> bool:
        return any(type(value) is type(v) and value == v for v in self.values)


Distribution = Annotated[Union[LogUniform, Uniform, IntRange, Choice], Field(discriminator="type")]
"""A ``search:`` entry; the ``type`` key picks the class."""

DISTRIBUTION_TYPES: tuple[str, ...] = ("loguniform", "uniform", "int", "choice")


def to_optuna_distribution(name: str, value: Any) -> "BaseDistribution":
    """Convert one search-space entry (ours, a Ray Tune domain, or an Optuna distribution).

    Raises ConfigError naming ``space.<name>`` for anything else.
    """
    from optuna.distributions import BaseDistribution
    from ray.tune.search.sample import Domain
    from ray.tune.search.optuna import OptunaSearch

    from hybrid_hpo.errors import ConfigError

    if isinstance(value, _Distribution):
        return value.to_optuna()
    if isinstance(value, BaseDistribution):
        return value
    if isinstance(value, Domain):
        try:
            return OptunaSearch.convert_search_space({name: value})[name]
        except ValueError as error:
            raise ConfigError(f"space.{name}: {error}") from None
    raise ConfigError(
        f"space.{name}: {type(value).__name__} is not a distribution; use LogUniform/Uniform/IntRange/Choice, "
        "a ray.tune domain (tune.loguniform, ...) or an optuna distribution, and pass fixed settings in the base config"
    )
