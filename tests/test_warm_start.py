"""Warm start across solves (solver.warm_start of cg and neumann, solver.refresh_every of nystrom),
in float64 against torch.linalg.solve: the same answer as a cold solve, the Richardson identity,
the products counted, and the state surviving torch.save / torch.load(weights_only=True)."""
from __future__ import annotations

import io

import pytest
import torch

from hybrid_hpo import ConjugateGradient, Neumann, Nystrom
from hybrid_hpo.implicit import CallableOperator
from hybrid_hpo.implicit.tensor_list import flatten, unflatten
from test_solvers import N, counting, operator, random_vector, reference, relative_error, spd

DAMPING = 0.3
WARM = {
    "cg": lambda **o: ConjugateGradient(max_iter=3 * N, rtol=1e-11, check_every=1, damping=DAMPING, **o),
    "neumann": lambda **o: Neumann(terms=3000, alpha=0.3, rtol=1e-11, check_every=1, damping=DAMPING, **o),
}


def nearby_systems() -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor, list[torch.Tensor]]:
    """(A₁, v₁), (A₂, v₂): two SPD systems 1% apart, as consecutive hyper steps solve."""
    first = spd(torch.linspace(0.5, 5.0, N), seed=3)
    second = first + 0.01 * spd(torch.linspace(0.0, 1.0, N), seed=4)
    v1 = random_vector(1)
    v2 = [a + 0.01 * b for a, b in zip(v1, random_vector(2))]
    return first, v1, second, v2


def round_trip(state: dict) -> dict:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


@pytest.mark.parametrize("name", list(WARM))
def test_a_warm_started_solve_converges_to_the_cold_solution(name):
    first, v1, second, v2 = nearby_systems()
    previous = WARM[name](warm_start=True).solve(operator(first), v1)
    assert previous.state is not None and WARM[name]().solve(operator(first), v1).state is None
    expected = reference(second, v2, DAMPING)
    op, calls = counting(second)
    warm = WARM[name](warm_start=True).solve(op, v2, previous.state)
    cold = WARM[name]().solve(operator(second), v2)
    assert relative_error(warm.p, expected) < 1e-9 and relative_error(cold.p, expected) < 1e-9
    assert not bool(warm.diverged)
    assert len(calls) == int(warm.iterations)


@pytest.mark.parametrize("name", list(WARM))
def test_a_warm_start_from_a_nearby_system_saves_products(name):
    """n = 200, eigenvalues in [0.5, 5]: CG needs ~40 products to rtol 1e-11, not n, so starting
    1% away from the answer must save some (Neumann saves ~log(100)/log(1/(1 − 0.3·0.8)))."""
    size, g = 200, torch.Generator().manual_seed(0)
    first = spd(torch.linspace(0.5, 5.0, size), seed=5)
    second = first + 0.01 * spd(torch.rand(size, generator=g, dtype=torch.float64), seed=6)
    v1 = torch.randn(size, generator=g, dtype=torch.float64)
    v2 = v1 + 0.01 * torch.randn(size, generator=g, dtype=torch.float64)
    flat = lambda matrix: CallableOperator(lambda x: [matrix @ x[0]])  # noqa: E731
    previous = WARM[name](warm_start=True).solve(flat(first), [v1])
    warm = WARM[name](warm_start=True).solve(flat(second), [v2], previous.state)
    cold = WARM[name]().solve(flat(second), [v2])
    expected = torch.linalg.solve(second + DAMPING * torch.eye(size, dtype=torch.float64), v2)
    assert relative_error(warm.p, expected) < 1e-9 and relative_error(cold.p, expected) < 1e-9
    assert int(warm.iterations) < int(cold.iterations) < size


@pytest.mark.parametrize("name", list(WARM))
def test_a_warm_start_at_the_exact_solution_returns_after_one_product(name):
    matrix, v = spd(torch.linspace(0.5, 5.0, N), seed=3), random_vector()
    exact = unflatten(reference(matrix, v, DAMPING), v)
    op, calls = counting(matrix)
    solution = WARM[name](warm_start=True).solve(op, v, {"p": exact})
    assert len(calls) == int(solution.iterations) == 1
    assert float(solution.residual) < 1e-14
    assert relative_error(solution.p, flatten(exact)) < 1e-14


@pytest.mark.parametrize("name", list(WARM))
def test_a_start_worse_than_zero_or_not_finite_falls_back_to_the_cold_start(name):
    matrix, v = spd(torch.linspace(0.5, 5.0, N), seed=3), random_vector()
    for bad in ([t * 1e3 for t in v], [torch.full_like(t, float("nan")) for t in v]):
        solution = WARM[name](warm_start=True).solve(operator(matrix), v, {"p": bad})
        assert relative_error(solution.p, reference(matrix, v, DAMPING)) < 1e-9
        assert not bool(solution.diverged)


def test_warm_neumann_is_richardson_from_x0_and_from_zero_the_series_itself():
    """p_{k+1} = p_k + α(v − A p_k): warm Neumann with K terms is K + 1 steps from x₀ (K + 1 products);
    from x₀ = 0 they are the Neumann series α Σ_{j≤K} (I − αA)^j v of the cold solver."""
    matrix, v, alpha, terms = spd(torch.linspace(0.5, 5.0, N), seed=3), random_vector(), 0.25, 6
    a = matrix + DAMPING * torch.eye(N, dtype=torch.float64)

    def richardson(x0: torch.Tensor) -> torch.Tensor:
        p = x0.clone()
        for _ in range(terms + 1):
            p = p + alpha * (flatten(v) - a @ p)
        return p

    solver = Neumann(terms=terms, alpha=alpha, damping=DAMPING, warm_start=True)
    x0 = 0.9 * reference(matrix, v, DAMPING)  # residual below ‖v‖: kept
    assert relative_error(solver.solve(operator(matrix), v, {"p": unflatten(x0, v)}).p, richardson(x0)) < 1e-13
    from_zero = solver.solve(operator(matrix), v, {"p": [torch.zeros_like(t) for t in v]})
    cold = Neumann(terms=terms, alpha=alpha, damping=DAMPING).solve(operator(matrix), v)
    assert relative_error(from_zero.p, richardson(torch.zeros(N, dtype=torch.float64))) < 1e-13
    assert relative_error(from_zero.p, flatten(cold.p)) < 1e-13
    assert int(from_zero.iterations) == terms + 1 == int(cold.iterations) + 1


def test_nystrom_reuses_its_sketch_for_refresh_every_solves():
    """refresh_every = 3: solves 1-3 use the sketch of the first system (k products, then none), the
    fourth draws a fresh one; at full rank each is exactly (ρI + H_sketched)⁻¹ v."""
    first, v1, second, v2 = nearby_systems()
    solver, rho = Nystrom(rank=N, rho=0.2, refresh_every=3), 0.2
    state, spent, answers = None, [], []
    for matrix, v in [(first, v1), (second, v2), (second, v2), (second, v2)]:
        op, calls = counting(matrix)
        solution = solver.solve(op, v, state)
        assert len(calls) == int(solution.iterations)
        state = None if solution.state is None else round_trip(solution.state)  # as a resumed run reads it
        spent.append(len(calls))
        answers.append(solution.p)
    assert spent == [N, 0, 0, N]
    assert state is not None and int(state["age"]) == 1  # the fourth solve's fresh sketch, served once
    assert relative_error(answers[1], reference(first, v2, rho)) < 1e-9  # the old sketch, the new v
    assert relative_error(answers[3], reference(second, v2, rho)) < 1e-9  # refreshed
    assert relative_error(answers[1], reference(second, v2, rho)) > 1e-4  # reuse did solve the old system
    assert Nystrom(rank=N, rho=rho).solve(operator(first), v1).state is None  # refresh_every=1 keeps nothing


@pytest.mark.parametrize("name", list(WARM))
def test_the_state_round_trips_through_torch_load_weights_only(name):
    first, v1, second, v2 = nearby_systems()
    state = WARM[name](warm_start=True).solve(operator(first), v1).state
    loaded = round_trip(state)
    again = WARM[name](warm_start=True).solve(operator(second), v2, loaded)
    direct = WARM[name](warm_start=True).solve(operator(second), v2, state)
    assert all(torch.equal(a, b) for a, b in zip(again.p, direct.p))
    assert int(again.iterations) == int(direct.iterations)


def test_warm_start_is_a_searchable_run_setting():
    from hybrid_hpo.config import RunConfig

    config = RunConfig.from_mapping({"solver": "cg", "solver.warm_start": "true"})  # as --solver-option gives it
    assert config.make_solver().warm_start is True
    assert RunConfig.from_mapping(config.to_dict()) == config
    assert RunConfig.from_mapping({"solver": "nystrom", "solver.refresh_every": "4"}).make_solver().refresh_every == 4
