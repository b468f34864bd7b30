"""Building blocks users put into their own models.

:class:`HyperDropout` marks a *dropout site*: a point in the forward pass whose units the
``dropout`` family (learned per-unit rates) and the ``fixed`` family (a fixed Bernoulli rate) may
drop. In a plain forward pass it multiplies by a buffer of ones, so a model with sites computes
exactly what it computes without them (same outputs, same parameter initialisation); the families
substitute a per-example scale for that buffer through ``torch.func.functional_call``.

    class MyNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.hidden = nn.Linear(10, 64)
            self.drop = HyperDropout(64)          # one learned drop rate per hidden unit
            self.out = nn.Linear(64, 1)

        def forward(self, x):
            return self.out(self.drop(torch.relu(self.hidden(x))))

:func:`dropout_sites` lists the sites of any module.
"""
from __future__ import annotations

import torch
from torch import nn


class HyperDropout(nn.Module):
    """y = x · scale, ``scale`` a non-persistent buffer of ones shaped ``site_shape`` (units last).

    Args:
        site_shape: the units as the last axis, broadcast against x: ``64`` or ``(64,)`` for
            activations (B, 64); ``(1, 64)`` for sequences (B, T, 64) with one scale per sequence
            and unit, shared over time (variational dropout).

    A family substitutes a per-example scale (B, *site_shape) for ``scale`` (the buffer named
    ``<module name>.scale``) through ``functional_call``; without one, the forward pass is the identity.
    """

    def __init__(self, site_shape: int | tuple[int, ...]) -> None:
        super().__init__()
        shape = (site_shape,) if isinstance(site_shape, int) else tuple(site_shape)
        if not shape or not all(isinstance(d, int) and d >= 1 for d in shape):
            raise ValueError(f"site_shape must be positive ints with the units last, e.g. 64 or (1, 64); got {site_shape!r}")
        self.register_buffer("scale", torch.ones(shape), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale


def dropout_sites(model: nn.Module) -> dict[str, tuple[int, ...]]:
    """The :class:`HyperDropout` buffers of ``model``: buffer name -> site shape (units last), in
    module order, e.g. an mlp with hidden (32, 16) -> {"3.scale": (32,), "6.scale": (16,)}."""
    return {f"{name}.scale" if name else "scale": tuple(module.scale.shape)
            for name, module in model.named_modules() if isinstance(module, HyperDropout)}
