"""hybrid-hpo: implicit differentiation over millions of hyperparameters inside a Bayesian search.

The public math API (see DESIGN.md)::

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
    hypergradient,
    make_solver,
    unrolled_hypergradient,
)

__version__ = "0.1.0"

__all__ = [
    "ConjugateGradient",
    "Exact",
    "HypergradientDivergence",
    "HypergradientInfo",
    "Identity",
    "Neumann",
    "Nystrom",
    "hypergradient",
    "make_solver",
    "unrolled_hypergradient",
]
