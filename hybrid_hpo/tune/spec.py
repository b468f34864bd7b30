"""A sweep as a file: the pydantic model of ``searches/*.yaml`` and its loader.

Layout (every key optional except ``search``; see searches/quickstart.yaml)::

    name: quickstart            # results/<name>-<time>/ and the study name prefix (default: file stem)
    task:   {dataset: digits, model: mlp, hidden: [512, 256], family: weight_decay, granularity: per_weight}
    # or your own task: {factory: "my_tasks.py:make_task", family: weight_decay} (FILE.py:FUNCTION or
    # MODULE:FUNCTION returning a hybrid_hpo.Task; a relative FILE.py is relative to the working directory)
    inner:  {epochs: 4, inner_steps: 5, batch_size: 64, inner_optimizer: momentum, hyper_optimizer: adam}
    solver: {name: neumann, terms: 5, alpha: 0.1}   # the solver and its own options (docs/solvers.md)
    search:                     # the outer space: RunConfig keys -> distributions
      inner_lr: {type: loguniform, low: 1.0e-3, high: 0.3}
      inner_steps: {type: int, low: 1, high: 10}
      solver.terms: {type: int, low: 1, high: 10}     # a solver option, by its dotted name
    sampler: tpe                # tpe | gp
    num_trials: 8
    max_concurrent: 2
    scheduler: fifo             # fifo | asha | pbt (population-based training that inherits weights and λ;
    pbt: {perturbation_interval: 2, quantile_fraction: 0.25, resample_probability: 0.25, synch: false}  # tune/pbt.py
    resources: {cpu: 1, gpu: auto}
    checkpoint_every: 5         # epochs between trial checkpoints (0: only at the end)
    max_failures: 2             # a trial whose process dies restarts from its last checkpoint, this often
    time_budget_s: 600          # optional: stop the sweep after this many seconds (running trials stop
                                # where they are; no new ones start)
    pending_timeout_s: 600      # stop (with a message) when trials wait PENDING this long and none runs
    initial_points:             # optional warm start: the first trials, at these settings (searched keys;
      - {inner_lr: 0.1, inner_steps: 2}   # a key left out is sampled)
    metric: sel_loss            # sel_loss, sel_acc, sel_<name> of your task's metrics (the selection
                                # split; val_* without one), or val_*; trials are judged by its best epoch
    mode: min

``task``, ``inner`` and ``solver`` hold fixed RunConfig settings (``solver.name`` is RunConfig's
``solver``, any other ``solver`` key an option of that solver, set as ``solver.<option>``;
``task.factory`` is RunConfig's ``task``); the split of ``task`` and ``inner`` is for people, any other
RunConfig key may go in either, but only once. :func:`load_spec` validates everything — including that the fixed settings with every
corner of the search space make a valid RunConfig — before anything is created, and raises a
one-line :class:`ConfigError` naming the file and the field.
"""
from __future__ import annotations

import difflib
import math
import re
import typing
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from hybrid_hpo.config import (SOLVER_PREFIX, RunConfig, field_names, indexed_setting, is_setting,
                               unknown_setting_message)
from hybrid_hpo.errors import ConfigError
from hybrid_hpo.tune.distributions import DISTRIBUTION_TYPES, Distribution
from hybrid_hpo.tune.samplers import SamplerName

FIXED_SECTIONS: tuple[str, ...] = ("task", "inner", "solver")
OBJECTIVES: dict[str, str] = {"sel_loss": "min", "sel_acc": "max", "val_loss": "min", "val_acc": "max",
                              "train_loss": "min", "train_acc": "max"}
"""The built-in objectives and their direction; a task's own metric ``sel_<name>`` / ``val_<name>``
takes ``mode`` as given. A trial is judged by ``<metric>_best`` (:mod:`hybrid_hpo.objective`)."""
TASK_METRIC = re.compile(r"(train|val|sel)_[a-z][a-z0-9_]*")
FACTORY_KEY = "factory"
"""``task.factory`` of a spec file: RunConfig's ``task`` (a task factory's name)."""


_RENAMED: dict[tuple[str, str], str] = {("solver", "name"): "solver", ("task", FACTORY_KEY): "task"}


def setting_name(section: str, key: str) -> str:
    """The RunConfig setting that ``key`` of a spec section sets (``solver.name`` -> solver,
    ``solver.max_iter`` -> solver.max_iter, ``task.factory`` -> task; any other key is its own name)."""
    if section == "solver" and (section, key) not in _RENAMED:
        return SOLVER_PREFIX + key
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

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)  # a bool is no number
    cpu: float = Field(default=1.0, gt=0)
    gpu: Literal["auto"] | float = Field(default="auto")

    @field_validator("gpu", mode="before")
    @classmethod
    def _auto_or_count(cls, value: Any) -> Any:
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if value != "auto" and not (number and math.isfinite(value) and value >= 0):
            raise ValueError(f"must be 'auto' or a number >= 0 (got {value!r}); e.g. gpu: 1, or 0 for none")
        return value


class Pbt(BaseModel):
    """Population-based training (:mod:`hybrid_hpo.tune.pbt`): exploit / explore every
    ``perturbation_interval`` epochs; bottom ``quantile_fraction`` copies the top."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)  # a bool is no number
    perturbation_interval: int = Field(default=2, ge=1)
    quantile_fraction: float = Field(default=0.25, gt=0, le=0.5)
    resample_probability: float = Field(default=0.25, ge=0, le=1)
    synch: bool = False  # wait for the whole population at every perturbation point (tune/pbt.py)


class Asha(BaseModel):
    """ASHA early stopping on ``training_iteration`` (epochs): rungs at grace_period * rf^k."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)  # a bool is no number
    grace_period: int = Field(default=1, ge=1)
    reduction_factor: float = Field(default=2.0, gt=1)


class SweepSpec(BaseModel):
    """One sweep: fixed settings, search space, budget, resources, objective (module docstring)."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)  # a bool is no number
    name: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_.-]+$")
    task: dict[str, Any] = Field(default_factory=dict)
    inner: dict[str, Any] = Field(default_factory=dict)
    solver: dict[str, Any] = Field(default_factory=dict)
    search: dict[str, Distribution]
    sampler: SamplerName = "tpe"
    seed: int | None = Field(default=0, ge=0, lt=2**32)  # the sampler's seed (numpy's range)
    startup_trials: int | None = Field(default=None, ge=0)
    num_trials: int = Field(default=8, ge=1)
    max_concurrent: int = Field(default=2, ge=1)
    scheduler: Literal["fifo", "asha", "pbt"] = "fifo"
    asha: Asha = Field(default_factory=Asha)
    pbt: Pbt = Field(default_factory=Pbt)
    resources: Resources = Field(default_factory=Resources)
    checkpoint_every: int = Field(default=5, ge=0)
    max_failures: int = Field(default=2, ge=0)  # restarts of a trial whose process died (from its checkpoint)
    time_budget_s: float | None = Field(default=None, gt=0)  # wall-clock limit of the whole sweep (Ray's)
    pending_timeout_s: float = Field(default=600.0, gt=0)  # stop when trials wait PENDING this long, none running
    initial_points: list[dict[str, Any]] = Field(default_factory=list)  # warm start: the first trials' settings
    metric: str = "sel_loss"
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
            raise ValueError(f"{value} would tune on the test set; use sel_loss or sel_acc")
        if value not in OBJECTIVES and not TASK_METRIC.fullmatch(value):
            raise ValueError(f"unknown metric {value!r}; choose one of {', '.join(OBJECTIVES)} or sel_<name> of "
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

    @field_validator("search")
    @classmethod
    def _one_judge(cls, value: dict) -> dict:
        if "selection_fraction" in value:
            raise ValueError("selection_fraction cannot be searched: the selection split judges every trial, so all "
                             "trials share it; fix it in task (e.g. selection_fraction: 0.2)")
        return value

    @model_validator(mode="after")
    def _pbt_mutates_meta_settings_only(self) -> "SweepSpec":
        from hybrid_hpo.tune.pbt import MUTABLE, check_mutable

        fixed = check_mutable(list(self.search)) if self.scheduler == "pbt" else None
        if fixed is not None:
            raise ValueError(f"search.{fixed}: scheduler pbt copies one trial's weights and λ into another mid-run, "
                             f"so it can only change {', '.join(MUTABLE)} or solver.<option>; fix {fixed} in task "
                             "or inner, or use scheduler fifo or asha")
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


MAX_SPEC_BYTES = 1 << 20  # a spec is a few hundred bytes; a bigger file is a mistake (or an attack)
MAX_SPEC_DEPTH = 20  # nesting levels of mappings and lists
MAX_SPEC_NODES = 100_000  # YAML nodes with every alias expanded (an alias bomb expands to billions)


class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads 1e-3 (no dot) as a float, as YAML 1.2 does, and refuses a key
    given twice in one mapping (plain YAML keeps the last silently)."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, Any] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                if isinstance(key, typing.Hashable) and key in seen:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"duplicate key {key!r} (first at line {seen[key].line + 1}); keep one of them",
                        key_node.start_mark)
                if isinstance(key, typing.Hashable):
                    seen[key] = key_node.start_mark
        return super().construct_mapping(node, deep=deep)


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+$"),
    list("-+0123456789."),
)


def _expanded_size(node: yaml.Node, depth: int, sizes: dict[int, int]) -> int:
    """Nodes under ``node`` with aliases expanded (memoised per node, so a bomb costs its own size);
    ValueError past MAX_SPEC_DEPTH or MAX_SPEC_NODES."""
    if depth > MAX_SPEC_DEPTH:
        raise ValueError(f"nested deeper than {MAX_SPEC_DEPTH} levels")
    if id(node) not in sizes:
        children = node.value if isinstance(node, (yaml.SequenceNode, yaml.MappingNode)) else []
        flat = [part for child in children for part in (child if isinstance(child, tuple) else (child,))]
        sizes[id(node)] = 1 + sum(_expanded_size(child, depth + 1, sizes) for child in flat)
        if sizes[id(node)] > MAX_SPEC_NODES:
            raise ValueError(f"expands to more than {MAX_SPEC_NODES:,} values (YAML aliases)")
    return sizes[id(node)]


def _read_text(path: Path) -> str:
    """The file's text: a regular file (a FIFO or device would block or never end) of at most
    MAX_SPEC_BYTES, UTF-8 without NUL bytes; ConfigError otherwise."""
    import stat

    try:
        info = path.stat()
        if not stat.S_ISREG(info.st_mode):
            raise ConfigError(f"{path}: not a regular file (a folder, FIFO or device); pass a YAML file")
        if info.st_size > MAX_SPEC_BYTES:
            raise ConfigError(f"{path}: {info.st_size:,} bytes is too large for a spec (at most "
                              f"{MAX_SPEC_BYTES:,}); pass the YAML spec file")
        data = path.read_bytes()[: MAX_SPEC_BYTES + 1]
    except OSError as error:
        raise ConfigError(f"{path}: cannot read the spec file ({error.strerror}); check the path") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ConfigError(f"{path}: not UTF-8 text (byte {error.start}); save the spec as UTF-8 YAML") from None
    if "\0" in text:
        raise ConfigError(f"{path}: a binary file (NUL bytes); pass the YAML spec file")
    return text


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
    <problem>; <fix>`` when the file cannot be read, is not a small UTF-8 regular file, is not YAML
    (a duplicate key included), nests or expands (aliases) beyond the limits, is not a mapping, or
    is the other kind of file (the message names the command that runs it)."""
    text = _read_text(path)
    try:
        loader = _Loader(text)
        try:
            root = loader.get_single_node()
            if root is not None:
                _expanded_size(root, 0, {})
            raw = loader.construct_document(root) if root is not None else None
        finally:
            loader.dispose()
    except (ValueError, RecursionError) as error:
        problem = error if isinstance(error, ValueError) else f"nested deeper than {MAX_SPEC_DEPTH} levels"
        raise ConfigError(f"{path}: {problem}; a spec is a small mapping, simplify it") from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        fix = "" if problem.endswith("keep one of them") else "; fix the syntax"
        raise ConfigError(f"{path}: invalid YAML{where}: {problem}{fix}") from None
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
    """Every fixed and searched key is a RunConfig setting, set once, and the space's corners are valid."""
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
    match = re.match(r"([\w.]+):? ", message)
    key, rest = (match.group(1), message[match.end():]) if match else ("", message)
    if key in fixed:
        return f"{fixed[key]}: {rest}"
    if key in searched:
        return f"search.{key}: {rest} (at {label})"
    option = (indexed_setting(key) or (key, 0))[0]
    if any((indexed_setting(name) or ("", 0))[0] == option for name in searched):  # items of a list option
        return f"search.{key}: {rest}"
    return f"{message} (at {label})"


def check_known_key(field: str, key: str, names: tuple[str, ...], source: str) -> None:
    """ConfigError ``<source>: <field>: unknown setting; ...`` unless ``key`` is a RunConfig setting
    (a field of ``names`` or ``solver.<option>``, checked against the solver when built)."""
    if key not in names and not is_setting(key):
        raise ConfigError(f"{source}: {unknown_setting_message(key, field)}")
