"""hybrid-hpo: implicit differentiation over millions of hyperparameters inside a Bayesian search.

Your own model, data, loss and metrics: :class:`Task` (run it with
``hybrid_hpo.bilevel.BilevelTrainer(config, task=...)``, ``tune.with_parameters(IFTTrainable,
task=...)`` or ``hybrid-hpo run --task FILE.py:FUNCTION``). The math API::

    from hybrid_hpo import hypergradient, Identity, Neumann, ConjugateGradient, Nystrom, Exact

Names load on first use: ``import hybrid_hpo`` (and so ``hybrid-hpo --help``) imports neither
torch nor Ray nor Optuna.
"""
from __future__ import annotations

from hybrid_hpo.lazy import lazy_exports

__version__ = "0.1.0"

_MATH = ("ConjugateGradient", "Exact", "HypergradientDivergence", "HypergradientInfo", "Identity", "Neumann",
         "Nystrom", "SOLVERS", "Solver", "hypergradient", "make_solver", "unrolled_hypergradient")
_EXPORTS = {**{name: "hybrid_hpo.implicit" for name in _MATH}, "Task": "hybrid_hpo.task"}

__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)
