"""Curvature estimates from Hessian-vector products (for choosing a safe Neumann step)."""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from hybrid_hpo.implicit import tensor_list as tl
from hybrid_hpo.implicit.operators import LinearOperator


def top_eigenvalue(operator: LinearOperator, like: Sequence[Tensor], iters: int = 20, seed: int = 0) -> Tensor:
    """Power iteration: the Rayleigh quotient uᵀAu of the dominant eigenvector estimate u.

    Converges to the eigenvalue of largest magnitude (negative if that is one of A's). Costs
    ``iters`` products; starts from a seeded Gaussian vector shaped like ``like``; returns a
    0-dim tensor on the device without synchronising with the host.
    """
    generator = torch.Generator(device=like[0].device).manual_seed(seed)
    u = [torch.randn(t.shape, generator=generator, dtype=t.dtype, device=t.device) for t in like]
    u = tl.scale(u, 1.0 / tl.norm(u))
    eigenvalue = torch.zeros((), dtype=like[0].dtype, device=like[0].device)
    for _ in range(iters):
        au = operator.matvec(u)
        eigenvalue = tl.dot(u, au)
        u = tl.scale(au, 1.0 / tl.norm(au).clamp_min(torch.finfo(like[0].dtype).tiny))
    return eigenvalue
