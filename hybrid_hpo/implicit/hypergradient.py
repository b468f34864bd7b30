"""The implicit-function-theorem hypergradient (Lorraine, Vicol & Duvenaud, AISTATS 2020).

At weights w ≈ w*(λ) = argmin_w L_T(w, λ):

    dL_V/dλ = ∂L_V/∂λ − (∂L_V/∂w) · H⁻¹ · ∂²L_T/∂w∂λ,      H = ∂²L_T/∂w∂wᵀ,

computed as three vector products and never a matrix:
  1. v = ∂L_V/∂w (and the direct term ∂L_V/∂λ)          one backward pass of L_V
  2. p ≈ H⁻¹ v                                           the solver: Hessian-vector products
  3. g = ∂L_V/∂λ − ∂/∂λ ⟨∂L_T/∂w, p⟩                     one mixed vector-Jacobian product

The training gradient ∂L_T/∂w is built once with ``create_graph=True``; every HVP of step 2
and the mixed product of step 3 differentiate that same graph again (reverse-over-reverse), so
the cost is one gradient graph + K backward passes through it + one more, and memory does not
grow with K.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch
from torch import Tensor

from hybrid_hpo.implicit import tensor_list as tl
from hybrid_hpo.implicit.operators import HessianOperator
from hybrid_hpo.implicit.protocol import Solver, SolverState
from hybrid_hpo.implicit.solvers import Neumann

Loss = Callable[[dict[str, Tensor], dict[str, Tensor]], Tensor]


@dataclass(frozen=True)
class HypergradientInfo:
    """Diagnostics of one hypergradient, as Python values (one host sync per hypergradient).

    solver:     the solver's class name.
    iterations: Hessian-vector products the solver spent.
    residual:   the solver's relative residual estimate (NaN when it has none).
    diverged:   the solver reported failure (see each solver).
    finite:     every entry of the hypergradient is finite.
    state:      the solver's state for the next solve (warm start; :attr:`Solution.state`), detached
                tensors, or None when the solver keeps none.
    """

    solver: str
    iterations: int
    residual: float
    diverged: bool
    finite: bool
    state: SolverState | None = field(default=None, compare=False, repr=False)


class HypergradientDivergence(RuntimeError):
    """The hypergradient is not finite, or the inverse-HVP solver diverged."""

    def __init__(self, info: HypergradientInfo):
        super().__init__(
            f"hypergradient rejected ({info.solver}: finite={info.finite}, diverged={info.diverged}, "
            f"residual={info.residual:.3g}); lower the Neumann alpha (or use alpha='auto'), add damping, "
            "or lower the learning rates"
        )
        self.info = info


def _leaves(tensors: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Leaf tensors that require grad, to differentiate by: a tensor that already is one (e.g. a
    module's parameter) as it is — only ``torch.autograd.grad`` differentiates by it, which leaves
    its ``.grad`` alone — any other a detached copy, cutting it from the graph that made it."""
    return {name: t if t.is_leaf and t.requires_grad else t.detach().requires_grad_(True)
            for name, t in tensors.items()}


def _or_zeros(grads: tuple[Tensor | None, ...], like: list[Tensor]) -> list[Tensor]:
    return [torch.zeros_like(t) if g is None else g for g, t in zip(grads, like)]


def _difference(direct: Tensor | None, mixed: Tensor | None, like: Tensor) -> Tensor:
    """direct − mixed for one λ tensor, None meaning zero (a term the losses do not have): the
    mixed product's fresh tensor is negated in place, so the usual case (λ not in L_V) costs one
    pass over λ and no zeros."""
    if mixed is None:
        return torch.zeros_like(like) if direct is None else direct.detach()
    mixed = mixed.detach().neg_()
    return mixed if direct is None else mixed.add_(direct.detach())


def hypergradient(
    train_loss: Loss,
    val_loss: Loss,
    params: Mapping[str, Tensor],
    hparams: Mapping[str, Tensor],
    solver: Solver | None = None,
    *,
    state: SolverState | None = None,
    return_info: bool = False,
) -> dict[str, Tensor] | tuple[dict[str, Tensor], HypergradientInfo]:
    """dL_V/dλ by implicit differentiation.

    Args:
        train_loss: ``(params, hparams) -> scalar`` L_T; its Hessian in ``params`` is inverted.
        val_loss: ``(params, hparams) -> scalar`` L_V.
        params: the (approximately) trained weights w, name -> tensor of any shape; leaf tensors
            that require grad (a module's parameters) are differentiated as they are, others
            through detached copies (either way the caller's graph and ``.grad`` stay untouched).
        hparams: the hyperparameters λ, name -> tensor of any shape (the same rule).
        solver: approximates H⁻¹v; default ``Neumann(terms=5, alpha=0.1)``.
        state: the previous solve's state (``info.state`` of the last call), for a warm-started
            solver; passed to ``solver.solve`` only when not None.
        return_info: also return a :class:`HypergradientInfo`; then a diverged or non-finite
            result is returned for the caller to handle instead of raising.

    Returns:
        dict with the keys and shapes of ``hparams``: dL_V/dλ, detached. λ that neither loss
        uses get zeros.

    Raises:
        HypergradientDivergence: without ``return_info``, when the result is not finite or the
            solver diverged.
    """
    solver = Neumann() if solver is None else solver
    weights, lambdas = _leaves(params), _leaves(hparams)
    w, lam = list(weights.values()), list(lambdas.values())
    with torch.enable_grad():
        validation = val_loss(weights, lambdas)
        grads = torch.autograd.grad(validation, w + lam, allow_unused=True)
        v, direct = _or_zeros(grads[: len(w)], w), grads[len(w) :]
        del validation, grads

        training = train_loss(weights, lambdas)
        train_grads = _or_zeros(torch.autograd.grad(training, w, create_graph=True, allow_unused=True), w)
        operator = HessianOperator(train_grads, w)
        solution = solver.solve(operator, v) if state is None else solver.solve(operator, v, state)

        connected = [i for i, g in enumerate(train_grads) if g.requires_grad]
        mixed: tuple[Tensor | None, ...] = (None,) * len(lam)
        if connected:
            mixed = torch.autograd.grad(
                [train_grads[i] for i in connected],
                lam,
                grad_outputs=[solution.p[i].detach() for i in connected],
                allow_unused=True,
            )
    result = [_difference(d, m, t) for d, m, t in zip(direct, mixed, lam)]
    finite, diverged, residual, iterations = torch.stack(
        [
            tl.all_finite(result).to(torch.float64),
            solution.diverged.to(torch.float64),
            solution.residual.detach().to(torch.float64),
            solution.iterations.to(torch.float64),
        ]
    ).tolist()
    info = HypergradientInfo(
        solver=type(solver).__name__,
        iterations=int(iterations),
        residual=float(residual) if not math.isnan(residual) else math.nan,
        diverged=bool(diverged),
        finite=bool(finite),
        state=solution.state,
    )
    gradient = dict(zip(lambdas.keys(), result))
    if return_info:
        return gradient, info
    if info.diverged or not info.finite:
        raise HypergradientDivergence(info)
    return gradient
