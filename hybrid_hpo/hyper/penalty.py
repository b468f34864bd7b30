"""The fixed L2 term c/2·Σ‖w‖² that several families add to L_T (augment, fixed_augment, distill,
fixed), and its option ``fixed_decay``, declared alike by each of them through
:func:`fixed_decay_setting`; which tensors count as decayed weights (:func:`decayed_tensors`, shared
by ``weight_decay`` and the per-tensor decays of ``fixed``)."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from hybrid_hpo.rules import Range, setting

FIXED_DECAY: float = 1e-3
"""The default c of the fixed L2 term (``fixed_decay``)."""

__all__ = ["FIXED_DECAY", "decayed_tensors", "fixed_decay_setting", "l2_penalty", "with_fixed_decay"]


def decayed_tensors(params: Mapping[str, Tensor]) -> tuple[str, ...]:
    """Names of the weight tensors (``ndim >= 2``: Linear weights, conv kernels, embeddings, LSTM
    matrices) in parameter order: what a per-tensor decay decays; biases and normalisation
    parameters (1-D) are not among them."""
    return tuple(name for name, p in params.items() if p.ndim >= 2)


def fixed_decay_setting() -> Any:
    """The ``fixed_decay`` option field of a family's options: c >= 0 of the fixed L2 term (0: none)."""
    return setting(FIXED_DECAY, "fixed L2 c/2·||w||² in L_T (0: none)", Range(0))


def l2_penalty(params: Mapping[str, Tensor], decay: float) -> Tensor:
    """1/2 · decay · Σ_n ||w_n||² over every parameter tensor (weights and biases): a scalar."""
    return 0.5 * decay * torch.stack([p.square().sum() for p in params.values()]).sum()


def with_fixed_decay(loss: Tensor, params: Mapping[str, Tensor], decay: float) -> Tensor:
    """loss + 1/2 · decay · Σ‖w‖² (just ``loss`` when decay is 0)."""
    return loss + l2_penalty(params, decay) if decay else loss
