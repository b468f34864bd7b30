"""Vector algebra on lists of tensors ("tensor lists"), the vectors of every solver.

A tensor list ``x = [x_1, ..., x_m]`` stands for the concatenation of the flattened ``x_i``;
nothing here concatenates or copies it: every operation is one ``torch._foreach_*`` kernel
or a per-tensor reduction, and every scalar stays a 0-dim tensor on the device (no host sync).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

TensorList = list[Tensor]
Scalar = float | Tensor


def dot(x: Sequence[Tensor], y: Sequence[Tensor]) -> Tensor:
    """<x, y> = sum_i <x_i, y_i>, a 0-dim tensor."""
    return torch.stack([torch.vdot(a.reshape(-1), b.reshape(-1)) for a, b in zip(x, y)]).sum()


def norm(x: Sequence[Tensor]) -> Tensor:
    """||x||_2 over the whole list, a 0-dim tensor."""
    return torch.linalg.vector_norm(torch.stack(torch._foreach_norm(list(x))))


def axpy_(y: TensorList, a: Scalar, x: Sequence[Tensor]) -> None:
    """y <- y + a x in place; ``a`` is a Python number or a 0-dim tensor."""
    if isinstance(a, Tensor):
        torch._foreach_add_(y, torch._foreach_mul(list(x), a))
    else:
        torch._foreach_add_(y, list(x), alpha=a)


def scale(x: Sequence[Tensor], a: Scalar) -> TensorList:
    """a x as a new tensor list."""
    return list(torch._foreach_mul(list(x), a))


def clone(x: Sequence[Tensor]) -> TensorList:
    return [t.clone() for t in x]


def zeros_like(x: Sequence[Tensor]) -> TensorList:
    return [torch.zeros_like(t) for t in x]


def all_finite(x: Sequence[Tensor]) -> Tensor:
    """A 0-dim bool tensor: every entry of every tensor is finite (True for no entries).

    Reduces each tensor to its extremes, which NaN and ±inf reach and which cannot overflow: on CUDA
    one fused max-|x| kernel over the list (``_foreach_norm`` of order ∞); on CPU ``aminmax`` per
    tensor, because the CPU kernel of the ∞-norm is not vectorised — on the 1.1M-weight MLP's
    tensors it took 3.7 ms against 0.4 ms for ``aminmax`` (1 thread), and a hypergradient makes two
    of these checks (the solver's and the result's)."""
    tensors = [t for t in x if t.numel()]
    if not tensors:
        return torch.ones((), dtype=torch.bool, device=x[0].device if len(x) else None)
    if tensors[0].device.type == "cpu":
        extremes = torch.stack([m for t in tensors for m in torch.aminmax(t)])
    else:
        extremes = torch.stack(torch._foreach_norm(tensors, float("inf")))
    return torch.isfinite(extremes).all()


def flatten(x: Sequence[Tensor], batch: bool = False) -> Tensor:
    """Concatenate into one vector, shape (P,) — or (k, P) with ``batch`` for tensors shaped
    (k, *shape). For one-shot solvers only, never inside a loop."""
    if batch:
        return torch.cat([t.reshape(t.shape[0], -1) for t in x], dim=1)
    return torch.cat([t.reshape(-1) for t in x])


def unflatten(flat: Tensor, like: Sequence[Tensor]) -> TensorList:
    """Inverse of :func:`flatten` for the shapes of ``like``; ``flat`` may carry leading batch dims."""
    batch = flat.shape[:-1]
    pieces = torch.split(flat, [t.numel() for t in like], dim=-1)
    return [p.reshape((*batch, *t.shape)) for p, t in zip(pieces, like)]
