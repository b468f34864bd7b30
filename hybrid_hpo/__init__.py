"""hybrid-hpo: implicit differentiation over millions of hyperparameters inside a Bayesian search.

Your own model, data, loss and metrics: :class:`Task` (run it with
``hybrid_hpo.bilevel.BilevelTrainer(config, task=...)``, ``tune.with_parameters(IFTTrainable,
task=...)`` or ``hybrid-hpo run --task FILE.py:FUNCTION``). The math API::

    from hybrid_hpo import hypergradient, Identity, Neumann, ConjugateGradient, Nystrom, Exact

Names load on first use: ``import hybrid_hpo`` (and so ``hybrid-hpo --help``) imports neither
torch nor Ray nor Optuna.
"""
from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "ConjugateGradient": "hybrid_hpo.implicit",
    "Exact": "hybrid_hpo.implicit",
    "HypergradientDivergence": "hybrid_hpo.implicit",
    "HypergradientInfo": "hybrid_hpo.implicit",
    "Identity": "hybrid_hpo.implicit",
    "Neumann": "hybrid_hpo.implicit",
    "Nystrom": "hybrid_hpo.implicit",
    "hypergradient": "hybrid_hpo.implicit",
    "make_solver": "hybrid_hpo.implicit",
    "unrolled_hypergradient": "hybrid_hpo.implicit",
    "Task": "hybrid_hpo.task",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'hybrid_hpo' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
