"""Unrolled differentiation: the baseline that backpropagates through i SGD steps.

w_0 = params,  w_{t+1} = w_t − η ∂L_T/∂w (w_t, λ),  t = 0..i−1;  returns dL_V(w_i, λ)/dλ.

Memory grows linearly with i (every step's graph is kept). Started at w* (∂L_T/∂w = 0), i
steps of size η give exactly the IFT hypergradient with ``Neumann(terms=i − 1, alpha=η)``:
both use p = η Σ_{j=0..i−1} (I − ηH)^j v (Lorraine et al., Theorem 1; i steps ↔ i − 1 HVPs).
"""
from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from torch import Tensor

from hybrid_hpo.errors import ConfigError

Loss = Callable[[dict[str, Tensor], dict[str, Tensor]], Tensor]


def unrolled_hypergradient(
    train_loss: Loss,
    val_loss: Loss,
    params: Mapping[str, Tensor],
    hparams: Mapping[str, Tensor],
    steps: int,
    lr: float,
) -> dict[str, Tensor]:
    """dL_V(w_steps(λ), λ)/dλ through ``steps`` SGD steps of size ``lr`` from ``params``.

    Returns a dict with the keys and shapes of ``hparams``, detached.
    """
    if not isinstance(steps, int) or steps < 1:
        raise ConfigError(f"steps: must be an integer >= 1, got {steps!r}")
    if not lr > 0:
        raise ConfigError(f"lr: must be > 0, got {lr!r}")
    lambdas = {name: t.detach().requires_grad_(True) for name, t in hparams.items()}
    weights = {name: t.detach().requires_grad_(True) for name, t in params.items()}
    with torch.enable_grad():
        for _ in range(steps):
            grads = torch.autograd.grad(train_loss(weights, lambdas), list(weights.values()), create_graph=True, allow_unused=True)
            weights = {
                name: w if g is None else w - lr * g for (name, w), g in zip(weights.items(), grads)
            }
        grads = torch.autograd.grad(val_loss(weights, lambdas), list(lambdas.values()), allow_unused=True)
    return {
        name: torch.zeros_like(t) if g is None else g.detach() for (name, t), g in zip(lambdas.items(), grads)
    }
