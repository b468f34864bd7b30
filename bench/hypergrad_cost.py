"""Cost of one hypergradient against its lean floor, measured in one run.

Problem: the 1.1M-weight MLP 64-1024-1024-10 (tanh) on a batch of 256, one weight decay per
weight (λ shaped like every weight tensor, decay = softplus(λ)):
    L_T = CE(train batch) + ½ Σ softplus(λ) ⊙ w²,   L_V = CE(validation batch).

Prints, from this one run:
  * the time of one training gradient and of one Hessian-vector product (graph reused);
  * the hypergradient time of every solver for K = 1, 5, 20 (K = terms / CG iterations /
    Nyström rank), and its ratio to the lean floor: the same autograd calls written out by hand
    (graph built once, K HVPs, one validation gradient, one mixed VJP) with no solver arithmetic;
  * peak resident memory of Neumann and CG at K = 10 and K = 100, each in a fresh process.

    python bench/hypergrad_cost.py [--repeats 5] [--threads 2] [--device cpu|cuda]
"""
from __future__ import annotations

import argparse
import resource
import statistics
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

from hybrid_hpo import ConjugateGradient, Identity, Neumann, Nystrom, hypergradient


def make_problem(device: torch.device, batch: int = 256, seed: int = 0):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(
        torch.nn.Linear(64, 1024), torch.nn.Tanh(), torch.nn.Linear(1024, 1024), torch.nn.Tanh(), torch.nn.Linear(1024, 10)
    ).to(device)
    params = {k: p.detach() for k, p in model.named_parameters()}
    hparams = {k: torch.full_like(p, -4.0) for k, p in params.items()}
    x, y = torch.randn(batch, 64, device=device), torch.randint(0, 10, (batch,), device=device)
    xv, yv = torch.randn(batch, 64, device=device), torch.randint(0, 10, (batch,), device=device)

    def train_loss(p, h):
        logits = torch.func.functional_call(model, p, (x,))
        penalty = sum((F.softplus(h[k]) * p[k].pow(2)).sum() for k in p)
        return F.cross_entropy(logits, y) + 0.5 * penalty

    def val_loss(p, h):
        return F.cross_entropy(torch.func.functional_call(model, p, (xv,)), yv)

    return train_loss, val_loss, params, hparams


def lean_floor(train_loss, val_loss, params, hparams, hvps: int) -> None:
    """The irreducible autograd work of a K-HVP hypergradient, with no solver arithmetic."""
    w = [t.detach().requires_grad_(True) for t in params.values()]
    lam = [t.detach().requires_grad_(True) for t in hparams.values()]
    named_w, named_lam = dict(zip(params, w)), dict(zip(hparams, lam))
    v = torch.autograd.grad(val_loss(named_w, named_lam), w)
    grads = torch.autograd.grad(train_loss(named_w, named_lam), w, create_graph=True)
    for _ in range(hvps):
        v = torch.autograd.grad(grads, w, grad_outputs=v, retain_graph=True)
    torch.autograd.grad(grads, lam, grad_outputs=v)


def timed(fn, repeats: int, device: torch.device) -> float:
    """Median wall time of ``fn`` over ``repeats`` runs after one warm-up (synchronised on CUDA)."""
    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    fn()
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def solvers_for(k: int) -> dict[str, object]:
    return {
        "identity": Identity(),
        "neumann": Neumann(terms=k, alpha=1e-3),
        "cg": ConjugateGradient(max_iter=k, rtol=0.0),
        "nystrom": Nystrom(rank=k, rho=1e-2),
    }


def hvps_of(name: str, k: int) -> int:
    return 0 if name == "identity" else k


def measure_memory(solver_name: str, k: int, device: torch.device) -> None:
    """Child process: one hypergradient, then print peak memory in MiB."""
    train_loss, val_loss, params, hparams = make_problem(device)
    solver = {"neumann": Neumann(terms=k, alpha=1e-3), "cg": ConjugateGradient(max_iter=k, rtol=0.0)}[solver_name]
    hypergradient(train_loss, val_loss, params, hparams, solver=solver, return_info=True)
    if device.type == "cuda":
        print(torch.cuda.max_memory_allocated(device) / 2**20)
    else:
        print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--ks", type=int, nargs="+", default=[1, 5, 20])
    parser.add_argument("--memory-child", nargs=2, metavar=("SOLVER", "K"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if args.memory_child:
        measure_memory(args.memory_child[0], int(args.memory_child[1]), device)
        return

    train_loss, val_loss, params, hparams = make_problem(device)
    count = sum(p.numel() for p in params.values())
    print(f"MLP 64-1024-1024-10 tanh, batch 256, {count:,} weights and {count:,} hyperparameters, "
          f"device={device}, threads={torch.get_num_threads()}, torch {torch.__version__}")

    def gradient():
        w = [t.detach().requires_grad_(True) for t in params.values()]
        torch.autograd.grad(train_loss(dict(zip(params, w)), hparams), w)

    w = [t.detach().requires_grad_(True) for t in params.values()]
    graph = torch.autograd.grad(train_loss(dict(zip(params, w)), hparams), w, create_graph=True)
    probe = [torch.randn_like(t) for t in w]
    t_grad = timed(gradient, args.repeats, device)
    t_hvp = timed(lambda: torch.autograd.grad(graph, w, grad_outputs=probe, retain_graph=True), args.repeats, device)
    del graph
    print(f"training gradient {t_grad * 1e3:8.1f} ms   HVP (graph reused) {t_hvp * 1e3:8.1f} ms   HVP/gradient {t_hvp / t_grad:.2f}")
    print()
    print(f"{'solver':<10}{'K':>4}{'ours ms':>11}{'floor ms':>11}{'ours/floor':>12}")
    for k in args.ks:
        floor = timed(lambda: lean_floor(train_loss, val_loss, params, hparams, k), args.repeats, device)
        floor_zero = timed(lambda: lean_floor(train_loss, val_loss, params, hparams, 0), args.repeats, device)
        for name, solver in solvers_for(k).items():
            if name == "identity" and k != args.ks[0]:
                continue
            ours = timed(lambda: hypergradient(train_loss, val_loss, params, hparams, solver=solver, return_info=True), args.repeats, device)
            reference = floor_zero if hvps_of(name, k) == 0 else floor
            print(f"{name:<10}{hvps_of(name, k):>4}{ours * 1e3:>11.1f}{reference * 1e3:>11.1f}{ours / reference:>12.3f}")
    print()
    print("peak memory (fresh process each; CPU: max RSS of the process, CUDA: max allocated)")
    for name in ("neumann", "cg"):
        peaks = {}
        for k in (10, 100):
            out = subprocess.run(
                [sys.executable, __file__, "--device", args.device, "--threads", str(args.threads), "--memory-child", name, str(k)],
                check=True, capture_output=True, text=True,
            )
            peaks[k] = float(out.stdout.strip().splitlines()[-1])
        print(f"{name:<10} K=10 {peaks[10]:8.0f} MiB   K=100 {peaks[100]:8.0f} MiB   ratio {peaks[100] / peaks[10]:.3f}")


if __name__ == "__main__":
    main()
