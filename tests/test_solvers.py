"""Each inverse-HVP solver against torch.linalg.solve on random SPD systems, in float64."""
from __future__ import annotations

import math

import pytest
import torch

from hybrid_hpo import SOLVERS, ConjugateGradient, Exact, Identity, Neumann, Nystrom, Solver, make_solver
from hybrid_hpo.errors import ConfigError
from hybrid_hpo.implicit import CallableOperator, HessianOperator, dense_matrix
from hybrid_hpo.implicit.tensor_list import flatten, unflatten

SHAPES = [(3, 2), (5,), (1, 1, 1)]  # n = 12, spread over tensors of several ranks
N = sum(torch.Size(s).numel() for s in SHAPES)


def spd(eigenvalues: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """Q diag(eigenvalues) Qᵀ with a random orthogonal Q."""
    generator = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(len(eigenvalues), len(eigenvalues), generator=generator, dtype=torch.float64))
    return q @ torch.diag(eigenvalues.to(torch.float64)) @ q.T


def operator(matrix: torch.Tensor) -> CallableOperator:
    like = [torch.zeros(s, dtype=torch.float64) for s in SHAPES]
    return CallableOperator(lambda v: unflatten(matrix @ flatten(v), like))


def random_vector(seed: int = 1) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=generator, dtype=torch.float64) for s in SHAPES]


def reference(matrix: torch.Tensor, v: list[torch.Tensor], damping: float = 0.0) -> torch.Tensor:
    return torch.linalg.solve(matrix + damping * torch.eye(len(matrix), dtype=matrix.dtype), flatten(v))


def relative_error(p: list[torch.Tensor], expected: torch.Tensor) -> float:
    return float(torch.linalg.vector_norm(flatten(p) - expected) / torch.linalg.vector_norm(expected))


@pytest.fixture
def matrix() -> torch.Tensor:
    return spd(torch.linspace(0.5, 5.0, N))  # λ_max = 5: Neumann needs α < 0.4


@pytest.mark.parametrize("damping", [0.0, 0.7])
def test_exact_matches_linalg_solve(matrix, damping):
    v = random_vector()
    solution = Exact(damping=damping).solve(operator(matrix), v)
    assert relative_error(solution.p, reference(matrix, v, damping)) < 1e-12
    assert float(solution.residual) < 1e-12
    assert [t.shape for t in solution.p] == [torch.Size(s) for s in SHAPES]


@pytest.mark.parametrize("damping", [0.0, 0.7])
def test_cg_is_exact_in_n_iterations(matrix, damping):
    v = random_vector()
    solution = ConjugateGradient(max_iter=N, rtol=0.0, damping=damping).solve(operator(matrix), v)
    assert relative_error(solution.p, reference(matrix, v, damping)) < 1e-10
    assert not bool(solution.diverged)


def test_cg_with_fewer_iterations_than_distinct_eigenvalues_is_not_exact(matrix):
    v = random_vector()
    solution = ConjugateGradient(max_iter=N - 3, rtol=0.0).solve(operator(matrix), v)
    assert relative_error(solution.p, reference(matrix, v)) > 1e-6


@pytest.mark.parametrize(("check_every", "spent"), [(1, 3), (2, 4), (4, 4), (0, 30)])
def test_cg_stops_at_the_first_check_after_converging_and_reports_every_product(check_every, spent):
    """Three distinct eigenvalues: CG converges in 3 products; it stops at the first host check
    after that (never with check_every=0), and ``iterations`` is the number of products spent."""
    matrix = spd(torch.tensor([1.0] * 4 + [2.0] * 4 + [7.0] * 4))
    v = random_vector()
    op, calls = counting(matrix)
    solution = ConjugateGradient(max_iter=30, rtol=1e-12, check_every=check_every).solve(op, v)
    assert len(calls) == int(solution.iterations) == spent
    assert relative_error(solution.p, reference(matrix, v)) < 1e-12
    assert float(solution.residual) < 1e-12
    assert all(torch.isfinite(t).all() for t in solution.p)  # the frozen iterations made no 0/0


@pytest.mark.parametrize("rtol", [1e-3, 1e-6])
def test_cg_stopping_early_changes_the_solution_by_less_than_its_tolerance(matrix, rtol):
    v = random_vector()
    early = ConjugateGradient(max_iter=3 * N, rtol=rtol, check_every=1).solve(operator(matrix), v)
    full = ConjugateGradient(max_iter=3 * N, rtol=rtol, check_every=0).solve(operator(matrix), v)
    assert int(early.iterations) <= N < 3 * N == int(full.iterations)  # exact in N products at the latest
    assert relative_error(early.p, flatten(full.p)) == 0.0  # the iterations after convergence are no-ops
    assert float(early.residual) <= rtol  # and the early solution meets the tolerance


def test_cg_residual_matches_true_residual(matrix):
    v = random_vector()
    solution = ConjugateGradient(max_iter=4, rtol=0.0).solve(operator(matrix), v)
    true = torch.linalg.vector_norm(matrix @ flatten(solution.p) - flatten(v)) / torch.linalg.vector_norm(flatten(v))
    assert float(solution.residual) == pytest.approx(float(true), rel=1e-8)


def test_cg_reports_non_positive_curvature():
    matrix = spd(torch.cat([torch.tensor([-3.0]), torch.linspace(1.0, 2.0, N - 1)]))
    solution = ConjugateGradient(max_iter=N).solve(operator(matrix), random_vector())
    assert bool(solution.diverged)


@pytest.mark.parametrize(("alpha", "damping"), [(0.3, 0.0), (0.05, 0.0), (0.3, 0.7), (1.0 / 6.0, 0.5)])
def test_neumann_converges_to_linalg_solve(matrix, alpha, damping):
    v = random_vector()
    solution = Neumann(terms=800, alpha=alpha, damping=damping).solve(operator(matrix), v)
    assert relative_error(solution.p, reference(matrix, v, damping)) < 1e-8
    assert not bool(solution.diverged)


def test_neumann_equals_its_defining_series(matrix):
    v = random_vector()
    alpha, terms, damping = 0.25, 4, 0.3
    a = matrix + damping * torch.eye(N, dtype=torch.float64)
    step = torch.eye(N, dtype=torch.float64) - alpha * a
    expected = alpha * sum(torch.linalg.matrix_power(step, j) @ flatten(v) for j in range(terms + 1))
    solution = Neumann(terms=terms, alpha=alpha, damping=damping).solve(operator(matrix), v)
    assert relative_error(solution.p, expected) < 1e-13
    last_term = torch.linalg.matrix_power(step, terms) @ flatten(v)
    assert float(solution.residual) == pytest.approx(float(last_term.norm() / flatten(v).norm()), rel=1e-10)


def counting(matrix: torch.Tensor) -> tuple[CallableOperator, list[int]]:
    """The operator of ``matrix`` and the list that gets one entry per product it computes."""
    inner, calls = operator(matrix), []
    return CallableOperator(lambda d: calls.append(1) or inner.matvec(d)), calls


@pytest.mark.parametrize("check_every", [1, 3, 8])
@pytest.mark.parametrize("damping", [0.0, 0.7])
def test_neumann_stops_at_the_first_check_after_meeting_rtol_and_reports_every_product(matrix, check_every, damping):
    """The series stops at the first host check at which its last term (I − αA)^j v, the residual of
    the series one term shorter, is <= rtol·‖v‖; expected count from the dense powers of I − αA."""
    v, alpha, rtol = random_vector(), 0.3, 1e-6
    step = torch.eye(N, dtype=torch.float64) - alpha * (matrix + damping * torch.eye(N, dtype=torch.float64))
    norms = [float(torch.linalg.vector_norm(torch.linalg.matrix_power(step, j) @ flatten(v))) for j in range(400)]
    first = next(j for j, size in enumerate(norms) if size <= rtol * float(flatten(v).norm()))
    expected = math.ceil(first / check_every) * check_every
    op, calls = counting(matrix)
    solution = Neumann(terms=400, alpha=alpha, damping=damping, rtol=rtol, check_every=check_every).solve(op, v)
    assert len(calls) == int(solution.iterations) == expected < 400
    assert float(solution.residual) <= rtol
    full = Neumann(terms=expected, alpha=alpha, damping=damping).solve(operator(matrix), v)  # no early exit
    assert relative_error(solution.p, flatten(full.p)) == 0.0  # the same series, cut where it was read


@pytest.mark.parametrize("rtol", [1e-3, 1e-6])
def test_neumann_stopping_early_is_within_its_tolerance_of_the_full_solve(matrix, rtol):
    """‖v − A p‖ <= rtol‖v‖ for both; eigenvalues in [0.5, 5] then bound ‖p_early − p_full‖ by
    2·rtol·‖v‖/0.5 <= 2κ·rtol·‖p_full‖ with κ = 10."""
    v = random_vector()
    early = Neumann(terms=2000, alpha=0.3, rtol=rtol).solve(operator(matrix), v)
    full = Neumann(terms=2000, alpha=0.3).solve(operator(matrix), v)
    assert int(early.iterations) < 2000 == int(full.iterations)
    true_residual = torch.linalg.vector_norm(matrix @ flatten(early.p) - flatten(v)) / flatten(v).norm()
    assert float(true_residual) <= rtol
    assert 0.0 < relative_error(early.p, flatten(full.p)) <= 2 * 10 * rtol


def test_neumann_without_rtol_spends_every_term(matrix):
    op, calls = counting(matrix)
    solution = Neumann(terms=300, alpha=0.3, check_every=1).solve(op, random_vector())  # converged long before
    assert len(calls) == int(solution.iterations) == 300


def test_neumann_error_shrinks_with_terms(matrix):
    v = random_vector()
    errors = [relative_error(Neumann(terms=k, alpha=0.3).solve(operator(matrix), v).p, reference(matrix, v)) for k in (1, 5, 20, 100)]
    assert errors == sorted(errors, reverse=True)
    assert errors[-1] < 1e-6


def test_neumann_detects_divergence(matrix):
    solution = Neumann(terms=30, alpha=0.5).solve(operator(matrix), random_vector())  # α > 2/λ_max = 0.4
    assert bool(solution.diverged)
    assert float(solution.residual) > 1.0


def test_neumann_flags_a_too_large_alpha_at_small_terms_where_the_residual_looks_fine(matrix):
    """α = 0.5 > 2/λ_max = 0.4 at K = 5: the residual is still below 1 and p is 50% off; the curvature
    the series saw (‖A t_j‖/‖t_j‖ ≤ λ_max) proves α too large and flags it."""
    v = random_vector()
    solution = Neumann(terms=5, alpha=0.5).solve(operator(matrix), v)
    assert float(solution.residual) < 1.0
    assert relative_error(solution.p, reference(matrix, v)) > 0.3
    assert bool(solution.diverged)


@pytest.mark.parametrize("terms", [1, 2, 5, 20, 400])
@pytest.mark.parametrize("damping", [0.0, 0.7])
def test_neumann_never_flags_an_alpha_below_two_over_lambda_max(matrix, terms, damping):
    alpha = 0.99 * 2 / (5.0 + damping)  # just inside the convergence region of A = H + δI
    v = random_vector()
    solution = Neumann(terms=terms, alpha=alpha, damping=damping).solve(operator(matrix), v)
    assert not bool(solution.diverged)
    if terms == 400:  # slow (the top mode shrinks by 0.98 per term) but converging
        assert relative_error(solution.p, reference(matrix, v, damping)) < 1e-2


def test_neumann_does_not_flag_a_long_series_whose_terms_underflowed(matrix):
    """At K = 2000 the terms (I − αA)^j v underflow to 0; their norm ratio is no curvature bound."""
    v = random_vector()
    solution = Neumann(terms=2000, alpha=1.0 / 5.7, damping=0.7).solve(operator(matrix), v)
    assert relative_error(solution.p, reference(matrix, v, 0.7)) < 1e-12
    assert not bool(solution.diverged)


def test_neumann_auto_alpha_converges_where_a_fixed_alpha_diverges():
    matrix = spd(torch.linspace(10.0, 80.0, N))  # α = 0.1 > 2/80 diverges
    v = random_vector()
    assert bool(Neumann(terms=50, alpha=0.1).solve(operator(matrix), v).diverged)
    solution = Neumann(terms=400, alpha="auto").solve(operator(matrix), v)
    assert not bool(solution.diverged)
    assert relative_error(solution.p, reference(matrix, v)) < 1e-8


def test_identity_equals_neumann_with_zero_terms_and_unit_alpha(matrix):
    v = random_vector()
    identity = Identity().solve(operator(matrix), v).p
    neumann = Neumann(terms=0, alpha=1.0).solve(operator(matrix), v).p
    assert all(torch.equal(a, b) for a, b in zip(identity, neumann))
    assert all(torch.equal(a, b) for a, b in zip(identity, v))


@pytest.mark.parametrize("rho", [1e-3, 0.5])
def test_nystrom_with_full_rank_is_exact(matrix, rho):
    v = random_vector()
    solution = Nystrom(rank=N, rho=rho).solve(operator(matrix), v)
    assert relative_error(solution.p, reference(matrix, v, damping=rho)) < 1e-9


def test_nystrom_recovers_a_low_rank_matrix_from_a_few_columns():
    rank = 3
    generator = torch.Generator().manual_seed(3)
    factor = torch.randn(N, rank, generator=generator, dtype=torch.float64)
    matrix = factor @ factor.T  # PSD, rank 3: any 5 generic columns span its range
    v, rho = random_vector(), 0.2
    solution = Nystrom(rank=rank + 2, rho=rho).solve(operator(matrix), v)
    assert relative_error(solution.p, reference(matrix, v, damping=rho)) < 1e-9
    truncated = Nystrom(rank=rank - 1, rho=rho).solve(operator(matrix), v)
    assert relative_error(truncated.p, reference(matrix, v, damping=rho)) > 1e-3


def test_nystrom_sketch_samples_distinct_coordinates_fixed_by_its_seed():
    """The sketch's columns are H e_j for k distinct coordinates j: with H diagonal each sampled
    column has its one non-zero at j, across the tensors of the list."""
    diagonal = torch.linspace(1.0, 2.0, N, dtype=torch.float64)
    v = random_vector()

    def sampled(seed: int) -> list[int]:
        rows = Nystrom(rank=7, rho=0.1, seed=seed).sketch(operator(torch.diag(diagonal)), v)["rows"]
        columns = torch.cat(rows, dim=1)  # (k, N): column j of H for each sample
        assert torch.equal((columns != 0).sum(dim=1), torch.ones(7, dtype=torch.long))
        picked = columns.abs().argmax(dim=1)
        assert torch.allclose(columns[torch.arange(7), picked], diagonal[picked])
        return picked.tolist()

    first = sampled(0)
    assert len(set(first)) == 7 and first == sampled(0)
    assert sampled(1) != first


def test_exact_flags_a_singular_hessian_with_its_residual():
    """H singular (a zero eigenvalue) and v partly in its null space: no p solves Hp = v. Exact must
    report the residual of what it returns and flag it, not hand back a huge p as a solution."""
    matrix = spd(torch.cat([torch.zeros(1), torch.linspace(0.5, 5.0, N - 1)]))
    v = random_vector()
    solution = Exact().solve(operator(matrix), v)
    assert bool(solution.diverged)
    assert not float(solution.residual) <= 1e-2  # large, or NaN for an exactly zero pivot
    damped = Exact(damping=0.1).solve(operator(matrix), v)  # damping makes it solvable
    assert not bool(damped.diverged) and float(damped.residual) < 1e-12
    assert relative_error(damped.p, reference(matrix, v, damping=0.1)) < 1e-10


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_nystrom_flags_a_non_finite_hessian_instead_of_raising(matrix, bad):
    poisoned = matrix.clone()
    poisoned[0, 0] = bad
    solution = Nystrom(rank=N, rho=0.1).solve(operator(poisoned), random_vector())
    assert bool(solution.diverged)
    assert not all(torch.isfinite(t).all() for t in solution.p)
    healthy = Nystrom(rank=N, rho=0.1).solve(operator(matrix), random_vector())  # the guard changes nothing else
    assert not bool(healthy.diverged)
    assert relative_error(healthy.p, reference(matrix, random_vector(), damping=0.1)) < 1e-9


def test_dense_matrix_recovers_the_operator(matrix):
    like = random_vector()
    assert torch.allclose(dense_matrix(operator(matrix), like, chunk=5), matrix, atol=1e-14)


def test_hessian_operator_matches_torch_func_hessian():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2)).double()
    x, y = torch.randn(7, 3, dtype=torch.float64), torch.randint(0, 2, (7,))
    params = {k: p.detach() for k, p in model.named_parameters()}

    def loss(flat: torch.Tensor) -> torch.Tensor:
        named = dict(zip(params, unflatten(flat, list(params.values()))))
        return torch.nn.functional.cross_entropy(torch.func.functional_call(model, named, (x,)), y)

    expected = torch.func.hessian(loss)(flatten(list(params.values())))
    weights = [p.clone().requires_grad_(True) for p in params.values()]
    grads = torch.autograd.grad(loss(flatten(weights)), weights, create_graph=True)
    hessian = HessianOperator(grads, weights)
    assert torch.allclose(dense_matrix(hessian, weights), expected, atol=1e-12)
    batch = [torch.randn(3, *w.shape, dtype=torch.float64) for w in weights]
    batched = hessian.matmat(batch)
    for j in range(3):
        single = hessian.matvec([b[j] for b in batch])
        assert all(torch.allclose(a[j], s, atol=1e-13) for a, s in zip(batched, single))


@pytest.mark.parametrize(
    ("name", "options", "field"),
    [
        ("neumann", {"terms": -1}, "solver.terms"),
        ("neumann", {"alpha": 0.0}, "solver.alpha"),
        ("neumann", {"alpha": -0.1}, "solver.alpha"),
        ("neumann", {"alpha": math.nan}, "solver.alpha"),
        ("cg", {"max_iter": -2}, "solver.max_iter"),
        ("cg", {"damping": -1.0}, "solver.damping"),
        ("cg", {"rtol": -1.0}, "solver.rtol"),
        ("cg", {"terms": 5}, "solver.terms"),  # Neumann's option: not CG's
        ("nystrom", {"rank": 0}, "solver.rank"),
        ("nystrom", {"rho": 0.0}, "solver.rho"),
        ("exact", {"damping": -0.1}, "solver.damping"),
        ("identity", {"damping": 0.1}, "solver.damping"),
        ("newton", {}, "solver"),
    ],
)
def test_bad_solver_options_raise_one_line_errors_naming_the_option(name, options, field):
    with pytest.raises(ConfigError) as error:
        make_solver(name, options)
    message = str(error.value)
    assert message.startswith(f"{field}:") and "\n" not in message


def test_make_solver_builds_the_registered_class_with_its_own_options():
    assert make_solver("identity") == Identity()
    assert make_solver("neumann", {"terms": 7, "alpha": 0.2, "damping": 0.1}) == Neumann(terms=7, alpha=0.2, damping=0.1)
    assert make_solver("cg", {"max_iter": 9, "rtol": 1e-6}) == ConjugateGradient(max_iter=9, rtol=1e-6)
    assert make_solver("nystrom", {"rank": 4, "rho": 0.3}) == Nystrom(rank=4, rho=0.3)
    assert make_solver("exact", {"damping": 0.2}) == Exact(damping=0.2)
    assert all(isinstance(make_solver(name), Solver) for name in SOLVERS)


@pytest.mark.parametrize(
    ("values", "finite"),
    [
        ([[1.0, 2.0], [3.0]], True),
        ([[1.0, float("nan")], [3.0]], False),
        ([[1.0, 2.0], [-float("inf")]], False),
        ([[3e38, -3e38], [3e38]], True),  # huge but finite: no overflow in the check
        ([[], [1.0]], True),  # an empty tensor has no entry to be non-finite
        ([[], [float("nan")]], False),
        ([[]], True),
    ],
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_all_finite_detects_nan_and_inf_without_overflowing(values, finite, dtype):
    from hybrid_hpo.implicit.tensor_list import all_finite

    tensors = [torch.tensor(v, dtype=dtype) for v in values]
    if dtype == torch.bfloat16 and finite:
        tensors = [t.clamp(-1e38, 1e38) for t in tensors]  # bfloat16 holds up to ~3.4e38 too
    assert bool(all_finite(tensors)) is finite
    # the check reads each entry: a non-finite value anywhere in a large tensor is found
    big = torch.randn(1000, 37, dtype=dtype)
    assert bool(all_finite([big, *tensors])) is finite
    big[999, 36] = float("inf")
    assert not bool(all_finite([big, *tensors]))
