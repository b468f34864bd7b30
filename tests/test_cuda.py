"""The device checks of issue 12, one function per check, parametrised over devices.

Each test runs on the CPU everywhere (so its logic is exercised in CI) and again on CUDA, where the
CUDA variant carries the ``cuda`` marker (``pytest -m cuda`` selects only those) and is skipped, with
the reason, when torch sees no GPU. ``bench/gpu.sh`` runs them on a GPU machine.

  * every solver against ``torch.linalg.solve`` in float64, on a quadratic whose Hessian is a known
    SPD matrix, through :class:`HessianOperator` (autograd on the device), with α ≠ 1 and damping;
  * ``HessianOperator.matmat`` batched (vmap) against looped and against ``torch.func.hessian``, and
    the ``"auto"`` choice between them per device;
  * the full hypergradient on CUDA equals the CPU one (float64, relative error ≤ 1e-10);
  * a seeded ``BilevelTrainer`` run gives finite metrics that match the CPU run, and its checkpoint
    restores on the CPU (``map_location``) and continues there as it would on the device;
  * host synchronisations in solver loops: the count for a whole hypergradient does not grow with
    the number of solver iterations (zero per iteration); counted from torch's dispatcher (reads of
    a tensor's value on the host: ``item``/``bool``/``float``, ``tolist``, ``nonzero``) on every
    device and, on CUDA, also from ``torch.cuda.set_sync_debug_mode("warn")``;
  * ``device: auto`` and ``resources: {gpu: auto}`` pick the GPU exactly when there is one.
"""
from __future__ import annotations

import math
import warnings
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

from hybrid_hpo import ConjugateGradient, Exact, Identity, Neumann, Nystrom, hypergradient
from hybrid_hpo.bilevel import BilevelTrainer, resolve_device
from hybrid_hpo.config import RunConfig
from hybrid_hpo.implicit import CallableOperator, HessianOperator, dense_matrix, operators
from hybrid_hpo.implicit.tensor_list import flatten, unflatten

HAS_CUDA = torch.cuda.is_available()
NO_CUDA = "no CUDA device visible to torch (torch.cuda.is_available() is False); run bench/gpu.sh on a GPU machine"
CUDA = pytest.param("cuda", marks=[pytest.mark.cuda, pytest.mark.skipif(not HAS_CUDA, reason=NO_CUDA)], id="cuda")
DEVICES = [pytest.param("cpu", id="cpu"), CUDA]
DTYPE = torch.float64


# ------------------------------------------------------------------ solvers against linalg.solve

SHAPES = [(3, 2), (5,), (1, 1, 1)]  # n = 12 over tensors of several ranks
N = 12


def quadratic(device: str) -> tuple[torch.Tensor, HessianOperator, list[torch.Tensor]]:
    """A = Q diag(0.5..5) Qᵀ on ``device``; f(w) = ½ wᵀAw over weights shaped SHAPES, so ∇²f = A and
    the operator's products run through autograd on the device. Returns (A, operator, v)."""
    generator = torch.Generator().manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(N, N, generator=generator, dtype=DTYPE))
    matrix = (q @ torch.diag(torch.linspace(0.5, 5.0, N, dtype=DTYPE)) @ q.T).to(device)
    v = [torch.randn(s, generator=generator, dtype=DTYPE).to(device) for s in SHAPES]
    weights = [torch.randn(s, generator=generator, dtype=DTYPE).to(device).requires_grad_(True) for s in SHAPES]
    flat = flatten(weights)
    grads = torch.autograd.grad(0.5 * flat @ matrix @ flat, weights, create_graph=True)
    return matrix, HessianOperator(grads, weights), v


SOLVERS = {  # solver -> (damping δ of the system it solves, relative tolerance against linalg.solve)
    "exact": (Exact(), 0.0, 1e-12),
    "exact-damped": (Exact(damping=0.7), 0.7, 1e-12),
    "cg": (ConjugateGradient(max_iter=N, rtol=0.0), 0.0, 1e-10),
    "cg-damped": (ConjugateGradient(max_iter=N, rtol=0.0, damping=0.7), 0.7, 1e-10),
    "neumann": (Neumann(terms=800, alpha=0.3), 0.0, 1e-8),  # α < 2/λ_max = 0.4
    "neumann-damped": (Neumann(terms=800, alpha=1.0 / 6.0, damping=0.5), 0.5, 1e-8),
    "neumann-auto": (Neumann(terms=400, alpha="auto"), 0.0, 1e-8),
    "nystrom-full-rank": (Nystrom(rank=N, rho=0.5), 0.5, 1e-9),  # exact for (A + ρI) at rank n
}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", list(SOLVERS))
def test_solver_matches_linalg_solve_on_device(device, name):
    solver, damping, tolerance = SOLVERS[name]
    matrix, operator, v = quadratic(device)
    expected = torch.linalg.solve(matrix + damping * torch.eye(N, dtype=DTYPE, device=device), flatten(v))
    solution = solver.solve(operator, v)
    assert all(t.device.type == device and t.dtype == DTYPE for t in solution.p)
    error = torch.linalg.vector_norm(flatten(solution.p) - expected) / torch.linalg.vector_norm(expected)
    assert float(error) < tolerance
    assert not bool(solution.diverged)


@pytest.mark.parametrize("device", DEVICES)
def test_identity_returns_v_and_a_too_large_alpha_is_reported_on_device(device):
    _, operator, v = quadratic(device)
    assert all(torch.equal(p, t) for p, t in zip(Identity().solve(operator, v).p, v))
    assert bool(Neumann(terms=30, alpha=0.5).solve(operator, v).diverged)  # α > 2/λ_max


# ----------------------------------------------------------------------- HessianOperator.matmat

def tiny_problem(device: str, dtype: torch.dtype = DTYPE):
    """MLP 5-6-3 (tanh), one softplus decay per weight, 20 training and 10 validation points."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(5, 6), torch.nn.Tanh(), torch.nn.Linear(6, 3)).to(device, dtype)
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(30, 5, generator=generator, dtype=dtype).to(device)
    y = torch.randint(0, 3, (30,), generator=generator).to(device)
    params = {k: p.detach() for k, p in model.named_parameters()}
    hparams = {k: torch.full_like(p, -2.0) for k, p in params.items()}

    def train_loss(p, h):
        penalty = sum((F.softplus(h[k]) * p[k].pow(2)).sum() for k in p)
        return F.cross_entropy(torch.func.functional_call(model, p, (x[:20],)), y[:20]) + 0.5 * penalty

    def val_loss(p, h):
        return F.cross_entropy(torch.func.functional_call(model, p, (x[20:],)), y[20:])

    return train_loss, val_loss, params, hparams


def hessian_operator(device: str, batch_max_numel="auto"):
    train_loss, _, params, hparams = tiny_problem(device)
    weights = [p.clone().requires_grad_(True) for p in params.values()]
    grads = torch.autograd.grad(train_loss(dict(zip(params, weights)), hparams), weights, create_graph=True)
    return HessianOperator(grads, weights, batch_max_numel=batch_max_numel), weights, (train_loss, params, hparams)


@pytest.mark.parametrize("device", DEVICES)
def test_matmat_batched_equals_looped_and_torch_func_hessian(device, monkeypatch):
    batched, weights, (train_loss, params, hparams) = hessian_operator(device, batch_max_numel=None)
    looped, _, _ = hessian_operator(device, batch_max_numel=0)

    def flat_loss(flat):
        return train_loss(dict(zip(params, unflatten(flat, weights))), hparams)

    expected = torch.func.hessian(flat_loss)(flatten(list(params.values())))  # (P, P) on the device
    generator = torch.Generator().manual_seed(2)
    vs = [torch.randn(4, *w.shape, generator=generator, dtype=DTYPE).to(device) for w in weights]
    from_loop = looped.matmat(vs)

    def no_fallback(*_):
        raise AssertionError("the batched product fell back to a loop")

    monkeypatch.setattr(operators, "_stack_columns", no_fallback)  # the vmap path itself must run
    from_vmap = batched.matmat(vs)
    reference = flatten(vs, batch=True) @ expected.T  # row j = H v_j
    for products in (from_vmap, from_loop):
        assert all(p.shape == (4, *w.shape) and p.device.type == device for p, w in zip(products, weights))
        assert torch.allclose(flatten(products, batch=True), reference, rtol=1e-11, atol=1e-13)
    assert torch.allclose(dense_matrix(batched, weights), expected, atol=1e-12)


@pytest.mark.parametrize("device", DEVICES)
def test_auto_batching_follows_the_device_threshold(device, monkeypatch):
    """57 weights: above a threshold of 10 the CPU loops; CUDA follows CUDA_BATCH_MAX_NUMEL."""
    monkeypatch.setattr(operators, "CPU_BATCH_MAX_NUMEL", 10)
    monkeypatch.setattr(operators, "CUDA_BATCH_MAX_NUMEL", 10)
    assert hessian_operator(device)[0]._batched is False
    monkeypatch.setattr(operators, "CPU_BATCH_MAX_NUMEL", 100)
    monkeypatch.setattr(operators, "CUDA_BATCH_MAX_NUMEL", None)
    assert hessian_operator(device)[0]._batched is True


# --------------------------------------------------------------------- hypergradient CUDA == CPU

HYPER_SOLVERS = {  # alpha="auto" is left out: its power iteration starts from a vector drawn on the device
    "identity": Identity(),  # (no host copy, no sync), so CPU and CUDA start, and end, elsewhere
    "neumann": Neumann(terms=5, alpha=0.3),
    "neumann-damped": Neumann(terms=5, alpha=0.2, damping=0.1),
    "cg": ConjugateGradient(max_iter=10, rtol=0.0, damping=0.1),
    "nystrom": Nystrom(rank=8, rho=0.1),
    "exact": Exact(damping=0.1),
}


@pytest.mark.cuda
@pytest.mark.skipif(not HAS_CUDA, reason=NO_CUDA)
@pytest.mark.parametrize("name", list(HYPER_SOLVERS))
def test_hypergradient_on_cuda_equals_cpu(name):
    solver = HYPER_SOLVERS[name]
    on_cpu, cpu_info = hypergradient(*tiny_problem("cpu"), solver=solver, return_info=True)
    on_cuda, cuda_info = hypergradient(*tiny_problem("cuda"), solver=solver, return_info=True)
    assert all(g.device.type == "cuda" for g in on_cuda.values())
    cpu_flat, cuda_flat = flatten(list(on_cpu.values())), flatten(list(on_cuda.values())).cpu()
    assert float(cpu_flat.norm()) > 1e-6
    assert float((cuda_flat - cpu_flat).norm() / cpu_flat.norm()) <= 1e-10
    assert cuda_info.iterations == cpu_info.iterations and cuda_info.diverged == cpu_info.diverged
    assert cuda_info.finite and cpu_info.finite


# ------------------------------------------------------------ BilevelTrainer and its checkpoint

# seed 6: no diverged (rejected) hyper step in either epoch on this split (with the default selection
# split, seed 5 has one; a rejected step is tested elsewhere)
RUN = dict(dataset="digits", model="mlp", hidden=[32], batch_size=64, inner_steps=3, epochs=2, seed=6, **{"solver.terms": 3})
METRICS = ("train_loss", "val_loss", "sel_loss", "test_loss", "train_acc", "val_acc", "sel_acc", "test_acc",
           "hypergrad_norm")


def trainer_on(device: str) -> BilevelTrainer:
    return BilevelTrainer(RunConfig.from_mapping({**RUN, "device": device}))


def assert_metrics_close(got: dict, expected: dict, exact: bool) -> None:
    for key in METRICS:
        if exact:
            assert got[key] == expected[key], key
        else:  # float32 on another device: rounding differs, the run must not
            tolerance = 0.02 if key.endswith("acc") else 1e-3 * max(1.0, abs(expected[key]))
            assert abs(got[key] - expected[key]) <= tolerance, (key, got[key], expected[key])


@pytest.mark.parametrize("device", DEVICES)
def test_seeded_trainer_on_device_matches_cpu_and_its_checkpoint_restores_on_cpu(device, tmp_path):
    on_device = trainer_on(device)
    first = on_device.train_epoch()
    assert on_device.device.type == device
    assert all(math.isfinite(first[k]) for k in METRICS)
    assert first["hyper_steps"] > 0 and first["rejected_hyper_steps"] == 0
    reference = trainer_on("cpu")
    assert_metrics_close(first, reference.train_epoch(), exact=device == "cpu")

    torch.save(on_device.state_dict(), tmp_path / "trainer.pt")
    state = torch.load(tmp_path / "trainer.pt", map_location="cpu", weights_only=True)
    restored = trainer_on("cpu")
    restored.load_state_dict(state)
    for (name, saved), mine in zip(on_device.model.named_parameters(), restored.model.parameters()):
        assert mine.device.type == "cpu" and torch.equal(mine.detach(), saved.detach().cpu()), name
    for name, value in on_device.family.hparams().items():
        assert torch.equal(restored.family.hparams()[name].detach(), value.detach().cpu()), name
    restored.model.eval()
    with torch.no_grad():
        val_loss = float(F.cross_entropy(restored.model(restored.data.val.x), restored.data.val.y))
    assert val_loss == pytest.approx(first["val_loss"], rel=1e-5)

    continued_here, continued_on_cpu = on_device.train_epoch(), restored.train_epoch()
    assert continued_on_cpu["epoch"] == continued_here["epoch"] == 2
    assert_metrics_close(continued_on_cpu, continued_here, exact=device == "cpu")


# ------------------------------------------------------------------- host syncs in solver loops

_HOST_READ_OPS = {"_local_scalar_dense", "nonzero"}  # item()/bool()/float()/int(), data-dependent shapes
_HOST_READ_METHODS = {torch.Tensor.tolist, torch.Tensor.numpy}  # bypass the dispatcher's value reads


class _CountHostReads(TorchDispatchMode):
    def __init__(self, counter: Counter) -> None:
        super().__init__()
        self.counter = counter

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if name in _HOST_READ_OPS:
            self.counter[name] += 1
        elif name in ("_to_copy", "copy_") and _copies_to_host(func, args, kwargs or {}):
            self.counter["copy to host"] += 1
        return func(*args, **(kwargs or {}))


def _copies_to_host(func, args, kwargs) -> bool:
    """A copy from another device into CPU memory (a device-to-host transfer)."""
    if func.overloadpacket.__name__ == "copy_":
        destination, source = args[0], args[1]
        return destination.device.type == "cpu" and source.device.type != "cpu"
    target = kwargs.get("device")
    return target is not None and torch.device(target).type == "cpu" and args[0].device.type != "cpu"


class _CountHostMethods(TorchFunctionMode):
    def __init__(self, counter: Counter) -> None:
        super().__init__()
        self.counter = counter

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in _HOST_READ_METHODS:
            self.counter[func.__name__] += 1
        return func(*args, **(kwargs or {}))


@contextmanager
def count_host_syncs(device: str) -> Iterator[Counter]:
    """Count what makes the host wait for the device inside the ``with``: reads of tensor values on
    the host (every device) and, on CUDA, every synchronising operation torch's sync debug mode
    reports ("cuda sync"; it also sees host-to-device copies from pageable memory)."""
    counter: Counter = Counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.set_sync_debug_mode("warn")
        try:
            with _CountHostMethods(counter), _CountHostReads(counter):
                yield counter
        finally:
            if device == "cuda":
                torch.cuda.set_sync_debug_mode("default")
    counter["cuda sync"] = sum("synchronizing" in str(w.message) for w in caught)


def syncs_per_hypergradient(device: str, solver) -> Counter:
    problem = tiny_problem(device, dtype=torch.float32)
    hypergradient(*problem, solver=solver, return_info=True)  # warm up lazy initialisation
    with count_host_syncs(device) as counter:
        hypergradient(*problem, solver=solver, return_info=True)
    return counter


LOOPS = {  # solver at two iteration counts: the syncs of the whole hypergradient must not differ
    "neumann": (Neumann(terms=2, alpha=0.3), Neumann(terms=12, alpha=0.3)),
    "neumann-damped": (Neumann(terms=2, alpha=0.3, damping=0.1), Neumann(terms=12, alpha=0.3, damping=0.1)),
    "neumann-auto": (Neumann(terms=2, alpha="auto", power_iters=2), Neumann(terms=12, alpha="auto", power_iters=12)),
    "cg": (ConjugateGradient(max_iter=2, rtol=1e-3, check_every=0), ConjugateGradient(max_iter=12, rtol=1e-3, check_every=0)),
}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", list(LOOPS))
def test_solver_loops_do_not_synchronise_per_iteration(device, name):
    few, many = (syncs_per_hypergradient(device, solver) for solver in LOOPS[name])
    assert few == many, (few, many)
    assert few["tolist"] == 1  # the one read of HypergradientInfo
    assert few["_local_scalar_dense"] == few["nonzero"] == 0, few
    assert few["cuda sync"] <= 3, few  # CUDA: that read and the copy of Neumann's iteration count


@pytest.mark.parametrize("device", DEVICES)
def test_cg_reads_convergence_on_the_host_once_per_check_interval(device):
    """CG's early exit reads one boolean every ``check_every`` products (never after the last): on an
    SPD system with 40 distinct eigenvalues and rtol 0 it cannot stop early, so 12 products = 2 reads."""
    generator = torch.Generator().manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(40, 40, generator=generator, dtype=torch.float64))
    matrix = (q @ torch.diag(torch.linspace(1.0, 100.0, 40, dtype=torch.float64)) @ q.T).to(device)
    v = [torch.randn(40, generator=generator, dtype=torch.float64).to(device)]
    spd = CallableOperator(lambda d: [matrix @ d[0]])
    for max_iter, reads in ((4, 0), (12, 2)):
        with count_host_syncs(device) as counter:
            solution = ConjugateGradient(max_iter=max_iter, rtol=0.0, check_every=4).solve(spd, v)
        assert counter["_local_scalar_dense"] == reads and int(solution.iterations) == max_iter


class _SyncingOperator:
    """A Hessian operator that reads a norm on the host at every product (what the rule forbids)."""

    def __init__(self, inner: HessianOperator) -> None:
        self.inner = inner

    def matvec(self, v):
        float(torch.stack([t.norm() for t in v]).sum())
        return self.inner.matvec(v)

    def matmat(self, vs):
        return self.inner.matmat(vs)


@pytest.mark.parametrize("device", DEVICES)
def test_the_sync_counter_sees_a_sync_per_iteration(device):
    """The counter is not blind: an operator that syncs at every product adds one sync per iteration."""
    operator, weights, _ = hessian_operator(device)
    v = [torch.ones_like(w) for w in weights]
    counts = []
    for terms in (2, 12):
        with count_host_syncs(device) as counter:
            Neumann(terms=terms, alpha=0.3).solve(_SyncingOperator(operator), v)
        counts.append(counter)
    assert counts[1]["_local_scalar_dense"] - counts[0]["_local_scalar_dense"] == 10
    if device == "cuda":
        assert counts[1]["cuda sync"] - counts[0]["cuda sync"] >= 10


# ----------------------------------------------------------------- device: auto, resources: auto

def test_device_auto_picks_cuda_exactly_when_torch_sees_a_gpu():
    from hybrid_hpo.tune.trainable import trial_device

    expected = "cuda" if HAS_CUDA else "cpu"
    assert resolve_device("auto").type == expected
    assert trial_device("auto") == expected  # outside Ray: torch decides
    assert trial_device("cpu") == "cpu"


@pytest.mark.parametrize("gpus", [pytest.param(0.0, id="no-gpu"), pytest.param(0.5, marks=CUDA.marks, id="half-gpu")])
def test_trial_device_auto_follows_the_gpus_ray_gave_the_trial(ray_session, gpus):
    """Inside a Ray task, "auto" means the GPU only when the task holds (a fraction of) one; gpu auto in
    the sweep resources means 1 exactly when the cluster has a GPU."""
    from hybrid_hpo.tune.spec import validate_spec
    from hybrid_hpo.tune.plan import trial_resources
    from hybrid_hpo.tune.trainable import trial_device

    @ray_session.remote(num_gpus=gpus, num_cpus=0)
    def device_in_task() -> str:
        return trial_device("auto")

    assert ray_session.get(device_in_task.remote(), timeout=120) == ("cuda" if gpus else "cpu")
    spec = validate_spec({"search": {"inner_lr": {"type": "loguniform", "low": 0.01, "high": 0.1}},
                          "resources": {"cpu": 1, "gpu": "auto"}})
    cluster_has_gpu = ray_session.cluster_resources().get("GPU", 0) >= 1
    assert cluster_has_gpu == HAS_CUDA
    assert trial_resources(spec) == {"cpu": 1, "gpu": 1.0 if HAS_CUDA else 0.0}
