"""hybrid-hpo: implicit differentiation over millions of hyperparameters inside a Bayesian search.

Your own model, data, loss and metrics: :class:`Task` (run it with
``hybrid_hpo.bilevel.BilevelTrainer(config, task=...)``, ``tune.with_parameters(IFTTrainable,
task=...)`` or ``hybrid-hpo run --task FILE.py:FUNCTION``). The math API::

    from hybrid_hpo import hypergradient, Identity, Neumann, ConjugateGradient, Nystrom, Exact
"""
from hybrid_hpo.implicit import (
    ConjugateGradient,
    Exact,
    HypergradientDivergence,
    HypergradientInfo,
    Identity,
    Neumann,
    Nystrom,
    SOLVERS,
    Solver,
    hypergradient,
    make_solver,
    unrolled_hypergradient,
)

from hybrid_hpo.task import Task

__version__ = "0.1.0"

__all__ = [
    "ConjugateGradient",
    "Exact",
    "HypergradientDivergence",
    "HypergradientInfo",
    "Identity",
    "Neumann",
    "Nystrom",
    "SOLVERS",
    "Solver",
    "Task",
    "hypergradient",
    "make_solver",
    "unrolled_hypergradient",
]
