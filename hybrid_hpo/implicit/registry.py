"""Solvers by name: the registry the run settings, the CLI and the contract tests read.

Adding a solver is one class (see :mod:`hybrid_hpo.implicit.protocol`) and one line here (or,
from outside the package, ``SOLVERS["name"] = MySolver``). A run names it ``solver: name`` and
sets its options as ``solver.<option>`` (YAML ``solver: {name: cg, max_iter: 20}``, CLI
``--solver cg --solver-option max_iter=20``, searched as ``solver.max_iter``).
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from hybrid_hpo.errors import ConfigError
from hybrid_hpo.implicit.protocol import Solver, options_of
from hybrid_hpo.implicit.solvers import ConjugateGradient, Exact, Identity, Neumann, Nystrom

SOLVERS: dict[str, type[Solver]] = {
    "identity": Identity,
    "neumann": Neumann,
    "cg": ConjugateGradient,
    "nystrom": Nystrom,
    "exact": Exact,
}
"""name -> solver class (a frozen dataclass whose fields are its options)."""


def solver_class(name: str) -> type[Solver]:
    """The registered class called ``name``; one-line ConfigError naming the choices otherwise."""
    if name not in SOLVERS:
        raise ConfigError(f"solver: unknown value {name!r}; choose one of {', '.join(SOLVERS)}")
    return SOLVERS[name]


def make_solver(name: str, options: Mapping[str, Any] | None = None) -> Solver:
    """``SOLVERS[name](**options)``: the constructor validates; an unknown option or a bad value is
    a one-line ConfigError ``solver.<option>: ...`` naming the fix."""
    cls = solver_class(name)
    options = dict(options or {})
    known = [info.name for info in options_of(cls)]
    for key in options:
        if key not in known:
            valid = f"its options: {', '.join(known)}" if known else "it has no options"
            raise ConfigError(f"solver.{key}: not an option of solver {name!r}; {valid}")
    try:
        return cls(**options)
    except ConfigError as error:
        raise ConfigError(f"solver.{error}") from None
