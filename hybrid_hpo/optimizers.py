"""The optimizers a run names (``inner_optimizer``, ``hyper_optimizer``), shared by the bilevel
loop and the families' own fits (distillation's evaluation) without either importing the other.

They are torch.optim's own classes (same update kernels, state and ``state_dict`` format, so a
checkpoint written with plain ``torch.optim`` loads), minus torch's lazy import of
``torch._dynamo``: every ``torch.optim`` optimizer imports it on its first ``__init__`` and ``step``
(their methods are wrapped for ``torch.compile``), which costs a fresh process (a sweep's trial
actor) more than importing torch itself. :func:`make_optimizer` subclasses the torch class with the
unwrapped methods (``step`` under ``torch.no_grad``, as torch's wrapper runs it for a
non-differentiable optimizer); under ``torch.compile`` nothing of this is needed, and this module
is not used there.

Adam runs torch's fused kernel (one kernel over all tensors per step instead of a Python loop of
about ten elementwise ops per tensor: 3-4x less time per step on the 50k λ of bench/peers_loop.py)
wherever every tensor is a floating-point tensor on one device of a type it supports (CPU, CUDA).
It computes the same update in another order: its results differ from the per-tensor loop's by
rounding only (tests/test_optimizers.py). SGD and RMSprop run torch's default: fused SGD with
momentum, for a step that costs little, would change the weights' rounding too.
"""
from __future__ import annotations

import functools
import inspect
from collections.abc import Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

OPTIMIZERS: tuple[str, ...] = ("sgd", "momentum", "adam", "rmsprop")
"""Names accepted by ``inner_optimizer`` and ``hyper_optimizer`` (``momentum`` = SGD, momentum 0.9)."""

FUSED_DEVICES: tuple[str, ...] = ("cpu", "cuda")
"""Device types on which Adam uses torch's fused kernel."""

# torch.optim.Optimizer methods that torch wraps in ``torch._disable_dynamo`` (a lazy import of torch._dynamo)
_DYNAMO_WRAPPED = ("add_param_group", "zero_grad", "state_dict", "load_state_dict")


def make_optimizer(name: str, params: Iterable[torch.Tensor], lr: float) -> torch.optim.Optimizer:
    """One of :data:`OPTIMIZERS`: sgd, momentum (SGD, momentum 0.9), adam (fused where possible),
    rmsprop — torch.optim's classes without their ``torch._dynamo`` import (see the module docstring)."""
    import torch

    params = list(params)
    fused = name == "adam" and len({p.device for p in params}) == 1 \
        and all(p.is_floating_point() and p.device.type in FUSED_DEVICES for p in params)
    if name == "sgd":
        return without_dynamo(torch.optim.SGD)(params, lr=lr)
    if name == "momentum":
        return without_dynamo(torch.optim.SGD)(params, lr=lr, momentum=0.9)
    if name == "adam":
        return without_dynamo(torch.optim.Adam)(params, lr=lr, fused=fused or None)
    if name == "rmsprop":
        return without_dynamo(torch.optim.RMSprop)(params, lr=lr)
    raise ValueError(f"unknown optimizer {name!r}; choose one of {', '.join(OPTIMIZERS)}")


@functools.cache
def without_dynamo(optimizer_class: type[torch.optim.Optimizer]) -> type[torch.optim.Optimizer]:
    """A subclass of the torch.optim class ``optimizer_class`` whose ``step`` (run under
    ``torch.no_grad``) and ``add_param_group`` / ``zero_grad`` / ``state_dict`` /
    ``load_state_dict`` are torch's own functions without the wrappers that import ``torch._dynamo``.
    The class itself when torch's methods carry no such wrapper."""
    import torch

    methods = {name: getattr(torch.optim.Optimizer, name) for name in _DYNAMO_WRAPPED}
    methods["step"] = optimizer_class.step
    unwrapped = {name: inspect.unwrap(method) for name, method in methods.items()}
    if all(unwrapped[name] is method for name, method in methods.items()):
        return optimizer_class
    unwrapped["step"] = torch.no_grad()(unwrapped["step"])
    name = optimizer_class.__name__ + _SUFFIX  # found by pickle through this module's __getattr__
    return type(name, (optimizer_class,), {**unwrapped, "__module__": __name__, "__qualname__": name,
                                           "__doc__": without_dynamo.__doc__})


_SUFFIX = "WithoutDynamo"


def __getattr__(name: str) -> type:
    """``<torch.optim class name>WithoutDynamo``: the class :func:`without_dynamo` makes (so an
    optimizer pickles and unpickles, also in a process that has not made one yet)."""
    if not name.endswith(_SUFFIX):  # before importing torch: any probe of a missing name lands here
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import torch

    base = getattr(torch.optim, name.removesuffix(_SUFFIX), None)
    if not isinstance(base, type) or not issubclass(base, torch.optim.Optimizer):
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return without_dynamo(base)
