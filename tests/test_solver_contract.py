"""The contract every registered inverse-HVP solver meets, parametrized over the registry.

A new solver is tested by registering it: the toy below is one class plus one registry line
(``monkeypatch.setitem(SOLVERS, ...)``, so other tests see the shipped registry), and every test
here covers it, as it does the shipped solvers: float64 accuracy against ``torch.linalg.solve``
at the options its ``converged`` names, inputs left unmodified, 0-dim diagnostics, options with
help, bad options refused in one line, and a run (RunConfig, CLI flags) that uses it.
"""
from __future__ import annotations

import dataclasses
import io

import pytest
import torch
from torch import Tensor

from hybrid_hpo.config import RunConfig
from hybrid_hpo.errors import ConfigError
from hybrid_hpo.implicit import SOLVERS, LinearOperator, Solution, make_solver, option, options_of
from hybrid_hpo.implicit import tensor_list as tl
from hybrid_hpo.implicit.protocol import check
from test_solvers import N, operator, random_vector, reference, relative_error, spd


@dataclasses.dataclass(frozen=True)
class SteepestDescent:
    """Toy solver: steepest descent with exact line search on ½pᵀAp − vᵀp, A = H + δI (SPD).

    r = v − A p; step ⟨r, r⟩/⟨r, A r⟩; converges at rate (κ − 1)/(κ + 1) per product.
    """

    max_iter: int = option(50, "iterations (Hessian-vector products), an integer >= 1")
    damping: float = option(0.0, "δ added to H, a number >= 0")

    def __post_init__(self) -> None:
        check(isinstance(self.max_iter, int) and self.max_iter >= 1, "max_iter", "must be an integer >= 1",
              self.max_iter)
        check(self.damping >= 0, "damping", "must be >= 0", self.damping)

    @classmethod
    def converged(cls, size: int, damping: float) -> "SteepestDescent":
        return cls(max_iter=400, damping=damping)  # κ <= 10 on the contract's spectrum: 0.82^400

    def solve(self, operator: LinearOperator, v: list[Tensor]) -> Solution:
        p, r = tl.zeros_like(v), tl.clone(v)
        for _ in range(self.max_iter):
            ar = operator.matvec(r)
            tl.axpy_(ar, self.damping, r)
            rr = tl.dot(r, r)
            step = torch.where(rr > 0, rr / tl.dot(r, ar), torch.zeros_like(rr))
            tl.axpy_(p, step, r)
            tl.axpy_(r, -step, ar)
        residual = tl.norm(r) / tl.norm(v)
        return Solution(p, torch.tensor(self.max_iter), residual, ~tl.all_finite(p))


ALL = {**SOLVERS, "steepest_descent": SteepestDescent}


@pytest.fixture(autouse=True)
def registered_toy(monkeypatch):
    monkeypatch.setitem(SOLVERS, "steepest_descent", SteepestDescent)  # the one registry line


SOLVED = [(name, damping) for name, cls in ALL.items() for damping in (0.0, 0.7)
          if cls.converged(N, damping) is not None]


def test_every_solver_but_identity_has_a_converged_setting():
    assert {name for name, _ in SOLVED} == set(ALL) - {"identity"}


@pytest.mark.parametrize(("name", "damping"), SOLVED)
def test_converged_setting_matches_linalg_solve_in_float64(name, damping):
    matrix = spd(torch.linspace(0.5, 5.0, N), seed=3)
    v = random_vector()
    before = [t.clone() for t in v]
    solution = ALL[name].converged(N, damping).solve(operator(matrix), v)
    assert relative_error(solution.p, reference(matrix, v, damping)) < 1e-8
    assert not bool(solution.diverged)
    assert all(torch.equal(a, b) for a, b in zip(v, before))  # inputs untouched
    assert [t.shape for t in solution.p] == [t.shape for t in v]
    assert all(t.dim() == 0 for t in (solution.iterations, solution.residual, solution.diverged))


WARM = [(name, damping) for name, damping in SOLVED if "warm_start" in {o.name for o in options_of(ALL[name])}]


def test_the_iterative_solvers_offer_a_warm_start():
    assert {name for name, _ in WARM} >= {"cg", "neumann"}


@pytest.mark.parametrize(("name", "damping"), WARM)
def test_warm_started_converged_setting_matches_linalg_solve_on_a_nearby_system(name, damping):
    """Started from the solution of a system 1% away (as at the previous hyper step), the solver at
    its converged options still solves the new system to 1e-8; its state survives
    torch.load(weights_only=True) as a checkpoint reads it."""
    first = spd(torch.linspace(0.5, 5.0, N), seed=3)
    second = first + 0.01 * spd(torch.linspace(0.0, 1.0, N), seed=4)
    solver = dataclasses.replace(ALL[name].converged(N, damping), warm_start=True)
    previous = solver.solve(operator(first), random_vector(1))
    buffer = io.BytesIO()
    torch.save(previous.state, buffer)
    buffer.seek(0)
    v = random_vector(2)
    solution = solver.solve(operator(second), v, torch.load(buffer, weights_only=True))
    assert relative_error(solution.p, reference(second, v, damping)) < 1e-8
    assert not bool(solution.diverged)


@pytest.mark.parametrize("name", list(ALL))
def test_defaults_build_and_every_option_has_help(name):
    solver = make_solver(name)
    assert isinstance(solver, ALL[name])
    for info in options_of(ALL[name]):
        assert info.help and "\n" not in info.help, info.name


@pytest.mark.parametrize("name", list(ALL))
def test_an_unknown_option_is_refused_in_one_line(name):
    with pytest.raises(ConfigError) as error:
        make_solver(name, {"no_such_option": 1})
    assert str(error.value).startswith("solver.no_such_option: not an option of solver")
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("name", [n for n, cls in ALL.items() if options_of(cls)])
def test_a_bad_option_value_is_refused_naming_the_option(name):
    first = options_of(ALL[name])[0]
    with pytest.raises(ConfigError) as error:
        RunConfig.from_mapping({"solver": name, f"solver.{first.name}": -1})
    assert str(error.value).startswith(f"solver.{first.name}:") and "\n" not in str(error.value)


@pytest.mark.parametrize("name", list(ALL))
def test_run_config_carries_the_solver_and_its_defaults(name):
    config = RunConfig.from_mapping({"solver": name})
    assert config.make_solver() == ALL[name]()
    assert RunConfig.from_mapping(config.to_dict()) == config
    assert config.solver_options == {info.name: info.default for info in options_of(ALL[name])}


def test_the_toy_runs_from_the_cli_flags():
    from hybrid_hpo.cli import build_parser
    from hybrid_hpo.run_command import solver_option_settings

    args = build_parser().parse_args(["run", "--solver", "steepest_descent", "--solver-option", "max_iter=7",
                                      "--solver-option", "damping=0.5"])
    config = RunConfig.from_mapping({"solver": args.solver, **solver_option_settings(args.solver_option)})
    assert config.make_solver() == SteepestDescent(max_iter=7, damping=0.5)
