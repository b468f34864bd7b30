"""The full IFT hypergradient against closed forms, finite differences and the unrolled theorem."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from hybrid_hpo import (
    ConjugateGradient,
    Exact,
    HypergradientDivergence,
    Identity,
    Neumann,
    Nystrom,
    hypergradient,
    unrolled_hypergradient,
)

DTYPE = torch.float64


# --- per-weight ridge regression: w*(λ) in closed form -------------------------------------------------

class Ridge:
    """L_T = ½ mean((Xw + b − y)²) + ½ Σ exp(ℓ) ⊙ w²  (one decay per weight; b undecayed);
    L_V = ½ mean((X_v w + b − y_v)²) + c Σ ℓ²  (the last term gives a direct ∂L_V/∂λ)."""

    def __init__(self, n: int = 40, d: int = 6, seed: int = 0, direct: float = 0.01):
        generator = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, d, generator=generator, dtype=DTYPE)
        self.y = self.x @ torch.randn(d, generator=generator, dtype=DTYPE) + 0.3 * torch.randn(n, generator=generator, dtype=DTYPE)
        self.xv = torch.randn(n, d, generator=generator, dtype=DTYPE)
        self.yv = self.xv @ torch.randn(d, generator=generator, dtype=DTYPE)
        self.log_decay = torch.randn(d, generator=generator, dtype=DTYPE) - 1.0
        self.direct = direct

    def train_loss(self, params, hparams):
        residual = self.x @ params["w"] + params["b"] - self.y
        return 0.5 * residual.pow(2).mean() + 0.5 * (hparams["log_decay"].exp() * params["w"].pow(2)).sum()

    def val_loss(self, params, hparams):
        residual = self.xv @ params["w"] + params["b"] - self.yv
        return 0.5 * residual.pow(2).mean() + self.direct * hparams["log_decay"].pow(2).sum()

    def optimum(self, log_decay: torch.Tensor) -> dict[str, torch.Tensor]:
        """Normal equations of L_T in (w, b), differentiable in log_decay."""
        n, d = self.x.shape
        design = torch.cat([self.x, torch.ones(n, 1, dtype=DTYPE)], dim=1)
        penalty = torch.diag(torch.cat([log_decay.exp(), torch.zeros(1, dtype=DTYPE)]))
        solution = torch.linalg.solve(design.T @ design / n + penalty, design.T @ self.y / n)
        return {"w": solution[:d], "b": solution[d]}

    def true_hypergradient(self) -> torch.Tensor:
        log_decay = self.log_decay.clone().requires_grad_(True)
        loss = self.val_loss(self.optimum(log_decay), {"log_decay": log_decay})
        return torch.autograd.grad(loss, log_decay)[0]

    def hparams(self):
        return {"log_decay": self.log_decay, "unused": torch.ones(2, 3, dtype=DTYPE)}


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.linalg.vector_norm(a - b) / torch.linalg.vector_norm(b))


@pytest.fixture(scope="module")
def ridge() -> Ridge:
    return Ridge()


@pytest.mark.parametrize(
    ("solver", "tolerance"),
    [
        (Exact(), 1e-11),
        (ConjugateGradient(max_iter=7, rtol=0.0), 1e-8),  # 7 = number of weights: exact
        (Neumann(terms=2000, alpha="auto"), 1e-6),
        (Nystrom(rank=7, rho=1e-7), 1e-6),  # bias ~ρ/λ_min, Woodbury cancellation ~ε‖H‖/ρ
    ],
    ids=["exact", "cg", "neumann", "nystrom"],
)
def test_hypergradient_matches_closed_form_ridge(ridge, solver, tolerance):
    params = ridge.optimum(ridge.log_decay)
    grads, info = hypergradient(ridge.train_loss, ridge.val_loss, params, ridge.hparams(), solver=solver, return_info=True)
    assert relative_error(grads["log_decay"], ridge.true_hypergradient()) < tolerance
    assert info.finite and not info.diverged
    assert torch.equal(grads["unused"], torch.zeros(2, 3, dtype=DTYPE))
    assert all(not g.requires_grad and g.grad_fn is None for g in grads.values())
    assert {k: g.shape for k, g in grads.items()} == {k: h.shape for k, h in ridge.hparams().items()}


def test_identity_is_a_crude_approximation_not_the_truth(ridge):
    params = ridge.optimum(ridge.log_decay)
    identity = hypergradient(ridge.train_loss, ridge.val_loss, params, ridge.hparams(), solver=Identity())
    assert relative_error(identity["log_decay"], ridge.true_hypergradient()) > 1e-2


def test_neumann_approaches_the_exact_hypergradient_as_terms_grow(ridge):
    params = ridge.optimum(ridge.log_decay)
    exact = hypergradient(ridge.train_loss, ridge.val_loss, params, ridge.hparams(), solver=Exact())["log_decay"]
    errors = []
    for terms in (0, 2, 10, 50, 300):
        approx = hypergradient(ridge.train_loss, ridge.val_loss, params, ridge.hparams(), solver=Neumann(terms=terms, alpha="auto"))
        errors.append(relative_error(approx["log_decay"], exact))
    assert all(later < earlier for earlier, later in zip(errors, errors[1:]))
    assert errors[-1] < 1e-3


@pytest.mark.parametrize("steps", [1, 3, 10])
def test_unrolled_from_the_optimum_equals_neumann(ridge, steps):
    """Lorraine et al., Theorem 1: i SGD steps from w* with step α = Neumann with i − 1 HVPs."""
    params = ridge.optimum(ridge.log_decay.detach())
    alpha = 0.05
    unrolled = unrolled_hypergradient(ridge.train_loss, ridge.val_loss, params, ridge.hparams(), steps=steps, lr=alpha)
    neumann = hypergradient(ridge.train_loss, ridge.val_loss, params, ridge.hparams(), solver=Neumann(terms=steps - 1, alpha=alpha))
    assert relative_error(unrolled["log_decay"], neumann["log_decay"]) < 1e-10
    other = hypergradient(ridge.train_loss, ridge.val_loss, params, ridge.hparams(), solver=Neumann(terms=steps, alpha=alpha))
    assert relative_error(unrolled["log_decay"], other["log_decay"]) > 1e-4


# --- logistic regression: central finite differences of λ ↦ L_V(w*(λ)) ----------------------------------

class Logistic:
    """Multinomial logistic regression with one log-decay per weight, trained by Newton's method."""

    def __init__(self, seed: int = 0, n: int = 60, d: int = 4, k: int = 3):
        generator = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, d, generator=generator, dtype=DTYPE)
        self.y = torch.randint(0, k, (n,), generator=generator)
        self.xv = torch.randn(n, d, generator=generator, dtype=DTYPE)
        self.yv = torch.randint(0, k, (n,), generator=generator)
        self.shapes = {"weight": (k, d), "bias": (k,)}
        self.log_decay = torch.randn(k, d, generator=generator, dtype=DTYPE) - 2.0

    def split(self, flat):
        weight_size = math.prod(self.shapes["weight"])
        return {"weight": flat[:weight_size].reshape(self.shapes["weight"]), "bias": flat[weight_size:]}

    def train_loss(self, params, hparams):
        logits = self.x @ params["weight"].T + params["bias"]
        return F.cross_entropy(logits, self.y) + 0.5 * (hparams["log_decay"].exp() * params["weight"].pow(2)).sum()

    def val_loss(self, params, hparams):
        return F.cross_entropy(self.xv @ params["weight"].T + params["bias"], self.yv)

    def optimum(self, log_decay: torch.Tensor) -> dict[str, torch.Tensor]:
        flat = torch.zeros(sum(math.prod(s) for s in self.shapes.values()), dtype=DTYPE)
        objective = lambda z: self.train_loss(self.split(z), {"log_decay": log_decay})  # noqa: E731
        for _ in range(50):
            gradient = torch.func.grad(objective)(flat)
            if gradient.norm() < 1e-14:
                break
            # The bias direction is flat under softmax shifts; a tiny ridge keeps Newton well posed.
            hessian = torch.func.hessian(objective)(flat) + 1e-12 * torch.eye(len(flat), dtype=DTYPE)
            flat = flat - torch.linalg.solve(hessian, gradient)
        return self.split(flat)

    def validation_at_optimum(self, log_decay: torch.Tensor) -> float:
        return float(self.val_loss(self.optimum(log_decay), {}))


@pytest.mark.parametrize("solver", [Exact(), ConjugateGradient(max_iter=40, rtol=1e-12)], ids=["exact", "cg"])
def test_hypergradient_matches_central_finite_differences(solver):
    problem = Logistic()
    params = problem.optimum(problem.log_decay)
    grads = hypergradient(problem.train_loss, problem.val_loss, params, {"log_decay": problem.log_decay}, solver=solver)
    generator = torch.Generator().manual_seed(7)
    eps = 1e-5
    for _ in range(3):
        direction = torch.randn(problem.log_decay.shape, generator=generator, dtype=DTYPE)
        plus = problem.validation_at_optimum(problem.log_decay + eps * direction)
        minus = problem.validation_at_optimum(problem.log_decay - eps * direction)
        finite_difference = (plus - minus) / (2 * eps)
        analytic = float((grads["log_decay"] * direction).sum())
        assert analytic == pytest.approx(finite_difference, rel=1e-6, abs=1e-10)
    # and coordinate-wise on a few single weights' decays
    for index in [(0, 0), (2, 3)]:
        bump = torch.zeros_like(problem.log_decay)
        bump[index] = eps
        fd = (problem.validation_at_optimum(problem.log_decay + bump) - problem.validation_at_optimum(problem.log_decay - bump)) / (2 * eps)
        assert float(grads["log_decay"][index]) == pytest.approx(fd, rel=1e-5, abs=1e-10)


# --- divergence and non-finite values are reported, never silently returned -----------------------------

def test_divergent_neumann_raises_or_reports(ridge):
    params = ridge.optimum(ridge.log_decay)
    huge = Neumann(terms=40, alpha=1e3)
    with pytest.raises(HypergradientDivergence, match="alpha"):
        hypergradient(ridge.train_loss, ridge.val_loss, params, ridge.hparams(), solver=huge)
    _, info = hypergradient(ridge.train_loss, ridge.val_loss, params, ridge.hparams(), solver=huge, return_info=True)
    assert info.diverged and info.residual > 1.0 and info.iterations == 40 and info.solver == "Neumann"


def test_non_finite_hypergradient_is_flagged(ridge):
    params = ridge.optimum(ridge.log_decay)
    poisoned = dict(params, w=params["w"].clone().fill_(float("nan")))
    grads, info = hypergradient(ridge.train_loss, ridge.val_loss, poisoned, ridge.hparams(), solver=ConjugateGradient(), return_info=True)
    assert not info.finite
    assert not torch.isfinite(grads["log_decay"]).all()
    with pytest.raises(HypergradientDivergence):
        hypergradient(ridge.train_loss, ridge.val_loss, poisoned, ridge.hparams(), solver=ConjugateGradient())


def test_info_reports_the_solvers_work(ridge):
    params = ridge.optimum(ridge.log_decay)
    _, info = hypergradient(ridge.train_loss, ridge.val_loss, params, ridge.hparams(), solver=ConjugateGradient(max_iter=3, rtol=0.0), return_info=True)
    assert info.iterations == 3 and 0.0 < info.residual < 1.0 and info.solver == "ConjugateGradient"
    _, info = hypergradient(ridge.train_loss, ridge.val_loss, params, ridge.hparams(), solver=Identity(), return_info=True)
    assert info.iterations == 0 and math.isnan(info.residual)


def test_inputs_are_left_untouched(ridge):
    params = ridge.optimum(ridge.log_decay)
    hparams = ridge.hparams()
    before = {k: v.clone() for k, v in {**params, **hparams}.items()}
    hypergradient(ridge.train_loss, ridge.val_loss, params, hparams, solver=Neumann(terms=3, alpha=0.1))
    assert all(torch.equal(before[k], v) for k, v in {**params, **hparams}.items())
    assert all(v.grad is None for v in {**params, **hparams}.values())


def test_leaf_parameters_are_differentiated_as_they_are(ridge):
    """Weights that are leaves requiring grad (a module's parameters) go in without copies: the same
    hypergradient, bit for bit, as from detached copies, and their .grad and values stay untouched."""
    params = ridge.optimum(ridge.log_decay)
    leaves = {k: v.clone().requires_grad_(True) for k, v in params.items()}
    solver = Neumann(terms=3, alpha=0.1)
    expected = hypergradient(ridge.train_loss, ridge.val_loss, params, ridge.hparams(), solver=solver)
    seen = []

    def train_loss(p, h):
        seen.append(all(p[k] is leaves[k] for k in leaves))
        return ridge.train_loss(p, h)

    got = hypergradient(train_loss, ridge.val_loss, leaves, ridge.hparams(), solver=solver)
    assert seen == [True]
    assert all(torch.equal(got[k], expected[k]) for k in expected)
    assert all(v.grad is None and torch.equal(v.detach(), params[k]) for k, v in leaves.items())
