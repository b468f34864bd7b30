"""Cost of one hypergradient against its lean floor, and forward- versus reverse-over-reverse HVPs.

Problem (bench/common.py ``mlp``): the 1.1M-weight MLP 64-1024-1024-10 (tanh) on a batch of 256
digits, one weight decay per weight: L_T = CE + ½ Σ softplus(λ) ⊙ w², L_V = CE(validation).

Prints, from this one run, with the contenders interleaved (A, B, A, B, ...) and the median of
the per-repeat ratios (range in brackets):
  * ours/floor for every solver and K in --ks: ``hypergradient(...)`` against the same autograd
    calls written out by hand with no solver arithmetic — one validation gradient, one training
    gradient graph (create_graph), K Hessian-vector products through it, one mixed VJP;
  * forward-over-reverse (FoR) against reverse-over-reverse (RoR) floors: FoR computes each HVP
    as torch.func.jvp(grad L_T) (a fresh forward+backward with dual numbers, no retained graph)
    and the mixed product as jvp(∇_λ L_T) in direction p; RoR is the floor above;
  * the time of one training gradient and of one HVP, and peak memory of Neumann and CG at
    K = 10 versus K = 100 (fresh processes).

    python bench/hypergrad_cost.py [--ks 1 5 20 50] [--repeats 3] [--threads 1] [--device cpu|cuda]
"""
from __future__ import annotations

import common  # noqa: I001  (sets OMP_WAIT_POLICY before torch loads)

import argparse
import subprocess
import sys
from pathlib import Path

import torch

from hybrid_hpo import ConjugateGradient, Identity, Neumann, Nystrom, hypergradient
from hybrid_hpo.implicit.tensor_list import all_finite


def lean_floor(problem, hvps: int, checked: bool = False) -> None:
    """Reverse-over-reverse: the irreducible autograd work of a K-HVP hypergradient. ``checked``
    adds the two passes over λ every usable hypergradient needs: the sign (direct − mixed) and the
    finiteness check that lets a trainer reject a diverged step instead of applying NaN."""
    w = [t.detach().requires_grad_(True) for t in problem.params.values()]
    lam = [t.detach().requires_grad_(True) for t in problem.hparams.values()]
    named_w, named_lam = dict(zip(problem.params, w)), dict(zip(problem.hparams, lam))
    v = torch.autograd.grad(problem.val_loss(named_w, named_lam), w)
    grads = torch.autograd.grad(problem.train_loss(named_w, named_lam), w, create_graph=True)
    for _ in range(hvps):
        v = torch.autograd.grad(grads, w, grad_outputs=v, retain_graph=True)
    mixed = list(torch.autograd.grad(grads, lam, grad_outputs=v))
    if checked:
        torch._foreach_neg_(mixed)
        bool(all_finite(mixed))


def forward_over_reverse_floor(problem, hvps: int) -> None:
    """Forward-over-reverse: each HVP is jvp(∇_w L_T)(w; v) — no graph kept between products."""
    names = list(problem.params)
    w = tuple(t.detach() for t in problem.params.values())
    lam = tuple(t.detach() for t in problem.hparams.values())

    def loss(ws, ls):
        return problem.train_loss(dict(zip(names, ws)), dict(zip(names, ls)))

    v = torch.func.grad(lambda ws: problem.val_loss(dict(zip(names, ws)), dict(zip(names, lam))))(w)
    grad_w = torch.func.grad(lambda ws: loss(ws, lam))
    for _ in range(hvps):
        v = torch.func.jvp(grad_w, (w,), (v,))[1]
    torch.func.jvp(lambda ws: torch.func.grad(lambda ls: loss(ws, ls))(lam), (w,), (v,))


def gradient_and_hvp_times(problem, repeats: int, device: torch.device) -> None:
    """One training gradient versus one HVP through a retained gradient graph (interleaved)."""
    w = [t.detach().requires_grad_(True) for t in problem.params.values()]
    named = dict(zip(problem.params, w))
    graph = torch.autograd.grad(problem.train_loss(named, problem.hparams), w, create_graph=True)
    probe = [torch.randn_like(t) for t in w]
    times = common.interleaved({
        "gradient": lambda: torch.autograd.grad(problem.train_loss(named, problem.hparams), w),
        "hvp": lambda: torch.autograd.grad(graph, w, grad_outputs=probe, retain_graph=True),
    }, repeats, device)
    print(f"training gradient {common.median_ms(times['gradient']):.0f} ms; one HVP (graph reused) "
          f"{common.median_ms(times['hvp']):.0f} ms; HVP/gradient {common.ratio(times['hvp'], times['gradient'])}")


def peak_memory_k10_vs_k100(args) -> None:
    """Neumann and CG at K = 10 and K = 100, each in a fresh process (bench/memory.py's child)."""
    memory_script = Path(__file__).with_name("memory.py")
    print("\n# peak memory above the level before the call, fresh process per point (bench/memory.py)")
    for kind in ("neumann", "cg"):
        peaks = {}
        for k in (10, 100):
            out = subprocess.run([sys.executable, str(memory_script), "--device", args.device, "--threads",
                                  str(args.threads), "--child", kind, str(k)], check=True, capture_output=True, text=True)
            peaks[k] = float(out.stdout.strip().splitlines()[-1])
        print(f"{kind:<8} K=10 {peaks[10]:7.0f} MiB   K=100 {peaks[100]:7.0f} MiB   K=100/K=10 {peaks[100] / peaks[10]:.3f}")


def ours(problem, solver):
    """A closure computing the problem's hypergradient with ``solver`` (what every timing calls)."""
    return lambda: hypergradient(problem.train_loss, problem.val_loss, problem.params, problem.hparams,
                                 solver=solver, return_info=True)


def solvers_for(k: int) -> dict[str, object]:
    return {
        "identity": Identity(),
        "neumann": Neumann(terms=k, alpha=1e-3),
        "cg": ConjugateGradient(max_iter=k, rtol=0.0),
        "nystrom": Nystrom(rank=k, rho=1e-1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    common.add_common_args(parser)
    parser.add_argument("--ks", type=int, nargs="+", default=[1, 5, 20, 50])
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory part (fresh processes)")
    parser.set_defaults(repeats=3)
    args = parser.parse_args()
    device = common.header(args, "hypergradient time / lean floor (bench/hypergrad_cost.py)")
    problem = common.build_problem("mlp", device, pretrain=0)
    print(f"# MLP 64-1024-1024-10 tanh, batch 256, {problem.num_weights:,} weights and as many hyperparameters")
    gradient_and_hvp_times(problem, args.repeats, device)

    print("# checked floor: the floor plus the sign and finiteness passes over λ every usable hypergradient needs")
    print(f"{'solver':<10}{'K':>4}{'ours ms':>10}{'floor ms':>10}  {'ours/floor':<18}{'ours/checked floor':<18}")
    for_rows = []
    identity_done = False
    for k in args.ks:
        contenders = {"floor": lambda: lean_floor(problem, k), "floor0": lambda: lean_floor(problem, 0),
                      "checked": lambda: lean_floor(problem, k, checked=True),
                      "checked0": lambda: lean_floor(problem, 0, checked=True),
                      "for": lambda: forward_over_reverse_floor(problem, k)}
        for name, solver in solvers_for(k).items():
            if name == "identity" and identity_done:
                continue
            contenders[name] = ours(problem, solver)
        identity_done = True
        times = common.interleaved(contenders, args.repeats, device)
        for name in solvers_for(k):
            if name not in times:
                continue
            zero = "0" if name == "identity" else ""
            floor, checked = times["floor" + zero], times["checked" + zero]
            print(f"{name:<10}{0 if name == 'identity' else k:>4}{common.median_ms(times[name]):>10.0f}"
                  f"{common.median_ms(floor):>10.0f}  {common.ratio(times[name], floor)!s:<18}"
                  f"{common.ratio(times[name], checked)!s:<18}", flush=True)
        for_rows.append((k, common.median_ms(times["for"]), common.median_ms(times["floor"]),
                         common.ratio(times["for"], times["floor"])))
    print("\n# forward-over-reverse (torch.func.jvp of grad) versus reverse-over-reverse (graph reused) floors")
    print(f"{'K':>4}{'FoR ms':>10}{'RoR ms':>10}  {'FoR/RoR':<18}")
    for k, t_for, t_ror, r in for_rows:
        print(f"{k:>4}{t_for:>10.0f}{t_ror:>10.0f}  {r!s:<18}")
    if not args.no_memory:
        peak_memory_k10_vs_k100(args)
    common.footer()


if __name__ == "__main__":
    main()
