"""Linear operators that the inverse-HVP solvers apply: ``A v`` and, batched, ``A V``.

The solvers see the Hessian only through these two products. Shapes follow the weights: a
vector ``v`` is a tensor list shaped like the parameters; a batch ``V`` is a tensor list whose
``i``-th tensor has shape ``(k, *params[i].shape)`` and holds ``k`` vectors.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

import torch
from torch import Tensor

from hybrid_hpo.implicit.tensor_list import TensorList


class LinearOperator(Protocol):
    def matvec(self, v: Sequence[Tensor]) -> TensorList:
        """A v for one vector."""

    def matmat(self, vs: Sequence[Tensor]) -> TensorList:
        """A V for a batch of k vectors (leading dimension k on every tensor)."""


#: On CPU, ``HessianOperator.matmat`` runs one vmap-batched backward only while the weights have at
#: most this many entries; above it, k sequential products through the retained graph were faster
#: (bench/matmat.py: batched/loop 1.3-1.6x for the 21k-weight CNN and the 1.1M-weight MLP at k = 5
#: and 20; batching won only on the dispatch-bound 650-weight logistic regression).
CPU_BATCH_MAX_NUMEL = 10_000

#: The same threshold on CUDA; ``None`` = always batch. Not measured yet: ``bench/gpu.sh`` prints the
#: value its batched/looped timings call for. Devices other than CPU and CUDA always batch.
CUDA_BATCH_MAX_NUMEL: int | None = None


class HessianOperator:
    """H v = d/dw <dL_T/dw, v> by reverse-over-reverse autograd on one retained gradient graph.

    ``grads`` is ``autograd.grad(L_T, weights, create_graph=True)``: it is built once, and every
    product differentiates it again with ``retain_graph=True``, so K products cost K backward
    passes through the gradient graph and no forward pass. Entries of ``grads`` that carry no
    graph (L_T is at most linear in that weight) contribute nothing to H.

    Reverse-over-reverse with the graph reused beat forward-over-reverse (``torch.func.jvp`` of the
    gradient, which redoes the forward and backward for every product) by 1.7x per product on the
    1.1M-weight MLP (bench/hypergrad_cost.py), so it is the only mode.

    ``batch_max_numel``: ``matmat`` batches (vmap) when the weights have at most this many entries,
    else loops over the k vectors; ``None`` always batches; ``"auto"`` (default) is
    :data:`CPU_BATCH_MAX_NUMEL` on CPU, :data:`CUDA_BATCH_MAX_NUMEL` on CUDA and ``None`` elsewhere.
    """

    def __init__(self, grads: Sequence[Tensor], weights: Sequence[Tensor], batch_max_numel: int | None | str = "auto"):
        self.weights = list(weights)
        self._connected = [i for i, g in enumerate(grads) if g.requires_grad]
        self._outputs = [grads[i] for i in self._connected]
        if batch_max_numel == "auto":
            device = self.weights[0].device.type if self.weights else None
            batch_max_numel = {"cpu": CPU_BATCH_MAX_NUMEL, "cuda": CUDA_BATCH_MAX_NUMEL}.get(device)
        self._batched = batch_max_numel is None or sum(w.numel() for w in self.weights) <= batch_max_numel

    def _backward(self, vs: Sequence[Tensor], batched: bool) -> TensorList:
        if not self._outputs:
            return [torch.zeros_like(v) for v in vs]
        products = torch.autograd.grad(
            self._outputs,
            self.weights,
            grad_outputs=[vs[i] for i in self._connected],
            retain_graph=True,
            allow_unused=True,
            is_grads_batched=batched,
        )
        return [torch.zeros_like(v) if hv is None else hv for hv, v in zip(products, vs)]

    def matvec(self, v: Sequence[Tensor]) -> TensorList:
        return self._backward(v, batched=False)

    def matmat(self, vs: Sequence[Tensor]) -> TensorList:
        if not self._batched:
            return _stack_columns(self.matvec, vs)
        try:
            return self._backward(vs, batched=True)
        except RuntimeError:
            # An op without a vmap batching rule: fall back to one product per vector.
            return _stack_columns(self.matvec, vs)


class CallableOperator:
    """Wrap a user ``matvec(v) -> A v`` (e.g. a dense matrix in tests); ``matmat`` loops."""

    def __init__(self, matvec: Callable[[Sequence[Tensor]], Sequence[Tensor]]):
        self._matvec = matvec

    def matvec(self, v: Sequence[Tensor]) -> TensorList:
        return list(self._matvec(list(v)))

    def matmat(self, vs: Sequence[Tensor]) -> TensorList:
        return _stack_columns(self.matvec, vs)


def as_operator(operator: LinearOperator | Callable[[Sequence[Tensor]], Sequence[Tensor]]) -> LinearOperator:
    """Accept either an operator or a bare ``matvec`` callable."""
    return operator if hasattr(operator, "matmat") else CallableOperator(operator)


def _stack_columns(matvec: Callable[[Sequence[Tensor]], TensorList], vs: Sequence[Tensor]) -> TensorList:
    columns = [matvec([v[j] for v in vs]) for j in range(vs[0].shape[0])]
    return [torch.stack(parts) for parts in zip(*columns)]
