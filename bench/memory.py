"""Peak memory versus K (Neumann, CG: should stay flat) and versus unrolled steps (grows linearly).

Each point runs in a fresh child process (so allocator caches of earlier points cannot hide or
inflate it) and reports the peak above the level just before the hypergradient: CPU, the
kernel's resident-set high-water mark (VmHWM after resetting it); CUDA, max_memory_allocated.
Problem: bench/common.py ``mlp`` (1.1M weights, batch 256). Writes a table and
bench/results/memory.png.

    python bench/memory.py [--ks 1 5 20 50] [--steps 1 5 10 20] [--device cpu|cuda]
"""
from __future__ import annotations

import common  # noqa: I001  (sets OMP_WAIT_POLICY before torch loads)

import argparse
import subprocess
import sys

import torch

from hybrid_hpo import ConjugateGradient, Neumann, hypergradient, unrolled_hypergradient


def child(kind: str, k: int, device: torch.device) -> None:
    problem = common.build_problem("mlp", device, pretrain=0)
    if kind == "unrolled":
        def run():
            unrolled_hypergradient(problem.train_loss, problem.val_loss, problem.params, problem.hparams,
                                   steps=k, lr=1e-3)
    else:
        solver = Neumann(terms=k, alpha=1e-3) if kind == "neumann" else ConjugateGradient(max_iter=k, rtol=0.0)

        def run():
            hypergradient(problem.train_loss, problem.val_loss, problem.params, problem.hparams, solver=solver,
                          return_info=True)
    print(common.peak_mib(run, device))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    common.add_common_args(parser)
    parser.add_argument("--ks", type=int, nargs="+", default=[1, 5, 20, 50])
    parser.add_argument("--steps", type=int, nargs="+", default=[1, 5, 10, 20])
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        torch.set_num_threads(args.threads)
        child(args.child[0], int(args.child[1]), torch.device(args.device))
        return
    common.header(args, "peak memory versus K and versus unrolled steps (bench/memory.py)")

    def measure(kind: str, k: int) -> float:
        out = subprocess.run([sys.executable, __file__, "--device", args.device, "--threads", str(args.threads),
                              "--child", kind, str(k)], check=True, capture_output=True, text=True)
        return float(out.stdout.strip().splitlines()[-1])

    series = {"neumann": [(k, measure("neumann", k)) for k in args.ks],
              "cg": [(k, measure("cg", k)) for k in args.ks],
              "unrolled": [(s, measure("unrolled", s)) for s in args.steps]}
    print("# peak MiB above the level before the call; MLP 1.1M weights (4.3 MiB per weight-sized vector)")
    print(f"{'method':<10}{'K or steps':>11}{'peak MiB':>10}{'vs first':>10}")
    for kind, points in series.items():
        first = points[0][1]
        for k, mib in points:
            print(f"{kind:<10}{k:>11}{mib:>10.0f}{mib / first:>10.2f}")
    (ks, neumann), (_, cg) = zip(*series["neumann"]), zip(*series["cg"])
    steps, unrolled = zip(*series["unrolled"])
    slope = (unrolled[-1] - unrolled[0]) / (steps[-1] - steps[0])
    print(f"# unrolled: {slope:.0f} MiB per extra step (linear fit end to end)")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.5))
    ax.plot(ks, neumann, "o-", label="IFT Neumann (K terms)")
    ax.plot(ks, cg, "s-", label="IFT CG (K iterations)")
    ax.plot(steps, unrolled, "^-", label="unrolled (K steps)")
    ax.set_xlabel("K (HVPs / CG iterations / unrolled steps)")
    ax.set_ylabel("peak memory above start (MiB)")
    ax.set_title(f"1.1M-weight MLP, per-weight decay, {args.device}")
    ax.legend()
    print(f"# plot: {common.save_plot(fig, 'memory.png')}")
    common.footer()


if __name__ == "__main__":
    main()
