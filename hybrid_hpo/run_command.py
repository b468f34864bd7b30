"""`hybrid-hpo run`: one bilevel run (weights by SGD, hyperparameters by IFT hypergradients).

Every RunConfig field is a flag: ``--inner-lr 0.1`` (``--inner_lr`` works too), ``--hidden 512 256``,
``--download/--no-download``; so is every option a registered family declares (``--init-decay``),
parsed from the arguments the first pass leaves (so ``hybrid-hpo --help`` never imports the family
registry); solver options go through ``--solver-option``. Values are converted and validated by
``RunConfig.from_mapping``, so a bad value is one line on stderr naming the field, and exit code 2.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import typing
from typing import Any

from hybrid_hpo.checks import check_device, check_output_file, check_writable
from hybrid_hpo.config import MOVED, SOLVER_PREFIX, RunConfig, field_names
from hybrid_hpo.errors import ConfigError

_DIAGNOSTICS = (  # (metrics key, header, format) after the split metrics
    ("hypergrad_norm", "|hypergrad|", "{:>11.3e}"),
    ("solver_residual", "residual", "{:>8.3f}"),
    ("epoch_time_s", "time_s", "{:>6.2f}"),
)


def table_columns(metric_names: tuple[str, ...]) -> list[tuple[str, str, str]]:
    """(key, header, format) per column: epoch, the task's split metrics (``train_loss``,
    ``train_acc``, ..., without the balanced accuracies), then the hypergradient diagnostics."""
    shown = [name for name in metric_names if not name.endswith("_balanced_acc")]
    return [("epoch", "epoch", "{:>5d}"), *((name, name, "{:>%d.4f}" % max(len(name), 8)) for name in shown),
            *_DIAGNOSTICS]


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Add ``run`` with one flag per RunConfig field plus --quiet, --json and --pictures; the family
    options' flags are parsed by :func:`parse_family_options` and shown by ``--help``."""
    parser = subparsers.add_parser(
        "run", help="one bilevel run: weights by SGD, hyperparameters by IFT hypergradients",
        description="Train a model while tuning its hyperparameters (e.g. one weight decay per weight) by "
                    "implicit differentiation (Lorraine et al. 2020, Algorithm 2). Defaults: MLP on digits.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    hints = typing.get_type_hints(RunConfig)
    described: dict[str, dataclasses.Field] = {}
    for field in dataclasses.fields(RunConfig):
        if field.name in field_names():
            described[field.name] = field  # its help line is written when --help asks (the rules read registries)
            _add_flag(parser, field.name, hints[field.name])
    solver_option = {"dest": "solver_option", "action": "extend", "nargs": "+", "default": [], "metavar": "OPTION=VALUE"}
    parser.add_argument("--solver-option", **solver_option,
                        help="options of the chosen --solver, e.g. --solver cg --solver-option max_iter=20 rtol=1e-6")
    parser.add_argument("--solver_option", **solver_option, help=argparse.SUPPRESS)
    for name in MOVED:  # not shown; refused with the new spelling
        parser.add_argument(f"--{name}", dest=name, default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    parser.add_argument("--quiet", action="store_true", help="no progress bar and no per-epoch table")
    parser.add_argument("--json", metavar="PATH", default=None, help="write the per-epoch metrics to PATH (a JSON list)")
    parser.add_argument("--pictures", metavar="DIR", default=None,
                        help="at the end, write the family's pictures of the learned hyperparameters (PNG) to DIR")
    parser.set_defaults(handler=run, parse_extra=lambda extra, args: parse_family_options(extra, args, parser))
    parser.format_help = _with_help_lines(parser, described)


def _add_flag(container: Any, name: str, hint: Any, help: str | None = None) -> None:
    """``--name-with-dashes`` for setting ``name`` of type ``hint`` (the underscore spelling is
    accepted, not shown). Values stay strings; RunConfig converts them and names a bad one."""
    options: dict[str, Any] = {"dest": name, "default": argparse.SUPPRESS}
    if hint is bool:
        options["action"] = argparse.BooleanOptionalAction
    elif typing.get_origin(hint) is tuple:
        options.update(nargs="+", metavar="N")
    else:
        options["metavar"] = name.upper()
    container.add_argument(f"--{name.replace('_', '-')}", help=help, **options)
    if "_" in name:
        container.add_argument(f"--{name}", help=argparse.SUPPRESS, **options)


def add_family_flags(container: Any) -> None:
    """One flag per option the registered families declare (an option several families share, such
    as ``fixed_decay``, once), with its help line naming those families."""
    from hybrid_hpo.hyper import FAMILIES
    from hybrid_hpo.rules import options_of

    declared = {}
    for family, cls in FAMILIES.items():
        for info in options_of(cls.options):
            declared.setdefault(info.name, (info, []))[1].append(family)
    for name, (info, families) in declared.items():
        _add_flag(container, name, info.type, help_line(info.help, info.rule, info.default, families))


def parse_family_options(extra: list[str], args: argparse.Namespace, run_parser: argparse.ArgumentParser) -> None:
    """Parse the arguments the first pass of ``run_parser`` left (family option flags) into
    ``args.family_values``; ConfigError naming the first unknown flag and the closest known one
    otherwise."""
    import difflib

    parser = argparse.ArgumentParser(prog="hybrid-hpo run", usage="hybrid-hpo run [options] (see --help)",
                                     add_help=False, allow_abbrev=False)
    add_family_flags(parser)
    namespace, unknown = parser.parse_known_args(extra)
    if unknown:
        flags = [flag for action in parser._actions for flag in action.option_strings] + \
                [flag for action in run_parser._actions for flag in action.option_strings]
        guess = difflib.get_close_matches(unknown[0], flags, n=1)
        hint = f"did you mean {guess[0]}?" if guess else "see hybrid-hpo run --help"
        raise ConfigError(f"{unknown[0]}: unknown option; {hint}")
    args.family_values = vars(namespace)


def _with_help_lines(parser: argparse.ArgumentParser, fields: dict[str, dataclasses.Field]) -> Any:
    """``parser.format_help`` that first writes each field's help line, the family options' flags
    and the solvers' options (importing the solver and family registries only when help is asked for)."""
    format_help = parser.format_help

    def with_help_lines() -> str:
        for action in parser._actions:
            if action.dest in fields and action.help is None:
                field = fields[action.dest]
                action.help = help_line(field.metadata["help"], field.metadata.get("rule"), field.default)
        if not any(group.title == FAMILY_GROUP for group in parser._action_groups):
            add_family_flags(parser.add_argument_group(FAMILY_GROUP))
        parser.epilog = solver_options_help()
        return format_help()

    return with_help_lines


FAMILY_GROUP = "family options (each family's own; only those of the chosen --family apply)"


def help_line(meaning: str, rule: Any, default: Any, families: list[str] | None = None) -> str:
    """``[<families>: ]<meaning>; <allowed values> (default: <value>)`` from a setting's declaration,
    whose rule is also what validation checks, and the families that declare it."""
    owner = f"{', '.join(families)}: " if families else ""
    allowed = f"; {rule.describe()}" if rule is not None else ""
    return f"{owner}{meaning}{allowed} (default: {_default_text(default)})".replace("%", "%%")


def solver_options_help() -> str:
    """One line per registered solver: its options with their defaults (from the solver classes)."""
    from hybrid_hpo.implicit import SOLVERS, options_of

    lines = []
    for name, cls in SOLVERS.items():
        options = ", ".join(f"{o.name}={_default_text(o.default)}" for o in options_of(cls)) or "no options"
        lines.append(f"  {name}: {options}")
    return "solver options (--solver-option OPTION=VALUE; see docs/solvers.md):\n" + "\n".join(lines)


def solver_option_settings(pairs: list[str]) -> dict[str, str]:
    """``["max_iter=20", ...]`` -> ``{"solver.max_iter": "20", ...}`` (RunConfig converts the values);
    one-line ConfigError for a pair without ``=`` or an option given twice."""
    settings: dict[str, str] = {}
    for pair in pairs:
        key, equals, value = pair.partition("=")
        if not equals or not key.strip():
            raise ConfigError(f"--solver-option: {pair!r} is not OPTION=VALUE; e.g. --solver-option max_iter=20")
        name = SOLVER_PREFIX + key.strip()
        if name in settings:
            raise ConfigError(f"--solver-option: {key.strip()} is given twice; keep one")
        settings[name] = value.strip()
    return settings


def _default_text(value: Any) -> str:
    if isinstance(value, tuple):
        return " ".join(map(str, value))
    return str(value)


def format_header(columns: list[tuple[str, str, str]]) -> str:
    widths = [len(fmt.format(0 if key == "epoch" else 0.0)) for key, _, fmt in columns]
    return "  ".join(f"{header:>{max(w, len(header))}}" for (_, header, _), w in zip(columns, widths))


def format_row(columns: list[tuple[str, str, str]], metrics: dict[str, float]) -> str:
    cells = []
    for key, header, fmt in columns:
        cell = fmt.format(metrics[key])
        cells.append(f"{cell:>{max(len(cell), len(header))}}")
    return "  ".join(cells)


def _json_ready(metrics: dict[str, float]) -> dict[str, Any]:
    """NaN/inf -> None so the file is standard JSON."""
    return {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in metrics.items()}


def run(args: argparse.Namespace) -> int:
    """Handler: build the config, check the device and the output paths (before any training), train,
    print the table and the final test metrics."""
    from tqdm.auto import tqdm

    from hybrid_hpo.bilevel import BilevelTrainer

    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(RunConfig) if hasattr(args, f.name)}
    values.update(getattr(args, "family_values", {}))
    values.update(solver_option_settings(args.solver_option))
    values.update({name: getattr(args, name) for name in MOVED if hasattr(args, name)})
    config = RunConfig.from_mapping(values)
    check_device(config.device)
    if args.json:
        check_output_file(args.json, "--json")
    if args.pictures:
        check_writable(args.pictures, "--pictures")
    trainer = BilevelTrainer(config)
    columns = table_columns(trainer.metric_names())
    if not args.quiet:
        data = trainer.data
        test = f" / {len(data.test)} test" if data.test is not None else ", no test set"
        print(f"hybrid-hpo run: {type(trainer.model).__name__} on {data.name} ({len(data.train)} train / "
              f"{len(data.val)} val{test}), {trainer.family.num_hparams} hyperparameters ({config.family}"
              f"{''.join(f', {k} {v}' for k, v in config.family_options.items())}), solver {config.solver}, "
              f"device {trainer.device}")
        print(format_header(columns))
    history = trainer.fit(progress=not args.quiet, on_epoch=None if args.quiet else
                          lambda m: tqdm.write(format_row(columns, m), file=sys.stdout))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump([_json_ready(m) for m in history], handle, indent=1)
    if args.pictures:
        for path in trainer.render(args.pictures):
            print(f"picture: {path}")
    final = history[-1]
    rejected = sum(m["rejected_hyper_steps"] for m in history)
    reported = [key for key, _, _ in table_columns(trainer.metric_names()) if key.startswith("test_")] or ["val_loss"]
    shown = "  ".join(f"{name} {final[name]:.4f}" for name in reported)
    print(f"final: {shown}  (val_loss {history[0]['val_loss']:.4f} -> {final['val_loss']:.4f} over "
          f"{len(history)} epochs; {rejected} rejected hyper steps)")
    return 0
