"""What an inverse-HVP solver is: the :class:`Solver` protocol, its :class:`Solution`, and options.

A solver approximates p ≈ (H + δI)⁻¹ v from Hessian-vector products only. It is a frozen
dataclass: its fields are its options (declared with :func:`option`, which carries the one-line
help shown by ``hybrid-hpo run --help``), and its constructor (``__post_init__``) is the only
place they are validated, raising a one-line ConfigError ``<option>: <problem> (got <value>)``.
Register a new solver with one line in :data:`hybrid_hpo.implicit.registry.SOLVERS`.
"""
from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple, Protocol, runtime_checkable

from torch import Tensor

from hybrid_hpo.errors import ConfigError
from hybrid_hpo.implicit.operators import LinearOperator
from hybrid_hpo.implicit.tensor_list import TensorList
from hybrid_hpo.rules import options_of

__all__ = ["Solution", "Solver", "check", "option", "options_of"]


SolverState = dict[str, Any]
"""What a solver hands to its next solve (warm start): a dict of detached tensors, tensor lists and
numbers, so that ``torch.save`` / ``torch.load(weights_only=True)`` round-trip it."""


class Solution(NamedTuple):
    """What a solver returns.

    p:          the approximation of (H + δI)⁻¹ v, a tensor list shaped like v.
    iterations: Hessian-vector products spent on the solve (0-dim tensor), every product counted.
    residual:   relative residual estimate (0-dim tensor, NaN for solvers without one); see each
                solver for its exact meaning.
    diverged:   0-dim bool tensor: the solve failed (non-finite values, a growing series, or
                CG met non-positive curvature).
    state:      what the next solve of a nearby system may start from (a :data:`SolverState`:
                the previous solution, a reusable sketch), or None when the solver keeps nothing
                (the default, and always unless a warm-start option is on).
    """

    p: TensorList
    iterations: Tensor
    residual: Tensor
    diverged: Tensor
    state: SolverState | None = None


@runtime_checkable
class Solver(Protocol):
    """An inverse-HVP solver: ``solve(operator, v)`` with v a tensor list shaped like the weights.

    ``converged(size, damping)`` (a classmethod) returns options at which the solver solves an SPD
    system (H + δI) p = v of dimension ``size`` with eigenvalues of H in [0.5, 5] to a relative
    error below 1e-8, or None when no option does (Identity; Nyström without damping). The
    registry's contract test checks it against ``torch.linalg.solve`` in float64.

    Warm start: ``solve(operator, v, state)`` receives the ``state`` of its previous
    :class:`Solution` (consecutive hyper steps solve nearly the same system); callers pass it only
    when that solution returned one, so a solver that never returns a state may omit the argument.
    """

    def solve(self, operator: LinearOperator, v: list[Tensor], state: SolverState | None = None) -> Solution: ...

    @classmethod
    def converged(cls, size: int, damping: float) -> "Solver | None": ...


def option(default: Any, help: str) -> Any:
    """A solver option: a dataclass field with its default and one-line help (the solver's
    constructor validates it)."""
    return dataclasses.field(default=default, metadata={"help": help})


def check(condition: bool, field: str, message: str, value: Any) -> None:
    """ConfigError ``<field>: <message> (got <value>)`` unless ``condition``."""
    if not condition:
        raise ConfigError(f"{field}: {message} (got {value!r})")
