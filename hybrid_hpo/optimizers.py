"""The optimizers a run names (``inner_optimizer``, ``hyper_optimizer``), shared by the bilevel
loop and the families' own fits (distillation's evaluation) without either importing the other."""
from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

OPTIMIZERS: tuple[str, ...] = ("sgd", "momentum", "adam", "rmsprop")
"""Names accepted by ``inner_optimizer`` and ``hyper_optimizer`` (``momentum`` = SGD, momentum 0.9)."""


def make_optimizer(name: str, params: Iterable[torch.Tensor], lr: float) -> torch.optim.Optimizer:
    """One of :data:`OPTIMIZERS`: sgd, momentum (SGD, momentum 0.9), adam, rmsprop."""
    import torch

    params = list(params)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr)
    if name == "momentum":
        return torch.optim.SGD(params, lr=lr, momentum=0.9)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr)
    if name == "rmsprop":
        return torch.optim.RMSprop(params, lr=lr)
    raise ValueError(f"unknown optimizer {name!r}; choose one of {', '.join(OPTIMIZERS)}")
