"""Test helper (not a test module): exact inner solutions and finite differences of λ ↦ L_V(w*(λ)).

Used by the families' hypergradient checks (tests/test_augment.py, tests/test_distill.py) on tiny
float64 instances whose inner problem is strongly convex (logistic regression + L2).
"""
from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from torch import Tensor

from hybrid_hpo.implicit.tensor_list import flatten, unflatten

Loss = Callable[[dict[str, Tensor], dict[str, Tensor]], Tensor]


def _flat(tensors: Mapping[str, Tensor]) -> Tensor:
    return flatten([t.detach() for t in tensors.values()])


def _unflat(vector: Tensor, like: Mapping[str, Tensor]) -> dict[str, Tensor]:
    return dict(zip(like, unflatten(vector, list(like.values()))))


def lbfgs_warm_start(train_loss: Loss, params: Mapping[str, Tensor], hparams: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """A point near a minimum of train_loss(·, hparams) by L-BFGS from ``params`` (Newton alone may
    stall on a non-convex network from its initialisation)."""
    w = {k: v.detach().clone().requires_grad_(True) for k, v in params.items()}
    optimizer = torch.optim.LBFGS(list(w.values()), max_iter=500, tolerance_grad=1e-10,
                                  tolerance_change=1e-14, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = train_loss(w, hparams)
        loss.backward()
        return loss

    optimizer.step(closure)
    return {k: v.detach() for k, v in w.items()}


def newton_minimize(train_loss: Loss, params: Mapping[str, Tensor], hparams: Mapping[str, Tensor],
                    tol: float = 1e-11, max_iter: int = 50) -> dict[str, Tensor]:
    """argmin_w train_loss(w, hparams) by damped Newton with the dense Hessian, from ``params``;
    asserts that the gradient norm falls below ``tol``."""
    hparams = {k: v.detach() for k, v in hparams.items()}

    def f(vector: Tensor) -> Tensor:
        return train_loss(_unflat(vector, params), hparams)

    w = _flat(params)
    for _ in range(max_iter):
        w = w.detach().requires_grad_(True)
        (g,) = torch.autograd.grad(f(w), w)
        if g.norm() < tol:
            return _unflat(w.detach(), params)
        step = torch.linalg.solve(torch.autograd.functional.hessian(f, w.detach(), vectorize=True), g)
        value, t = f(w).detach(), 1.0
        while f(w.detach() - t * step) > value + 1e-14 and t > 1e-8:
            t /= 2
        w = w.detach() - t * step
    raise AssertionError(f"Newton did not converge: |grad| = {g.norm():.3g}")


def directional_fd(train_loss: Loss, val_loss: Loss, params: Mapping[str, Tensor], hparams: Mapping[str, Tensor],
                   direction: Mapping[str, Tensor], eps: float = 1e-4) -> float:
    """Central difference (F(λ + eps·d) − F(λ − eps·d)) / (2 eps) of F(λ) = L_V(w*(λ), λ), with w*
    solved by :func:`newton_minimize` from ``params`` (≈ w*(λ))."""
    values = []
    for sign in (1.0, -1.0):
        shifted = {k: (v + sign * eps * direction[k]).detach() for k, v in hparams.items()}
        w_star = newton_minimize(train_loss, params, shifted)
        with torch.no_grad():
            values.append(val_loss(w_star, shifted))
    return float((values[0] - values[1]) / (2 * eps))


def inner(a: Mapping[str, Tensor], b: Mapping[str, Tensor]) -> float:
    """Σ_k ⟨a_k, b_k⟩ over matching keys."""
    return float(sum((a[k] * b[k]).sum() for k in a))
