"""`hybrid-hpo` command line: `run` (one bilevel run), `sweep` (Ray Tune + Optuna), `dashboard`,
`compare` (BO-only vs IFT-with-defaults vs hybrid).

Each subcommand lives in its own module exposing ``add_parser(subparsers)``; the parser it adds
sets ``handler`` to a function ``(args) -> int``. Heavy imports (torch, Ray) happen inside
handlers so ``hybrid-hpo --help`` stays fast. A :class:`~hybrid_hpo.errors.ConfigError` becomes
one line on stderr and exit code 2.
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from hybrid_hpo.errors import ConfigError

_SUBCOMMAND_MODULES = ("hybrid_hpo.run_command", "hybrid_hpo.tune.commands", "hybrid_hpo.compare.command")


def build_parser() -> argparse.ArgumentParser:
    import importlib

    parser = argparse.ArgumentParser(
        prog="hybrid-hpo",
        description="Tune hyperparameters at two scales: implicit differentiation inside, Bayesian search outside.",
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="{run,sweep,dashboard,compare}")
    for module_name in _SUBCOMMAND_MODULES:
        importlib.import_module(module_name).add_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    parse_extra = getattr(args, "parse_extra", None)
    if extra and parse_extra is None:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        if extra:  # a subcommand may take flags it learns from a registry (run: the family options)
            parse_extra(extra, args)
        return int(args.handler(args) or 0)
    except ConfigError as error:
        print(f"hybrid-hpo {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
