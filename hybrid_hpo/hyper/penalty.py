"""The fixed L2 term c/2·Σ‖w‖² that several families add to L_T (augment, fixed_augment, distill,
fixed), with its one default and one rule (``fixed_decay`` of RunConfig)."""
from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from hybrid_hpo.config import FIXED_DECAY, FIXED_DECAY_RULE

__all__ = ["FIXED_DECAY", "check_fixed_decay", "l2_penalty", "with_fixed_decay"]


def check_fixed_decay(value: float) -> float:
    """``value`` as a float; ConfigError ``fixed_decay must be a number >= 0 (got ...)`` otherwise."""
    FIXED_DECAY_RULE.check("fixed_decay", value)
    return float(value)


def l2_penalty(params: Mapping[str, Tensor], decay: float) -> Tensor:
    """1/2 · decay · Σ_n ||w_n||² over every parameter tensor (weights and biases): a scalar."""
    return 0.5 * decay * torch.stack([p.square().sum() for p in params.values()]).sum()


def with_fixed_decay(loss: Tensor, params: Mapping[str, Tensor], decay: float) -> Tensor:
    """loss + 1/2 · decay · Σ‖w‖² (just ``loss`` when decay is 0)."""
    return loss + l2_penalty(params, decay) if decay else loss
