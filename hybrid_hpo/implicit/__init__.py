"""The math core: IFT hypergradients and inverse-HVP solvers (torch only: no Ray, no Optuna)."""
from hybrid_hpo.implicit.curvature import top_eigenvalue
from hybrid_hpo.implicit.hypergradient import HypergradientDivergence, HypergradientInfo, hypergradient
from hybrid_hpo.implicit.operators import CallableOperator, HessianOperator, LinearOperator
from hybrid_hpo.implicit.solvers import (
    SOLVERS,
    ConjugateGradient,
    Exact,
    Identity,
    Neumann,
    Nystrom,
    Solution,
    dense_matrix,
    make_solver,
)
from hybrid_hpo.implicit.unrolled import unrolled_hypergradient

__all__ = [
    "SOLVERS",
    "CallableOperator",
    "ConjugateGradient",
    "Exact",
    "HessianOperator",
    "HypergradientDivergence",
    "HypergradientInfo",
    "Identity",
    "LinearOperator",
    "Neumann",
    "Nystrom",
    "Solution",
    "dense_matrix",
    "hypergradient",
    "make_solver",
    "top_eigenvalue",
    "unrolled_hypergradient",
]
