"""A comparison as a file: the strategies, one task, one wall-clock budget (``searches/compare_*.yaml``).

Layout (see searches/compare_digits_few.yaml)::

    name: compare-digits-few
    task: {dataset: digits, train_size: 100, val_size: 200, model: mlp, hidden: [512, 256]}
                                  # or {factory: "my_tasks.py:make_task"}: your own Task
    seeds: [0, 1, 2, 3, 4]        # one replicate per seed (>= 5 for the paired test): split, init, sampler
    budget_s: 120                 # wall-clock seconds per strategy and seed
    metric: sel_loss              # how every strategy selects its model: the selection split (held out
                                  # from weights and λ; val_* when selection_fraction is 0)
    mode: min                     # needed only for a task's own metric (val_<name>)
    report: test_acc              # the test metric of the table (test_<name> for a task's own metric)
    report_mode: min              # needed only when report is a task's metric other than the selection's
    max_concurrent: 2
    strategies:
      bo_only:       {settings: {family: fixed, fixed_decay: 0, epochs: 60},
                      search: {inner_lr: ..., layer_decay.0: ..., layer_decay.1: ..., fixed_dropout: ...}}
      bo_asha:       {settings: {family: fixed, ...}, search: {...},     # optional: the same search with
                      asha: {grace_period: 5, reduction_factor: 3}}      # ASHA stopping weak trials early
      ift_defaults:  {settings: {family: weight_decay, granularity: per_weight, epochs: 60}}
      hybrid:        {settings: {family: weight_decay, ...}, search: {hyper_lr: ..., solver.terms: ...},
                      warm_start: true}   # optional: first trial at the defaults = the ift_defaults run
      pbt:           {settings: {family: weight_decay, ...}, search: {hyper_lr: ..., solver.terms: ...},
                      population: 4, pbt: {perturbation_interval: 5}}   # optional: population-based
                                  # training over the meta-settings, inheriting weights and λ

``task`` holds the settings every strategy shares; it alone may set the data split (dataset,
sizes, ``val_fraction``, ``imbalance``), so the strategies train, select and are tested on
the same examples. The baselines ``bo_only`` and ``bo_asha`` (optional) must use a family without λ
(``fixed`` or ``fixed_augment``: no hypergradients; ``fixed`` searches per-tensor decays
``layer_decay.k``, dropout and class weights), ``ift_defaults``, ``hybrid`` and ``pbt`` one with λ;
``ift_defaults`` searches nothing; ``bo_asha`` is TPE with Ray Tune's ASHA scheduler, which stops
trials that trail at its rungs (``asha``: grace period and reduction factor, epochs); ``pbt``
(optional) runs ``population`` trials side by side under Ray Tune's PBT
(:mod:`hybrid_hpo.tune.pbt`): its space gives the first settings and the ranges of the perturbations.
Each sweep strategy becomes a :class:`~hybrid_hpo.tune.spec.SweepSpec` checked by the sweep
validator, so a bad key fails before anything runs, with a one-line ConfigError naming the field.
"""
from __future__ import annotations

import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from hybrid_hpo.config import RunConfig, field_names, indexed_setting
from hybrid_hpo.errors import ConfigError
from hybrid_hpo.tune.distributions import Distribution
from hybrid_hpo.tune.samplers import SamplerName
from hybrid_hpo.tune.spec import (OBJECTIVES, TASK_METRIC, Asha, Pbt, Resources, SweepSpec, check_known_key,
                                  first_error, read_spec_file, setting_name, task_settings, validate_spec)

StrategyName = Literal["bo_only", "bo_asha", "ift_defaults", "hybrid", "pbt"]
STRATEGIES: tuple[str, ...] = typing.get_args(StrategyName)
REQUIRED: tuple[str, ...] = ("bo_only", "ift_defaults", "hybrid")
SEARCHED: tuple[str, ...] = ("bo_only", "bo_asha", "hybrid", "pbt")
"""``pbt`` (optional): population-based training over the meta-settings that inherits weights and λ."""
BASELINES: tuple[str, ...] = ("bo_only", "bo_asha")
"""The strategies without hypergradients (a family without λ); ``bo_asha`` (optional) adds ASHA."""
OWN_KEYS: dict[str, tuple[str, ...]] = {"pbt": ("population", "pbt"), "bo_asha": ("asha",)}
"""Strategy keys only one strategy takes."""
SPLIT_KEYS: tuple[str, ...] = ("task", "dataset", "data_root", "download", "val_fraction", "train_size",
                               "val_size", "imbalance", "selection_fraction", "seed")
"""Settings that decide the examples of each split: only ``task`` sets them (``seed`` comes from ``seeds``)."""
STARTUP_TRIALS = 5
"""A search's random start-up trials unless its strategy says otherwise (TPE's own default, 10, would
leave short budgets no model-guided trial; the table counts them)."""


class Strategy(BaseModel):
    """One strategy: its fixed settings (RunConfig keys) and, for the searches, the space,
    sampler and startup trials. ``warm_start``: the search's first trial runs RunConfig's defaults
    of the searched keys (for the hybrid with the settings of ift_defaults: that very run)."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)  # a bool is no number
    settings: dict[str, Any] = Field(default_factory=dict)
    search: dict[str, Distribution] = Field(default_factory=dict)
    sampler: SamplerName = "tpe"
    startup_trials: int | None = Field(default=None, ge=0)
    warm_start: bool = False
    population: int = Field(default=4, ge=2)  # pbt: trials in the population
    pbt: Pbt = Field(default_factory=Pbt)  # pbt: perturbation interval, quantile, resampling
    asha: Asha = Field(default_factory=Asha)  # bo_asha: grace period and reduction factor (epochs)


class CompareSpec(BaseModel):
    """Task, seeds, budget, selection and the strategies (module docstring)."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)  # a bool is no number
    name: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_.-]+$")
    task: dict[str, Any] = Field(default_factory=dict)
    seeds: list[int] = Field(default_factory=lambda: [0, 1, 2, 3, 4], min_length=1)
    budget_s: float = Field(gt=0)
    metric: str = "sel_loss"
    mode: Literal["min", "max"] | None = None
    report: str = Field(default="test_acc", pattern=r"^test_[a-z][a-z0-9_]*$")
    report_mode: Literal["min", "max"] | None = None
    max_concurrent: int = Field(default=2, ge=1)
    resources: Resources = Field(default_factory=Resources)
    strategies: dict[StrategyName, Strategy]

    @field_validator("metric")
    @classmethod
    def _validation_metric(cls, value: str) -> str:
        if not value.startswith(("sel_", "val_")) or not (value in OBJECTIVES or TASK_METRIC.fullmatch(value)):
            raise ValueError(f"{value!r} cannot select models; use sel_loss, sel_acc or sel_<name> of your task "
                             "(or val_*)")
        return value

    @model_validator(mode="after")
    def _direction(self) -> "CompareSpec":
        known = OBJECTIVES.get(self.metric)
        if known is None and self.mode is None:
            raise ValueError(f"mode: {self.metric} is your task's metric; say whether to minimise or maximise it "
                             "(mode: min or mode: max)")
        if known is not None and self.mode not in (None, known):
            raise ValueError(f"mode: {self.mode} of {self.metric} looks inverted; use mode: {known}")
        self.mode = self.mode or known
        known = report_direction(self.report, self.metric, self.mode)
        if known is None and self.report_mode is None:
            raise ValueError(f"report_mode: {self.report} is your task's metric; say whether lower or higher is "
                             "better (report_mode: min or report_mode: max)")
        if known is not None and self.report_mode not in (None, known):
            raise ValueError(f"report_mode: {self.report_mode} of {self.report} looks inverted; "
                             f"use report_mode: {known}")
        self.report_mode = self.report_mode or known
        return self

    @field_validator("seeds")
    @classmethod
    def _distinct_seeds(cls, value: list[int]) -> list[int]:
        if len(set(value)) != len(value) or any(not 0 <= seed < 2**32 for seed in value):
            raise ValueError(f"must be distinct integers in [0, 2**32) (got {value})")
        return value

    @field_validator("strategies")
    @classmethod
    def _required(cls, value: dict) -> dict:
        missing = [name for name in REQUIRED if name not in value]
        if missing:
            raise ValueError(f"{missing[0]} is missing; give all of {', '.join(REQUIRED)} (bo_asha and pbt are "
                             "optional)")
        return value

    def only(self, names: Sequence[str] | None, source: str = "--strategies") -> "CompareSpec":
        """This comparison with only the strategies ``names`` (in the file's order; all when None):
        a rerun of some of them (``hybrid-hpo compare --strategies``), whose table then has only
        their rows. ConfigError ``<source>: ...`` for a name the comparison does not have."""
        if names is None:
            return self
        unknown = [name for name in names if name not in self.strategies]
        if unknown or not names:
            raise ConfigError(f"{source}: {unknown[0] if unknown else 'nothing'} is not a strategy of {self.name}; "
                              f"name one or more of {', '.join(self.strategies)}")
        return self.model_copy(update={"strategies": {k: v for k, v in self.strategies.items() if k in names}})

    def run_settings(self, strategy: str, seed: int) -> dict[str, Any]:
        """The fixed RunConfig mapping of ``strategy`` for the replicate ``seed``."""
        return {**task_settings(self.task), **self.strategies[strategy].settings, "seed": seed}

    def sweep_spec(self, strategy: str, seed: int, max_trials: int = 100_000) -> SweepSpec:
        """The Ray Tune + Optuna sweep of a searched strategy for one seed, stopped by ``budget_s``."""
        chosen = self.strategies[strategy]
        raw = {"name": f"{self.name}-{strategy}-seed{seed}", "task": self.run_settings(strategy, seed),
               "search": dict(chosen.search), "sampler": chosen.sampler, "seed": seed,
               "startup_trials": STARTUP_TRIALS if chosen.startup_trials is None else chosen.startup_trials,
               "num_trials": max_trials,
               "max_concurrent": self.max_concurrent, "resources": self.resources.model_dump(),
               "checkpoint_every": 0, "max_failures": 0, "time_budget_s": self.budget_s,
               "metric": self.metric, "mode": self.mode}
        if strategy == "pbt":  # PBT, not TPE, picks the settings; same concurrency as the other searches
            raw.update(scheduler="pbt", pbt=chosen.pbt.model_dump(), num_trials=chosen.population,
                       startup_trials=None)
        if strategy == "bo_asha":  # TPE suggests, ASHA stops the trials that trail at its rungs
            raw.update(scheduler="asha", asha=chosen.asha.model_dump())
        if chosen.warm_start:
            raw["initial_points"] = [default_point(self.run_settings(strategy, seed), chosen.search)]
        return validate_spec(raw, source=f"strategies.{strategy}")


def report_direction(report: str, metric: str, mode: str) -> Literal["min", "max"] | None:
    """Whether the reported test metric is better low or high: accuracies ``max``, losses ``min``,
    the selection metric's own name (``test_mse`` with ``sel_mse``) ``mode``; None when unknown
    (a task's metric other than the selection's: the file says ``report_mode``)."""
    if report.endswith("acc"):
        return "max"
    if report.endswith("loss"):
        return "min"
    return mode if report.removeprefix("test_") == metric.partition("_")[2] else None


def default_point(settings: dict[str, Any], search: dict[str, Any]) -> dict[str, Any]:
    """The searched keys at RunConfig's defaults given the fixed ``settings`` (a warm start's first
    trial). An item ``<option>.<k>`` of a list option left empty (``layer_decay.k``) takes the
    default L2 decay :data:`~hybrid_hpo.hyper.penalty.FIXED_DECAY` (what every tensor gets by default)."""
    from hybrid_hpo.hyper.penalty import FIXED_DECAY

    defaults = RunConfig.from_mapping(settings).to_dict()
    point = {}
    for key in search:
        item = indexed_setting(key)
        if item is None:
            point[key] = defaults[key]
        else:
            values = defaults[item[0]]
            point[key] = values[item[1]] if item[1] < len(values) else FIXED_DECAY
    return point


def load_compare_spec(path: str | Path) -> CompareSpec:
    """Read and fully validate a comparison file; ConfigError ``<path>: <field>: <problem and fix>``."""
    path = Path(path)
    return validate_compare_spec(read_spec_file(path, "comparison"), source=str(path), default_name=path.stem)


def validate_compare_spec(raw: dict[str, Any], source: str = "compare", default_name: str = "compare") -> CompareSpec:
    """Validate a comparison mapping (see :func:`load_compare_spec`)."""
    try:
        spec = CompareSpec.model_validate(raw)
    except ValidationError as error:
        raise ConfigError(f"{source}: {first_error(error, CompareSpec)}") from None
    spec.name = spec.name or default_name.replace("_", "-")
    names = field_names()
    for key in spec.task:
        check_known_key(f"task.{key}", setting_name("task", key), names, source)
        if key == "seed":
            raise ConfigError(f"{source}: task.seed: the replicates' seeds come from seeds; remove task.seed")
    for strategy, chosen in spec.strategies.items():
        for section in ("settings", "search"):
            for key in getattr(chosen, section):
                where = f"strategies.{strategy}.{section}.{key}"
                check_known_key(where, key, names, source)
                if key in SPLIT_KEYS:
                    raise ConfigError(f"{source}: {where}: {key} decides the data split, which all strategies "
                                      "share; set it in task")
                if key in spec.task:
                    raise ConfigError(f"{source}: {where}: {key} is already set in task; keep one")
        _check_strategy(spec, strategy, source)
    return spec


def with_changes(spec: CompareSpec, source: str, *, task: dict[str, Any] | None = None, budget_s: float | None = None,
                 seeds: list[int] | None = None, warm_start: bool = False) -> CompareSpec:
    """``spec`` with changes given on a command line, validated again (ConfigError naming
    ``source``): ``task`` keys replaced, ``budget_s`` / ``seeds`` when not None, and with
    ``warm_start`` every search warm-started. Without changes, ``spec`` itself."""
    if not task and budget_s is None and seeds is None and not warm_start:
        return spec
    raw = spec.model_dump(exclude_none=True, exclude_unset=True, mode="json")  # as written, not the defaults
    raw["task"] = {**spec.task, **(task or {})}
    raw.update({key: value for key, value in (("budget_s", budget_s), ("seeds", seeds)) if value is not None})
    for strategy in SEARCHED if warm_start else ():
        if strategy in raw["strategies"]:
            raw["strategies"][strategy]["warm_start"] = True
    return validate_compare_spec(raw, source=source, default_name=spec.name)


def _check_strategy(spec: CompareSpec, strategy: str, source: str) -> None:
    from hybrid_hpo.hyper import FAMILIES

    chosen = spec.strategies[strategy]
    for owner, keys in OWN_KEYS.items():
        misplaced = sorted(set(keys) & chosen.model_fields_set) if strategy != owner else []
        if misplaced:
            article = "an" if misplaced[0][0] in "aeiou" else "a"
            raise ConfigError(f"{source}: strategies.{strategy}.{misplaced[0]}: only the {owner} strategy has "
                              f"{article} {misplaced[0]}; remove it or move it to strategies.{owner}")
    if strategy in SEARCHED and not chosen.search:
        raise ConfigError(f"{source}: strategies.{strategy}.search: is empty; {strategy} searches at least one "
                          "setting, e.g. inner_lr: {type: loguniform, low: 1.0e-2, high: 0.3}")
    if strategy == "ift_defaults" and chosen.search:
        raise ConfigError(f"{source}: strategies.ift_defaults.search: ift_defaults is one run with default "
                          "meta-settings; remove search")
    try:
        config = RunConfig.from_mapping(spec.run_settings(strategy, spec.seeds[0]))
    except ConfigError as error:
        raise ConfigError(f"{source}: strategies.{strategy}: {error}") from None
    tunable = FAMILIES[config.family].tunable
    if (strategy in BASELINES) == tunable:
        fitting = ", ".join(name for name, family in FAMILIES.items() if family.tunable != tunable)
        problem = "has hyperparameters tuned by hypergradient; BO-only uses one without" if tunable \
            else "has no hyperparameters to tune by hypergradient; use one with"
        raise ConfigError(f"{source}: strategies.{strategy}.settings.family: {config.family!r} {problem}: {fitting}")
    if strategy in SEARCHED:
        try:
            spec.sweep_spec(strategy, spec.seeds[0])  # the sweep validator checks the space's corners
        except ConfigError as error:
            where = str(error).removeprefix(f"strategies.{strategy}: ")
            raise ConfigError(f"{source}: strategies.{strategy}.{where}") from None

