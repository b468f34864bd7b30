"""A sweep as a file: the pydantic model of ``searches/*.yaml`` and its loader.

Layout (every key optional except ``search``; see searches/quickstart.yaml)::

    name: quickstart            # results/<name>-<time>/ and the study name prefix (default: file stem)
    task:   {dataset: digits, model: mlp, hidden: [512, 256], family: weight_decay, granularity: per_weight}
    # or your own task: {factory: "my_tasks.py:make_task", family: weight_decay} (FILE.py:FUNCTION or
    # MODULE:FUNCTION returning a hybrid_hpo.Task; a relative FILE.py is relative to the working directory)
    inner:  {epochs: 4, inner_steps: 5, batch_size: 64, inner_optimizer: momentum, hyper_optimizer: adam}
    solver: {name: neumann, terms: 5, alpha: 0.1}
    search:                     # the outer space: RunConfig keys -> distributions
      inner_lr: {type: loguniform, low: 1.0e-3, high: 0.3}
      inner_steps: {type: int, low: 1, high: 10}
    sampler: tpe                # tpe | gp
    num_trials: 8
    max_concurrent: 2
    scheduler: fifo             # fifo | asha
    resources: {cpu: 1, gpu: auto}
    checkpoint_every: 5         # epochs between trial checkpoints (0: only at the end)
    max_failures: 2             # a trial whose process dies restarts from its last checkpoint, this often
    time_budget_s: 600          # optional: stop the sweep after this many seconds (running trials stop
                                # where they are; no new ones start)
    initial_points:             # optional warm start: the first trials, at these settings (searched keys;
      - {inner_lr: 0.1, inner_steps: 2}   # a key left out is sampled)
    metric: val_loss            # val_loss, val_acc, or val_<name> of your task's metrics
    mode: min

``task``, ``inner`` and ``solver`` hold fixed RunConfig settings (``solver.name`` is RunConfig's
``solver``, ``task.factory`` its ``task``); the split into three sections is for people, any RunConfig key may go in any of them,
but only once. :func:`load_spec` validates everything — including that the fixed settings with every
corner of the search space make a valid RunConfig — before anything is created, and raises a
one-line :class:`ConfigError` naming the file and the field.
"""
from __future__ import annotations

import difflib
import re
import typing
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from hybrid_hpo.config import RunConfig, field_names
from hybrid_hpo.errors import ConfigError
from hybrid_hpo.tune.distributions import DISTRIBUTION_TYPES, Distribution

FIXED_SECTIONS: tuple[str, ...] = ("task", "inner", "solver")
OBJECTIVES: dict[str, str] = {"val_loss": "min", "val_acc": "max", "train_loss": "min", "train_acc": "max"}
"""The built-in objectives and their direction; a task's own metric ``val_<name>`` takes ``mode`` as given."""
TASK_METRIC = re.compile(r"(train|val)_[a-z][a-z0-9_]*")
FACTORY_KEY = "factory"
"""``task.factory`` of a spec file: RunConfig's ``task`` (a task factory's name)."""


_RENAMED: dict[tuple[str, str], str] = {("solver", "name"): "solver", ("task", FACTORY_KEY): "task"}


def setting_name(section: str, key: str) -> str:
    """The RunConfig field that ``key`` of a spec section sets (``solver.name`` -> solver,
    ``task.factory`` -> task; any other key is its own name)."""
    return _RENAMED.get((section, key), key)


def task_settings(section: dict[str, Any]) -> dict[str, Any]:
    """A spec's ``task`` section as RunConfig settings: ``factory`` becomes ``task``, with a relative
    ``FILE.py`` made absolute (trials run in other working directories)."""
    return {setting_name("task", key): absolute_factory(value) if key == FACTORY_KEY else value
            for key, value in section.items()}


def absolute_factory(name: Any) -> Any:
    """``FILE.py:FUNCTION`` with FILE resolved against the working directory; anything else as is."""
    if isinstance(name, str) and ":" in name:
        target, function = name.rsplit(":", 1)
        if target.endswith(".py"):
            return f"{Path(target).expanduser().resolve()}:{function}"
    return name


class Resources(BaseModel):
    """Per trial: CPUs (also torch's thread count) and GPUs ("auto": 1 when the cluster has any)."""

    model_config = ConfigDict(extra="forbid")
    cpu: float = Field(default=1.0, gt=0)
    gpu: Literal["auto"] | float = Field(default="auto")

    @field_validator("gpu")
    @classmethod
    def _nonnegative(cls, value: Any) -> Any:
        if value != "auto" and value < 0:
            raise ValueError(f"must be 'auto' or a number >= 0 (got {value})")
        return value


class Asha(BaseModel):
    """ASHA early stopping on ``training_iteration`` (epochs): rungs at grace_period * rf^k."""

    model_config = ConfigDict(extra="forbid")
    grace_period: int = Field(default=1, ge=1)
    reduction_factor: float = Field(default=2.0, gt=1)


class SweepSpec(BaseModel):
    """One sweep: fixed settings, search space, budget, resources, objective (module docstring)."""

    model_config = ConfigDict(extra="forbid")
    name: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_.-]+$")
    task: dict[str, Any] = Field(default_factory=dict)
    inner: dict[str, Any] = Field(default_factory=dict)
    solver: dict[str, Any] = Field(default_factory=dict)
    search: dict[str, Distribution]
    sampler: Literal["tpe", "gp"] = "tpe"
    seed: int | None = 0
    startup_trials: int | None = Field(default=None, ge=0)
    num_trials: int = Field(default=8, ge=1)
    max_concurrent: int = Field(default=2, ge=1)
    scheduler: Literal["fifo", "asha"] = "fifo"
    asha: Asha = Field(default_factory=Asha)
    resources: Resources = Field(default_factory=Resources)
    checkpoint_every: int = Field(default=5, ge=0)
    max_failures: int = Field(default=2, ge=0)  # restarts of a trial whose process died (from its checkpoint)
    time_budget_s: float | None = Field(default=None, gt=0)  # wall-clock limit of the whole sweep (Ray's)
    initial_points: list[dict[str, Any]] = Field(default_factory=list)  # warm start: the first trials' settings
    metric: str = "val_loss"
    mode: Literal["min", "max"] = "min"

    @field_validator("search")
    @classmethod
    def _not_empty(cls, value: dict) -> dict:
        if not value:
            raise ValueError("is empty; add at least one setting to search, e.g. inner_lr: {type: loguniform, ...}")
        return value

    @field_validator("metric")
    @classmethod
    def _validation_objective(cls, value: str) -> str:
        if value.startswith("test_"):
            raise ValueError(f"{value} would tune on the test set; use val_loss or val_acc")
        if value not in OBJECTIVES and not TASK_METRIC.fullmatch(value):
            raise ValueError(f"unknown metric {value!r}; choose one of {', '.join(OBJECTIVES)} or val_<name> of "
                             "your task's metrics")
        return value

    @model_validator(mode="after")
    def _points_in_space(self) -> "SweepSpec":
        for index, point in enumerate(self.initial_points):
            for key, value in point.items():
                if key not in self.search:
                    raise ValueError(f"initial_points[{index}].{key}: not a searched setting; give only keys of "
                                     f"search ({', '.join(self.search)})")
                if not self.search[key].contains(value):
                    raise ValueError(f"initial_points[{index}].{key}: {value!r} is outside search.{key} "
                                     f"({self.search[key].model_dump(exclude={'type'})}); widen the range or change it")
        return self

    @model_validator(mode="after")
    def _mode_matches_metric(self) -> "SweepSpec":
        if self.metric in OBJECTIVES and OBJECTIVES[self.metric] != self.mode:
            raise ValueError(f"mode: {self.mode} of {self.metric} looks inverted; use mode: {OBJECTIVES[self.metric]}")
        return self

    def fixed_settings(self) -> dict[str, Any]:
        """task + inner + solver as one RunConfig mapping (``solver.name`` -> ``solver``)."""
        fixed: dict[str, Any] = {}
        for section in FIXED_SECTIONS:
            settings = task_settings(self.task) if section == "task" else getattr(self, section)
            for key, value in settings.items():
                fixed[setting_name(section, key)] = value
        return fixed

    def sample_configs(self) -> list[tuple[str, dict[str, Any]]]:
        """(label, config) pairs covering each searched key at each of its corners (others at low)."""
        low = {key: dist.corners()[0] for key, dist in self.search.items()}
        samples = [("every searched key at low", {**self.fixed_settings(), **low})]
        for key, dist in self.search.items():
            for corner in dist.corners()[1:]:
                samples.append((f"{key} = {corner!r}", {**self.fixed_settings(), **low, key: corner}))
        return samples


class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads 1e-3 (no dot) as a float, as YAML 1.2 does."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+$"),
    list("-+0123456789."),
)


def load_spec(path: str | Path) -> SweepSpec:
    """Read and fully validate a sweep file; ConfigError ``<path>: <field>: <problem and fix>``."""
    path = Path(path)
    return validate_spec(read_spec_file(path, "sweep"), source=str(path), default_name=path.stem)


_SPEC_KINDS: dict[str, tuple[str, str, str]] = {  # kind -> (its own top-level key, its keys, the command)
    "sweep": ("search", "task, inner, solver, search, ...", "sweep"),
    "comparison": ("strategies", "task, seeds, budget_s, strategies, ...", "compare"),
}


def read_spec_file(path: Path, kind: str) -> dict[str, Any]:
    """The YAML mapping in a ``kind`` file ("sweep" or "comparison"); ConfigError ``<path>:
    <problem>; <fix>`` when the file cannot be read, is not YAML, is not a mapping, or is the other
    kind of file (the message names the command that runs it)."""
    try:
        raw = yaml.load(path.read_text(), Loader=_Loader)  # noqa: S506 - a SafeLoader subclass
    except OSError as error:
        raise ConfigError(f"{path}: cannot read the spec file ({error.strerror}); check the path") from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise ConfigError(f"{path}: invalid YAML{where}: {problem}; fix the syntax") from None
    own_key, keys, _ = _SPEC_KINDS[kind]
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: a {kind} file must be a mapping of keys ({keys}), got {type(raw).__name__}")
    for other, (other_key, _, command) in _SPEC_KINDS.items():
        if other != kind and other_key in raw and own_key not in raw:
            raise ConfigError(f"{path}: is a {other} file; run hybrid-hpo {command} {path}")
    return raw


def validate_spec(raw: dict[str, Any], source: str = "spec", default_name: str = "sweep") -> SweepSpec:
    """Validate a spec mapping (see :func:`load_spec`); ``source`` prefixes error messages."""
    try:
        spec = SweepSpec.model_validate(raw)
    except ValidationError as error:
        raise ConfigError(f"{source}: {first_error(error)}") from None
    if spec.name is None:
        spec.name = re.sub(r"[^A-Za-z0-9_.-]", "-", default_name)
    _check_settings(spec, source)
    return spec


def first_error(error: ValidationError, model: type[BaseModel] | None = None) -> str:
    """One line for the first pydantic error of validating ``model`` (default SweepSpec): dotted
    field path, problem, fix."""
    errors = sorted(error.errors(), key=lambda e: e["type"] != "extra_forbidden")  # typos first
    first = errors[0]
    loc = [str(part) for part in first["loc"]]
    if "search" in loc:
        tag = loc.index("search") + 2
        if tag < len(loc) and loc[tag] in DISTRIBUTION_TYPES:
            del loc[tag]  # the discriminator tag pydantic inserts for the union member
    field = ".".join(loc)
    kind, message = first["type"], first["msg"].removeprefix("Value error, ")
    more = f" (+{error.error_count() - 1} more)" if error.error_count() > 1 else ""
    if kind == "extra_forbidden":
        parent = _parent_model(loc, model or SweepSpec)
        allowed = ", ".join(parent) if parent else ""
        guess = difflib.get_close_matches(loc[-1], parent, n=1)
        hint = f"did you mean {guess[0]!r}?" if guess else f"allowed keys: {allowed}"
        return f"{field}: unknown key; {hint}{more}"
    if kind == "missing":
        return f"{field}: required key is missing; add it{more}"
    if kind in ("union_tag_invalid", "union_tag_not_found"):
        return f"{field}: needs type: one of {', '.join(DISTRIBUTION_TYPES)}{more}"
    if kind == "value_error":
        return f"{field}: {message}{more}" if field else f"{message}{more}"
    return f"{field}: {message} (got {first.get('input')!r}){more}"


def _parent_model(loc: list[str], model: Any) -> list[str]:
    """Allowed keys at the place of an unknown key (for the hint): walks pydantic models and
    ``dict[str, Model]`` fields down ``loc``; a key inside a ``search`` distribution gets the
    distribution keys."""
    if loc[-3:-2] == ["search"]:
        return ["type", "low", "high", "log", "values"]
    parts = iter(loc[:-1])
    for part in parts:
        annotation = getattr(model, "model_fields", {}).get(part)
        annotation = annotation.annotation if annotation is not None else None
        value_type = typing.get_args(annotation)[-1] if typing.get_origin(annotation) is dict else None
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            model = annotation
        elif isinstance(value_type, type) and issubclass(value_type, BaseModel) and next(parts, None) is not None:
            model = value_type
        else:
            return []
    return list(getattr(model, "model_fields", {}))


def _check_settings(spec: SweepSpec, source: str) -> None:
    """Every fixed and searched key is a RunConfig field, set once, and the space's corners are valid."""
    names = field_names()
    seen: dict[str, str] = {}
    for section in FIXED_SECTIONS:
        for key in getattr(spec, section):
            target = setting_name(section, key)
            check_known_key(f"{section}.{key}", target, names, source)
            if target in seen:
                raise ConfigError(f"{source}: {section}.{key}: {target} is already set in {seen[target]}; keep one")
            seen[target] = f"{section}.{key}"
    for key in spec.search:
        check_known_key(f"search.{key}", key, names, source)
        if key in seen:
            raise ConfigError(f"{source}: search.{key}: also fixed in {seen[key]}; search it or fix it, not both")
    for label, values in spec.sample_configs():
        try:
            RunConfig.from_mapping(values)
        except ConfigError as error:
            raise ConfigError(f"{source}: {_locate(str(error), seen, spec.search, label)}") from None


def _locate(message: str, fixed: dict[str, str], searched: dict[str, Any], label: str) -> str:
    """Point a RunConfig message ("alpha must be > 0 ...") at the spec field that set the value."""
    match = re.match(r"(\w+):? ", message)
    key, rest = (match.group(1), message[match.end():]) if match else ("", message)
    if key in fixed:
        return f"{fixed[key]}: {rest}"
    if key in searched:
        return f"search.{key}: {rest} (at {label})"
    return f"{message} (at {label})"


def check_known_key(field: str, key: str, names: tuple[str, ...], source: str) -> None:
    if key not in names:
        guess = difflib.get_close_matches(key, names, n=1)
        hint = f"did you mean {guess[0]!r}?" if guess else f"valid settings: {', '.join(names)}"
        raise ConfigError(f"{source}: {field}: unknown setting; {hint}")
