"""Inverse-Hessian-vector-product solvers: p ≈ (H + δI)⁻¹ v from Hessian-vector products only.

Every solver is a small frozen dataclass (its fields are its options, see
:mod:`hybrid_hpo.implicit.protocol`) with ``solve(operator, v[, state]) -> Solution``,
where ``operator`` provides ``matvec`` (and ``matmat`` for the batched ones, see
:mod:`hybrid_hpo.implicit.operators`) and ``v`` is a tensor list shaped like the weights.
Inside the loops every scalar stays on the device: no ``.item()``, no host synchronisation,
no flattening; the diagnostics in :class:`Solution` are 0-dim tensors read once by the caller.

Conventions (see docs/design.md): H is the Hessian of the training loss in the weights, δ ≥ 0 a
damping that makes the solved system H + δI.
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass
import torch
from torch import Tensor

from hybrid_hpo.implicit import tensor_list as tl
from hybrid_hpo.implicit.curvature import top_eigenvalue
from hybrid_hpo.implicit.operators import LinearOperator, as_operator
from hybrid_hpo.implicit.protocol import Solution, SolverState, check, option
from hybrid_hpo.implicit.tensor_list import Scalar

def _count(value: object, low: int) -> bool:
    """An integer (not a bool) >= low."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= low


def _number(value: object, low: float, strict: bool = False) -> bool:
    """A finite real number (not a bool) >= low, or > low when ``strict``."""
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        return False
    return value > low if strict else value >= low


def _scalar(value: float, like: Tensor, dtype: torch.dtype | None = None) -> Tensor:
    return torch.tensor(value, device=like.device, dtype=dtype or like.dtype)


@dataclass(frozen=True)
class Identity:
    """p = v: treats H as the identity (Lorraine et al.'s cheapest approximation, T1–T2).

    Equal to ``Neumann(terms=0, alpha=1.0)``. Costs no Hessian-vector product and no copy: the
    returned p is v itself (solvers never modify their inputs). It has no options. There is no
    solve to fail, so ``diverged`` is False: a non-finite v shows in the hypergradient, whose
    finiteness :func:`hybrid_hpo.implicit.hypergradient` checks (no second pass over v here).
    """

    @classmethod
    def converged(cls, size: int, damping: float) -> None:
        return None  # p = v solves only H + δI = I

    def solve(self, operator: LinearOperator, v: list[Tensor]) -> Solution:
        nan = _scalar(math.nan, v[0])
        return Solution(list(v), _scalar(0, v[0], torch.int64), nan, _scalar(False, v[0], torch.bool))


def _product(operator: LinearOperator, x: list[Tensor], damping: float) -> TensorList:
    """A x = (H + δI) x: one Hessian-vector product."""
    product = operator.matvec(x)
    if damping:
        tl.axpy_(product, damping, x)
    return product


def _warm_start(operator: LinearOperator, v: list[Tensor], state: SolverState | None,
                damping: float) -> tuple[TensorList | None, TensorList, int]:
    """(x₀, r₀ = v − A x₀, products spent) for a solve of A x = v, A = H + δI.

    Cold (no ``state``): x₀ = 0 (returned as None), r₀ = v, no product. Warm: x₀ = ``state["p"]``,
    the previous solution, and r₀ costs one product; x₀ is kept only when ‖r₀‖ < ‖v‖ (a device-side
    select, no host sync), so a warm start never starts from a larger residual than the cold one —
    and a non-finite x₀ falls back to 0 (r₀ = v, the product spent all the same).
    """
    if state is None:
        return None, tl.clone(v), 0
    x0 = list(state["p"])
    r0 = tl.clone(v)
    tl.axpy_(r0, -1.0, _product(operator, x0, damping))
    better = tl.norm(r0) < tl.norm(v)  # False for a NaN
    x = [torch.where(better, a, torch.zeros_like(a)) for a in x0]
    r = [torch.where(better, a, b) for a, b in zip(r0, v)]
    return x, r, 1


def _next_state(warm_start: bool, p: TensorList) -> SolverState | None:
    """The state a warm-started solver hands on: its solution, detached."""
    return {"p": [t.detach() for t in p]} if warm_start else None


def _host_check(check_every: int, spent: int, budget: int) -> bool:
    """Whether to read convergence on the host after ``spent`` products (every ``check_every``,
    never after the last product of the ``budget``, never with ``check_every=0``)."""
    return bool(check_every) and spent % check_every == 0 and spent < budget


@dataclass(frozen=True)
class Neumann:
    """Truncated Neumann series: p = α Σ_{j=0..K} (I − αA)^j v with A = H + δI, K = ``terms``.

    A true approximation of A⁻¹v (the factor α included), converging as K → ∞ whenever
    0 < α < 2/λ_max(A) and A is positive definite. ``alpha="auto"`` spends ``power_iters``
    extra products on a power-iteration estimate of |λ|_max(A) and uses α = 1/|λ|_max.

    The series is Richardson's iteration p_{k+1} = p_k + α(v − A p_k) from p_0 = 0 (its first step,
    p_1 = αv, costs no product): with r_k = v − A p_k = (I − αA)^k v, p_{K+1} = α Σ_{j≤K} r_j.
    ``warm_start`` runs the same iteration from x₀ = the previous solve's solution (kept when its
    residual is below ‖v‖, see :func:`_warm_start`): r₀ = v − A x₀ costs one product more than the
    K terms, then p = x₀ + α Σ_{j=0..K} (I − αA)^j r₀ — from x₀ = 0 exactly the series above. With
    ``rtol`` > 0 (and ``check_every`` > 0) a start that already meets it returns after that product.

    Costs K products (K + 1 warm); memory is three tensor lists whatever K is (current term,
    running sum, HVP; four warm-started, with x₀).
    residual = ‖r_K‖/‖v‖ = ‖v − A p'‖/‖v‖ with p' the series one term shorter (free: r_K is the
    last term). With ``rtol`` > 0 the series stops early once that residual is ≤ ``rtol``, read on the
    host every ``check_every`` terms (at most ``check_every − 1`` terms beyond it; rtol = 0: never,
    always K products, no host read). ``iterations`` counts every product spent. ``diverged``
    when the residual exceeds 1 — the terms grew
    instead of shrinking, so α is too large or A is not positive definite — or p is not finite,
    or when the curvature seen by the series already rules out convergence: every product gives the
    lower bound ‖A t_j‖/‖t_j‖ ≤ |λ|_max(A) (A symmetric), and α·‖A t_j‖/‖t_j‖ ≥ 2 proves
    |1 − αλ| ≥ 1 for some eigenvalue λ, so the series cannot converge. The terms are a power
    iteration on I − αA, so the bound sharpens toward |λ|_max along the series: this flags
    α > 2/λ_max at small K, where the residual alone still looks fine. It costs two norms per
    term, kept on the device (no host sync).
    """

    terms: int = option(5, "series terms K (Hessian-vector products), an integer >= 0")
    alpha: float | str = option(0.1, "step α, a number > 0 below 2/λ_max(H + δI), or 'auto' (power iteration)")
    damping: float = option(0.0, "δ added to H, a number >= 0")
    power_iters: int = option(20, "power-iteration products for alpha='auto', an integer >= 1")
    rtol: float = option(0.0, "stop once ‖v − A p‖ <= rtol·‖v‖ (read every check_every terms); 0: never")
    check_every: int = option(4, "terms between host reads of rtol; 0: never")
    warm_start: bool = option(False, "start from the previous hyper step's solution (Richardson from x0)")

    def __post_init__(self) -> None:
        check(_count(self.terms, 0), "terms", "must be an integer >= 0", self.terms)
        check(self.alpha == "auto" or _number(self.alpha, 0, strict=True), "alpha",
              "must be > 0 or 'auto' (below 2/λ_max of the Hessian, e.g. 0.1)", self.alpha)
        check(_number(self.damping, 0), "damping", "must be >= 0 (0 for none, e.g. 1e-2)", self.damping)
        check(_count(self.power_iters, 1), "power_iters", "must be an integer >= 1", self.power_iters)
        check(_number(self.rtol, 0), "rtol", "must be >= 0 (0: no early exit)", self.rtol)
        check(_count(self.check_every, 0), "check_every", "must be an integer >= 0", self.check_every)
        check(isinstance(self.warm_start, bool), "warm_start", "must be true or false", self.warm_start)

    @classmethod
    def converged(cls, size: int, damping: float) -> "Neumann":
        return cls(terms=2000, alpha=1.0 / (5.0 + damping), damping=damping)

    def step_size(self, operator: LinearOperator, v: list[Tensor]) -> Scalar:
        """α, estimated from the curvature when ``alpha="auto"`` (a 0-dim tensor then)."""
        if self.alpha != "auto":
            return float(self.alpha)
        eigenvalue = top_eigenvalue(operator, v, iters=self.power_iters) + self.damping
        return 1.0 / eigenvalue.abs().clamp_min(torch.finfo(v[0].dtype).tiny)

    def solve(self, operator: LinearOperator, v: list[Tensor], state: SolverState | None = None) -> Solution:
        operator = as_operator(operator)
        alpha = self.step_size(operator, v)
        tiny = torch.finfo(v[0].dtype).tiny
        start, term, spent = _warm_start(operator, v, state if self.warm_start else None, self.damping)
        budget = spent + self.terms
        total = tl.clone(term)  # Σ_{i≤j} (I − αA)^i r₀, term = (I − αA)^j r₀
        v_norm = tl.norm(v)
        curvature = torch.zeros((), dtype=v[0].dtype, device=v[0].device)  # max_j ‖A t_j‖/‖t_j‖ ≤ |λ|_max
        done = bool(spent and self.rtol and self.check_every) and bool(tl.norm(term) <= self.rtol * v_norm)
        while spent < budget and not done:
            product = _product(operator, term, self.damping)
            spent += 1
            size = tl.norm(term)  # a term that underflowed (long series) says nothing about curvature
            ratio = torch.where(size > tiny**0.5, tl.norm(product) / size.clamp_min(tiny), 0.0)
            curvature = torch.maximum(curvature, ratio)
            tl.axpy_(term, -alpha, product)
            torch._foreach_add_(total, term)
            # the series without its last term already meets the tolerance: stop
            done = bool(self.rtol) and _host_check(self.check_every, spent, budget) \
                and bool(tl.norm(term) <= self.rtol * v_norm)
        torch._foreach_mul_(total, alpha)  # total is this solve's own list: p = α·total in place
        p = total
        if start is not None:
            torch._foreach_add_(p, start)
        residual = tl.norm(term) / v_norm.clamp_min(tiny)
        extra = self.power_iters if self.alpha == "auto" else 0
        iterations = _scalar(spent + extra, v[0], torch.int64)
        too_large_step = alpha * curvature >= 2  # provably |1 − αλ| ≥ 1 for some eigenvalue λ of A
        return Solution(p, iterations, residual, (residual > 1) | too_large_step | ~tl.all_finite(p),
                        _next_state(self.warm_start, p))


@dataclass(frozen=True)
class ConjugateGradient:
    """Conjugate gradient on (H + δI) p = v (Hestenes–Stiefel).

    x₀ = 0, r₀ = v, d₀ = r₀; per iteration: α_k = ‖r_k‖²/⟨d_k, A d_k⟩, p += α_k d_k, r −= α_k A d_k,
    β_k = ‖r_{k+1}‖²/‖r_k‖², d = r + β_k d. Exact in n iterations on an n-dimensional SPD system
    (up to rounding). Stops being updated once ‖r‖ ≤ max(rtol‖v‖, atol) or on non-positive
    curvature ⟨d, A d⟩ ≤ 0 (then p is the truncated-CG iterate and ``diverged`` is set).
    Convergence is tested on the device every iteration (an iteration after it is a no-op) and read
    on the host every ``check_every`` iterations: the loop stops there once converged, so a solve
    spends at most ``check_every − 1`` products beyond convergence and synchronises with the host
    once per ``check_every`` products (``check_every=0``: never; always ``max_iter`` products, a
    fixed cost). ``iterations`` counts every product spent. residual = ‖v − A p‖/‖v‖ from the
    recurrence.

    ``warm_start``: x₀ = the previous solve's solution (kept when ‖v − A x₀‖ < ‖v‖, see
    :func:`_warm_start`); r₀ = v − A x₀ costs one product on top of the ``max_iter`` iterations
    and is read on the host once unless ``check_every=0`` (a start that already converged returns
    after that one product).
    """

    max_iter: int = option(10, "iterations (Hessian-vector products), an integer >= 0")
    rtol: float = option(1e-5, "stop at ‖r‖ <= rtol·‖v‖, a number >= 0")
    atol: float = option(0.0, "or at ‖r‖ <= atol, a number >= 0")
    damping: float = option(0.0, "δ added to H, a number >= 0")
    check_every: int = option(4, "iterations between host reads of convergence (stop early); 0: never")
    warm_start: bool = option(False, "start from the previous hyper step's solution (x0)")

    def __post_init__(self) -> None:
        check(_count(self.max_iter, 0), "max_iter", "must be an integer >= 0", self.max_iter)
        check(_count(self.check_every, 0), "check_every", "must be an integer >= 0", self.check_every)
        check(_number(self.rtol, 0), "rtol", "must be >= 0", self.rtol)
        check(_number(self.atol, 0), "atol", "must be >= 0", self.atol)
        check(_number(self.damping, 0), "damping", "must be >= 0 (0 for none, e.g. 1e-2)", self.damping)
        check(isinstance(self.warm_start, bool), "warm_start", "must be true or false", self.warm_start)

    @classmethod
    def converged(cls, size: int, damping: float) -> "ConjugateGradient":
        return cls(max_iter=size, rtol=0.0, damping=damping)

    def solve(self, operator: LinearOperator, v: list[Tensor], state: SolverState | None = None) -> Solution:
        operator = as_operator(operator)
        x, r, spent = _warm_start(operator, v, state if self.warm_start else None, self.damping)
        x = tl.zeros_like(v) if x is None else x
        budget = spent + self.max_iter
        d = tl.clone(r)
        rr = tl.dot(r, r)
        tolerance = torch.clamp_min(self.rtol**2 * tl.dot(v, v), self.atol**2)
        breakdown = torch.zeros((), dtype=torch.bool, device=rr.device)
        done = spent > 0 and bool(self.check_every) and not bool(rr > tolerance)  # a warm start already converged
        while spent < budget and not done:
            ad = _product(operator, d, self.damping)
            spent += 1
            curvature = tl.dot(d, ad)
            active = (rr > tolerance) & ~breakdown
            breakdown = breakdown | (active & ~(curvature > 0))
            update = active & (curvature > 0)
            step = torch.where(update, rr / curvature, torch.zeros_like(rr))
            tl.axpy_(x, step, d)
            tl.axpy_(r, -step, ad)
            rr_next = tl.dot(r, r)
            beta = torch.where(update, rr_next / rr, torch.zeros_like(rr))
            d = torch._foreach_add(r, torch._foreach_mul(d, beta))
            rr = torch.where(update, rr_next, rr)
            # converged (or broke down): the remaining iterations would be no-ops
            done = _host_check(self.check_every, spent, budget) and not bool((rr > tolerance) & ~breakdown)
        residual = rr.sqrt() / tl.norm(v).clamp_min(torch.finfo(v[0].dtype).tiny)
        return Solution(x, _scalar(spent, v[0], torch.int64), residual, breakdown | ~tl.all_finite(x),
                        _next_state(self.warm_start, x))


@dataclass(frozen=True)
class Nystrom:
    """Nyström low-rank approximation + Woodbury (Hataya & Yamada, AISTATS 2023).

    Samples k = ``rank`` coordinates K without replacement and takes the k columns C = H[:, K]
    (k products with unit vectors, batched through ``operator.matmat``); with W = H[K, K],
    H ≈ H_k = C W⁻¹ Cᵀ. Then (ρI + H_k)⁻¹ v = (v − C (ρW + CᵀC)⁻¹ Cᵀ v) / ρ by the Woodbury
    identity: one k×k solve (pseudo-inverse of the symmetric matrix), no iteration.
    With k = n, H_k = H and the result is (ρI + H)⁻¹ v exactly. Memory: k vectors of size P;
    computed tensor by tensor (no (k, P) concatenation). Numerics: the final subtraction cancels
    about log10(‖H‖/ρ) digits, so keep ρ well above machine-epsilon·‖H‖ (ρ is also a damping:
    it biases the answer by ~ρ/λ_min). Columns are drawn from a generator seeded with ``seed``
    (deterministic across calls).

    ``refresh_every`` = R > 1 reuses the sketch (C and (ρW + CᵀC)⁻¹, kept in the solution's state)
    for R consecutive solves: the first costs k products, the next R − 1 none (only Cᵀv and the
    Woodbury correction), at the price of solving with the Hessian of the step that drew the sketch.
    """

    rank: int = option(10, "sampled columns k (batched products), an integer >= 1")
    rho: float = option(1e-2, "ρ, the damping of ρI + H_k, a number > 0 (Woodbury divides by it)")
    seed: int = option(0, "seed of the column sample, an integer >= 0")
    refresh_every: int = option(1, "solves (hyper steps) that share one sketch, an integer >= 1 (1: fresh every solve)")

    def __post_init__(self) -> None:
        check(_count(self.rank, 1), "rank", "must be an integer >= 1", self.rank)
        check(_number(self.rho, 0, strict=True), "rho", "must be > 0 (the Woodbury identity divides by it)", self.rho)
        check(_count(self.seed, 0), "seed", "must be an integer >= 0", self.seed)
        check(_count(self.refresh_every, 1), "refresh_every", "must be an integer >= 1", self.refresh_every)

    @classmethod
    def converged(cls, size: int, damping: float) -> "Nystrom | None":
        return cls(rank=size, rho=damping) if damping > 0 else None  # with k = n, H_k = H

    def solve(self, operator: LinearOperator, v: list[Tensor], state: SolverState | None = None) -> Solution:
        reuse = state is not None and int(state["age"]) < self.refresh_every
        sketch = state if reuse else self.sketch(as_operator(operator), v)
        rows, inverse = sketch["rows"], sketch["inverse"]
        projection = sum(row @ t.reshape(-1) for row, t in zip(rows, v))  # Cᵀv, (k,)
        finite = sketch["finite"] & torch.isfinite(projection).all()
        coefficients = inverse @ torch.where(finite, projection, 0.0)
        nan = _scalar(math.nan, v[0])
        p = [torch.where(finite, (t - (coefficients @ row).reshape(t.shape)) / self.rho, nan) for t, row in zip(v, rows)]
        spent = 0 if reuse else len(inverse)
        age = int(sketch["age"]) + 1
        next_state = {**sketch, "age": age} if age < self.refresh_every else None  # an expired sketch: none
        return Solution(p, _scalar(spent, v[0], torch.int64), nan, ~tl.all_finite(p), next_state)

    def sketch(self, operator: LinearOperator, v: list[Tensor]) -> SolverState:
        """A fresh sketch from k products: ``rows`` (C by tensor: rows[i] = H[K, tensor i], (k, P_i)),
        ``inverse`` = (ρW + CᵀC)⁻¹ (k, k), ``finite`` (0-dim bool: the products were finite) and
        ``age`` = 0 (solves served)."""
        sizes = [t.numel() for t in v]
        rank = min(self.rank, sum(sizes))
        # k distinct coordinates in O(k) (a seeded random.sample), not a permutation of all P: on the
        # 1.1M-weight MLP torch.randperm(P) took 16 ms per sketch, more than Nyström's own algebra
        index = torch.tensor(random.Random(self.seed).sample(range(sum(sizes)), rank), device=v[0].device)
        # Per tensor i: the sampled coordinates it holds (local offsets) and their sample numbers j.
        offsets = [0]
        for size in sizes:
            offsets.append(offsets[-1] + size)
        picked = [((index >= lo) & (index < hi)).nonzero().squeeze(1) for lo, hi in zip(offsets, offsets[1:])]
        units = []
        for t, lo, samples in zip(v, offsets, picked):
            unit = torch.zeros(rank, t.numel(), dtype=t.dtype, device=t.device)
            unit[samples, index[samples] - lo] = 1.0
            units.append(unit.reshape((rank, *t.shape)))
        rows = [c.detach().reshape(rank, -1) for c in operator.matmat(units)]  # rows[i] = H[K, tensor i]
        w = torch.zeros(rank, rank, dtype=v[0].dtype, device=v[0].device)  # W = H[K, K]
        for row, lo, samples in zip(rows, offsets, picked):
            w[:, samples] = row[:, index[samples] - lo]
        gram = self.rho * (w + w.T) / 2 + sum(row @ row.T for row in rows)  # ρW + CᵀC, (k, k)
        # A non-finite Hessian (NaN/inf HVPs) would make pinv's eigensolver raise: invert a harmless
        # stand-in instead (a device-side select, no host sync); the solve then returns a NaN p.
        finite = torch.isfinite(gram).all()
        gram = torch.where(finite, (gram + gram.T) / 2, torch.eye(rank, dtype=gram.dtype, device=gram.device))
        return {"rows": rows, "inverse": torch.linalg.pinv(gram, hermitian=True), "finite": finite, "age": 0}


@dataclass(frozen=True)
class Exact:
    """Dense solve: builds H (P products, batched ``chunk`` at a time) and solves (H + δI) p = v.

    For small problems, tests and diagnostics only: O(P²) memory. residual = ‖(H + δI)p − v‖/‖v‖,
    the true relative residual. ``diverged`` when it exceeds ``max_residual`` (a singular or
    numerically singular H + δI: the LU solve then returns huge p that does not solve the system;
    add damping), when the matrix is exactly singular (p is NaN then), or p is not finite.
    """

    damping: float = option(0.0, "δ added to H, a number >= 0")
    chunk: int = option(256, "unit vectors per batched product, an integer >= 1")
    max_residual: float = option(1e-2, "relative residual above which the solve counts as diverged, > 0")

    def __post_init__(self) -> None:
        check(_number(self.damping, 0), "damping", "must be >= 0 (0 for none, e.g. 1e-2)", self.damping)
        check(_count(self.chunk, 1), "chunk", "must be an integer >= 1", self.chunk)
        check(_number(self.max_residual, 0, strict=True), "max_residual", "must be > 0", self.max_residual)

    @classmethod
    def converged(cls, size: int, damping: float) -> "Exact":
        return cls(damping=damping)

    def solve(self, operator: LinearOperator, v: list[Tensor]) -> Solution:
        operator = as_operator(operator)
        matrix = dense_matrix(operator, v, chunk=self.chunk)
        matrix = matrix + self.damping * torch.eye(matrix.shape[0], dtype=matrix.dtype, device=matrix.device)
        flat_v = tl.flatten(v)
        flat_p, info = torch.linalg.solve_ex(matrix, flat_v)
        flat_p = torch.where(info == 0, flat_p, math.nan)  # info > 0: an exactly zero pivot
        residual = torch.linalg.vector_norm(matrix @ flat_p - flat_v) / torch.linalg.vector_norm(flat_v).clamp_min(
            torch.finfo(flat_v.dtype).tiny
        )
        p = tl.unflatten(flat_p, v)
        iterations = _scalar(matrix.shape[0], v[0], torch.int64)
        return Solution(p, iterations, residual, ~(residual <= self.max_residual) | ~tl.all_finite(p))


def dense_matrix(operator: LinearOperator, like: list[Tensor], chunk: int = 256) -> Tensor:
    """The operator as a dense (P, P) matrix, from P products with unit vectors (symmetrised)."""
    total = sum(t.numel() for t in like)
    blocks = []
    for start in range(0, total, chunk):
        stop = min(start + chunk, total)
        units = torch.zeros(stop - start, total, dtype=like[0].dtype, device=like[0].device)
        units[torch.arange(stop - start), torch.arange(start, stop)] = 1.0
        blocks.append(tl.flatten(operator.matmat(tl.unflatten(units, like)), batch=True))
    matrix = torch.cat(blocks)
    return (matrix + matrix.T) / 2
