"""Shared pieces of the benchmarks: machine header, interleaved timing, peak memory, problems.

Import this module BEFORE torch: it sets ``OMP_WAIT_POLICY=PASSIVE`` (unless already set), because
on a machine whose cores are shared with other processes OpenMP's default spin-waiting made one
gradient of the 1.1M MLP ~10x slower with 2 threads (measured: 450-700 ms versus 45-55 ms).

Problems (all with one weight decay per weight, decay = softplus(λ)):
    L_T(w, λ) = CE(f_w(x_train), y_train) + ½ Σ softplus(λ) ⊙ w²,     L_V(w, λ) = CE(f_w(x_val), y_val)
  * ``mlp``    64-1024-1024-10 tanh on sklearn digits (the engine benchmark's 1.1M-weight MLP);
  * ``mlp-small`` 64-32-10 tanh (2,410 weights: small enough for the exact Hessian);
  * ``cnn``    hybrid_hpo.models' small CNN (21k weights) on digits 1x8x8;
  * ``logreg`` logistic regression on digits (650 weights; the exact Hessian is cheap);
  * ``resnet18`` hybrid_hpo.models' ResNet-18 (CIFAR stem, 11.2M weights, BatchNorm in train mode)
    on CIFAR-shaped synthetic batches (3x32x32 Gaussian images, 10 random labels);
  * ``mlp-cifar`` an MLP 3072-``hidden``-10 (tanh) on the same synthetic batches (width decides size).
The weights are first trained ``pretrain`` full-batch Adam steps on L_T, so that they sit near
w*(λ) where the implicit function theorem applies. Models are built directly on ``device``.
"""
from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import ctypes  # noqa: E402
import gc  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from dataclasses import dataclass  # noqa: E402

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

_LIBC = ctypes.CDLL("libc.so.6")
RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
_clock: Callable[[], float] = time.perf_counter  # what interleaved() reads; header() sets it from --clock


def add_common_args(parser, threads: int = 1) -> None:
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    parser.add_argument("--threads", type=int, default=threads, help=f"torch CPU threads (default {threads})")
    parser.add_argument("--repeats", type=int, default=5, help="interleaved timing repeats")
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                        help="what a timing measures: wall time (default) or this process's CPU time "
                             "(time.process_time; CPU device only), which other processes on shared cores "
                             "inflate far less than wall time")


def header(args, title: str) -> torch.device:
    """Set threads, print the machine line and the load average; return the device."""
    global _clock
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is visible to torch on this machine")
    clock = getattr(args, "clock", "wall")
    if clock == "cpu" and device.type != "cpu":
        raise SystemExit("--clock cpu: CPU time measures only work on --device cpu; use --clock wall")
    _clock = time.process_time if clock == "cpu" else time.perf_counter
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine()
    print(f"# {title}")
    print(f"# machine: {platform.node()} {name}, {os.cpu_count()} cores, torch {torch.__version__}, "
          f"device={device}, threads={torch.get_num_threads()}, OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}, "
          f"clock={clock}")
    print(f"# load average at start: {fmt_load()}")
    return device


def footer() -> None:
    print(f"# load average at end: {fmt_load()}")


def fmt_load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def interleaved(contenders: dict[str, Callable[[], object]], repeats: int, device: torch.device,
                warmup: int = 1) -> dict[str, list[float]]:
    """Times of each contender (wall or CPU, per ``--clock``), run A, B, C, A, B, C, ... so load
    drifts hit all alike."""
    for _ in range(warmup):
        for fn in contenders.values():
            fn()
            sync(device)
    times: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(repeats):
        for name, fn in contenders.items():
            sync(device)
            start = _clock()
            fn()
            sync(device)
            times[name].append(_clock() - start)
    return times


@dataclass(frozen=True)
class Ratio:
    median: float
    low: float
    high: float

    def __str__(self) -> str:
        return f"{self.median:.2f} [{self.low:.2f}-{self.high:.2f}]"


def ratio(a: list[float], b: list[float]) -> Ratio:
    """Median (and range) of the per-repeat ratios a_i / b_i."""
    rs = [x / y for x, y in zip(a, b)]
    return Ratio(statistics.median(rs), min(rs), max(rs))


def median_ms(ts: list[float]) -> float:
    return statistics.median(ts) * 1e3


class PeakMemory:
    """Peak memory (MiB) above the level at entry, of the code inside the ``with``.

    CPU: returns freed heap to the kernel (``malloc_trim``), resets the resident-set high-water mark
    (``/proc/self/clear_refs`` = 5) and reads VmHWM − VmRSS(entry): memory the code touched, whether
    torch's or a peer's. Allocations served from memory the process already held before the
    ``with`` (and not trimmable) are not counted, so in a long process this can under-report. CUDA: torch.cuda max_memory_allocated − memory_allocated(entry).
    """

    def __init__(self, device: torch.device):
        self.device = device
        self.mib = float("nan")

    def __enter__(self) -> "PeakMemory":
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base = torch.cuda.memory_allocated(self.device)
        else:
            gc.collect()
            _LIBC.malloc_trim(0)  # hand freed heap back to the kernel, so reuse cannot hide the peak
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            self._base = _status_kib("VmRSS") * 1024
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            peak = torch.cuda.max_memory_allocated(self.device)
        else:
            peak = _status_kib("VmHWM") * 1024
        self.mib = (peak - self._base) / 2**20


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def peak_mib(fn: Callable[[], object], device: torch.device) -> float:
    with PeakMemory(device) as m:
        fn()
    return m.mib


# ------------------------------------------------------------------------------------------ problems

@dataclass
class Problem:
    name: str
    model: torch.nn.Module
    train_loss: Callable
    val_loss: Callable
    params: dict[str, torch.Tensor]
    hparams: dict[str, torch.Tensor]
    x: torch.Tensor
    y: torch.Tensor
    xv: torch.Tensor
    yv: torch.Tensor

    @property
    def num_weights(self) -> int:
        return sum(p.numel() for p in self.params.values())


def build_problem(name: str, device: torch.device, *, batch: int = 256, pretrain: int = 100,
                  init_decay: float = 1e-2, lr: float = 3e-3, dtype: torch.dtype = torch.float32, seed: int = 0,
                  hidden: tuple[int, ...] = (1024, 1024)) -> Problem:
    """One of ``mlp``, ``mlp-small``, ``cnn``, ``logreg`` (digits), ``resnet18``, ``mlp-cifar``
    (CIFAR-shaped synthetic batches); see the module docstring."""
    from hybrid_hpo.models import build_model

    torch.manual_seed(seed)
    cifar = name in ("resnet18", "mlp-cifar")
    input_shape = (3, 32, 32) if cifar else (1, 8, 8)
    with torch.device(device):
        if name in ("mlp", "mlp-small", "mlp-cifar"):
            hidden = (32,) if name == "mlp-small" else hidden
            model = build_model("mlp", input_shape=input_shape, num_classes=10, hidden=hidden, activation="tanh")
        elif name in ("cnn", "logreg"):
            model = build_model(name, input_shape=input_shape, num_classes=10, activation="tanh")
        elif name == "resnet18":
            model = build_model(name, input_shape=input_shape, num_classes=10)
        else:
            raise SystemExit(f"problem: unknown {name!r}; choose mlp, mlp-small, cnn, logreg, resnet18 or mlp-cifar")
    model = model.to(dtype=dtype)
    x, y, xv, yv = (_synthetic_batches if cifar else _digits_batches)(batch, seed)
    x, y, xv, yv = x.to(device, dtype), y.to(device), xv.to(device, dtype), yv.to(device)
    lam0 = float(torch.log(torch.expm1(torch.tensor(init_decay, dtype=torch.float64))))  # softplus⁻¹

    def train_loss(p, h):
        logits = torch.func.functional_call(model, p, (x,))
        penalty = sum((F.softplus(h[k]) * p[k].pow(2)).sum() for k in p)
        return F.cross_entropy(logits, y) + 0.5 * penalty

    def val_loss(p, h):
        return F.cross_entropy(torch.func.functional_call(model, p, (xv,)), yv)

    hparams = {k: torch.full_like(p, lam0) for k, p in model.named_parameters()}
    weights = {k: p.detach().clone().requires_grad_(True) for k, p in model.named_parameters()}
    optimizer = torch.optim.Adam(weights.values(), lr=lr)
    for _ in range(pretrain):
        optimizer.zero_grad()
        train_loss(weights, hparams).backward()
        optimizer.step()
    params = {k: w.detach() for k, w in weights.items()}
    with torch.no_grad():
        for k, p in model.named_parameters():
            p.copy_(params[k])
    return Problem(name, model, train_loss, val_loss, params, hparams, x, y, xv, yv)


def _digits_batches(batch: int, seed: int) -> tuple[torch.Tensor, ...]:
    """(x, y, x_val, y_val): the first ``batch`` examples of digits' train and validation splits."""
    from hybrid_hpo.data import load_dataset

    data = load_dataset("digits", val_fraction=0.3, seed=seed)
    return data.train.x[:batch], data.train.y[:batch], data.val.x[:batch], data.val.y[:batch]


def _synthetic_batches(batch: int, seed: int) -> tuple[torch.Tensor, ...]:
    """(x, y, x_val, y_val): CIFAR-shaped Gaussian images (batch, 3, 32, 32), labels uniform in 0..9."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(2 * batch, 3, 32, 32, generator=generator)
    labels = torch.randint(0, 10, (2 * batch,), generator=generator)
    return images[:batch], labels[:batch], images[batch:], labels[batch:]


def flat(grads) -> torch.Tensor:
    values = grads.values() if isinstance(grads, dict) else grads
    return torch.cat([g.reshape(-1) for g in values]).double()


def cosine(a, b) -> float:
    a, b = flat(a), flat(b)
    return float(a @ b / (a.norm() * b.norm()).clamp_min(1e-300))


def neumann_alpha(problem: Problem, iters: int = 30) -> float:
    """α = 1/λ_max(H) from power iteration (so the Neumann series converges)."""
    from hybrid_hpo.implicit import HessianOperator, top_eigenvalue

    w = [t.detach().requires_grad_(True) for t in problem.params.values()]
    with torch.enable_grad():
        grads = torch.autograd.grad(problem.train_loss(dict(zip(problem.params, w)), problem.hparams), w, create_graph=True)
        top = top_eigenvalue(HessianOperator(grads, w), w, iters=iters)
    return float(1.0 / top.abs())


def reference_hypergradient(problem: Problem, max_iter: int = 300) -> tuple[dict, str]:
    """Exact (dense Hessian) when P ≤ 5000, else CG run to convergence; returns (grad, description)."""
    from hybrid_hpo import ConjugateGradient, Exact, hypergradient

    if problem.num_weights <= 5000:
        g, info = hypergradient(problem.train_loss, problem.val_loss, problem.params, problem.hparams,
                                solver=Exact(), return_info=True)
        return g, f"exact (dense Hessian, residual {info.residual:.1e})"
    g, info = hypergradient(problem.train_loss, problem.val_loss, problem.params, problem.hparams,
                            solver=ConjugateGradient(max_iter=max_iter, rtol=1e-6), return_info=True)
    if info.diverged:
        return g, (f"CG stopped at non-positive curvature after {info.iterations} iterations (H is indefinite at "
                   f"these weights, so no Krylov solver converges; relative residual {info.residual:.2g}): "
                   "cosines to it are indicative only")
    return g, f"converged CG ({info.iterations} iterations, relative residual {info.residual:.1e})"


def save_plot(fig, filename: str) -> str:
    os.makedirs(RESULTS, exist_ok=True)
    path = os.path.join(RESULTS, filename)
    fig.savefig(path, dpi=90, bbox_inches="tight")
    return path
