"""The optimizers a run names (``inner_optimizer``, ``hyper_optimizer``), shared by the bilevel
loop and the families' own fits (distillation's evaluation) without either importing the other.

Adam runs torch's fused kernel (one kernel over all tensors per step instead of a Python loop of
about ten elementwise ops per tensor: 3-4x less time per step on the 50k λ of bench/peers_loop.py)
wherever every tensor is a floating-point tensor on one device of a type it supports (CPU, CUDA).
It computes the same update in another order: its results differ from the per-tensor loop's by
rounding only (tests/test_optimizers.py). SGD and RMSprop run torch's default: fused SGD with
momentum, for a step that costs little, would change the weights' rounding too."""
from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

OPTIMIZERS: tuple[str, ...] = ("sgd", "momentum", "adam", "rmsprop")
"""Names accepted by ``inner_optimizer`` and ``hyper_optimizer`` (``momentum`` = SGD, momentum 0.9)."""

FUSED_DEVICES: tuple[str, ...] = ("cpu", "cuda")
"""Device types on which Adam uses torch's fused kernel."""


def make_optimizer(name: str, params: Iterable[torch.Tensor], lr: float) -> torch.optim.Optimizer:
    """One of :data:`OPTIMIZERS`: sgd, momentum (SGD, momentum 0.9), adam (fused where possible, see
    the module docstring), rmsprop."""
    import torch

    params = list(params)
    fused = name == "adam" and len({p.device for p in params}) == 1 \
        and all(p.is_floating_point() and p.device.type in FUSED_DEVICES for p in params)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr)
    if name == "momentum":
        return torch.optim.SGD(params, lr=lr, momentum=0.9)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, fused=fused or None)
    if name == "rmsprop":
        return torch.optim.RMSprop(params, lr=lr)
    raise ValueError(f"unknown optimizer {name!r}; choose one of {', '.join(OPTIMIZERS)}")
