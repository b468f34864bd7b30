"""The math core: IFT hypergradients and inverse-HVP solvers (torch only: no Ray, no Optuna)."""
from hybrid_hpo.implicit.curvature import top_eigenvalue
from hybrid_hpo.implicit.hypergradient import HypergradientDivergence, HypergradientInfo, hypergradient
from hybrid_hpo.implicit.operators import CallableOperator, HessianOperator, LinearOperator
from hybrid_hpo.implicit.protocol import Solution, Solver, SolverState, option, options_of
from hybrid_hpo.implicit.registry import SOLVERS, make_solver, solver_class
from hybrid_hpo.implicit.solvers import ConjugateGradient, Exact, Identity, Neumann, Nystrom, dense_matrix
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
    "Solver",
    "SolverState",
    "dense_matrix",
    "hypergradient",
    "make_solver",
    "option",
    "options_of",
    "solver_class",
    "top_eigenvalue",
    "unrolled_hypergradient",
]
