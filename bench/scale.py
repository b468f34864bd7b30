"""How many inner hyperparameters one trial handles: time per hyper step and peak memory vs size.

Problem: a wide MLP 64-h-h-10 (tanh) on a batch of 256 digits with one weight decay per weight,
so H = P (hyperparameters = weights); h is chosen so that P hits each --sizes target. One hyper
step = one hypergradient with the library's default solver family, Neumann with K = 5 terms
(α = 1e-3; α does not change the cost), plus the SGD update of λ.
Each size runs in a fresh child process; peak memory is the process's resident-set high-water
mark during the step, above the level after building the problem (CPU) or max_memory_allocated
(CUDA). Prints the table, the log-log slope of time and memory against P + H, and writes
bench/results/scale.png.

    python bench/scale.py [--sizes 1e5 3e5 1e6 3e6 1e7] [--threads 2] [--device cpu|cuda]
"""
from __future__ import annotations

import common  # noqa: I001  (sets OMP_WAIT_POLICY before torch loads)

import argparse
import math
import resource
import statistics
import subprocess
import sys
import time

import torch

from hybrid_hpo import Neumann, hypergradient


def width_for(target: float) -> int:
    """h with P(h) = h² + 76h + 10 closest to the target."""
    return max(1, round((-76 + math.sqrt(76**2 + 4 * (target - 10))) / 2))


def child(width: int, repeats: int, device: torch.device) -> None:
    problem = common.build_problem("mlp", device, pretrain=0, hidden=(width, width))
    solver = Neumann(terms=5, alpha=1e-3)
    hparams = dict(problem.hparams)

    def step():
        grads = hypergradient(problem.train_loss, problem.val_loss, problem.params, hparams, solver=solver)
        for name, g in grads.items():
            hparams[name] = hparams[name] - 1e-2 * g

    times = []
    with common.PeakMemory(device) as memory:
        for _ in range(repeats + 1):
            common.sync(device)
            start = time.perf_counter()
            step()
            common.sync(device)
            times.append(time.perf_counter() - start)
    total = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(problem.num_weights, statistics.median(times[1:]), memory.mib, total)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    common.add_common_args(parser, threads=2)
    parser.add_argument("--sizes", type=float, nargs="+", default=[1e5, 3e5, 1e6, 3e6, 1e7])
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    parser.set_defaults(repeats=2)
    args = parser.parse_args()
    if args.child:
        torch.set_num_threads(args.threads)
        child(args.child, args.repeats, torch.device(args.device))
        return
    common.header(args, "scale: hyperparameters per trial (bench/scale.py)")
    rows = []
    print(f"{'P = H':>12}{'width':>7}{'s/step':>9}{'peak MiB':>10}{'process MiB':>13}{'µs per 1k (P+H)':>17}"
          f"{'bytes/(P+H)':>13}")
    for target in args.sizes:
        width = width_for(target)
        out = subprocess.run([sys.executable, __file__, "--device", args.device, "--threads", str(args.threads),
                              "--repeats", str(args.repeats), "--child", str(width)],
                             check=True, capture_output=True, text=True)
        p, seconds, peak, process = (float(x) for x in out.stdout.strip().splitlines()[-1].split())
        rows.append((p, seconds, peak))
        print(f"{int(p):>12,}{width:>7}{seconds:>9.2f}{peak:>10.0f}{process:>13.0f}"
              f"{seconds / (2 * p) * 1e9:>17.1f}{peak * 2**20 / (2 * p):>13.1f}", flush=True)
    ps = [math.log(2 * r[0]) for r in rows]
    for label, column in (("time", 1), ("peak memory", 2)):
        ys = [math.log(r[column]) for r in rows]
        slope = _slope(ps, ys)
        print(f"# log-log slope of {label} against P + H: {slope:.2f} (1.00 = linear)")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.5))
    sizes = [2 * r[0] for r in rows]
    left.loglog(sizes, [r[1] for r in rows], "o-")
    left.set_xlabel("P + H (weights + hyperparameters)")
    left.set_ylabel("seconds per hyper step")
    right.loglog(sizes, [r[2] for r in rows], "s-")
    right.set_xlabel("P + H")
    right.set_ylabel("peak MiB during the step")
    for ax in (left, right):
        ax.grid(True, which="both", alpha=0.3)
    fig.suptitle(f"wide MLP, one decay per weight, Neumann K=5, {args.device}, {args.threads} threads")
    print(f"# plot: {common.save_plot(fig, 'scale.png')}")
    common.footer()


def _slope(xs: list[float], ys: list[float]) -> float:
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)


if __name__ == "__main__":
    main()
