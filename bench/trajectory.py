"""Products to a target accuracy along a real bilevel run: do warm starts pay?

A :class:`hybrid_hpo.BilevelTrainer` run (digits, MLP, one weight decay per weight, its own solver
CG(max_iter=20, damping δ)) is trained ``--warmup`` epochs (near a minimum, where H has little
negative curvature), then followed hyper step by hyper step. Problems: ``small`` (MLP 64-128-10,
9,610 weights, mini-batches of 64 as the library's default), ``small-full`` (the same, full batch:
every step sees the whole training and validation split, so consecutive hyper steps differ only by
the weights' and λ's own moves) and ``large`` (MLP 64-1024-1024-10, 1.1M weights, batch 64). At every ``--every``-th hyper step
s, on exactly the problem that step solves (its training and validation batches, its weights and
λ), each method's hypergradient is compared with a tightly converged one (CG to rtol 1e-10 on
the same system (H + δI) p = v): the Hessian-vector products it needs to reach cosine ≥ 0.99 and
≥ 0.999 to it, read on a grid of budgets (×~1.25 apart, so a count is the first grid point that
reaches the target, at most 25% above the exact one):

  cg          cold CG, x₀ = 0;
  cg-warm     CG from x₀ = the converged solution of step s − 1 (solver.warm_start; the products
              include the one for r₀ = v − A x₀);
  neumann     the Neumann series with α = 1/λ_max(H + δI) (power iteration, not counted);
  neumann-warm Richardson from the same x₀ (solver.warm_start);
  nystrom     Nyström with ρ = δ and a fresh sketch: the rank needed (= products);
  nystrom-reused the sketch of step s − 1 reused (solver.refresh_every): the rank needed, spent one
              step earlier (0 products at step s).

The warm start's x₀ is the previous step's converged solution (what a warm solver that met the
target there hands on, up to that target's accuracy); ``cos x0`` is its cosine to step s's converged
solution, ``ref`` the reference's products, α the Neumann step. ``>N`` = not reached within the
largest budget N. Writes bench/results/trajectory.txt (this output) and trajectory.png.

    python bench/trajectory.py [--problems small small-full large] [--every 4] [--samples 8 8 5]
"""
from __future__ import annotations

import common  # noqa: I001  (sets OMP_WAIT_POLICY before torch loads)

import argparse
import contextlib
import io
import statistics
import sys
import time

import torch

import hybrid_hpo.bilevel as bilevel
from hybrid_hpo import ConjugateGradient, Neumann, Nystrom, hypergradient
from hybrid_hpo.bilevel import BilevelTrainer
from hybrid_hpo.config import RunConfig
from hybrid_hpo.implicit import HessianOperator, top_eigenvalue

TARGETS = (0.99, 0.999)
METHODS = ("cg", "cg-warm", "neumann", "neumann-warm", "nystrom", "nystrom-reused")
PROBLEMS = {  # name -> MLP widths, batch size, δ, largest budget of the iterative solvers, Nyström ranks
    "small": {"hidden": (128,), "batch": 64, "damping": 0.2, "warmup": 10, "largest": 1200,
              "ranks": (5, 10, 20, 40, 80, 160, 320)},
    "small-full": {"hidden": (128,), "batch": 2048, "damping": 0.2, "warmup": 200, "largest": 1200,
                   "ranks": (5, 10, 20, 40, 80, 160, 320)},
    "large": {"hidden": (1024, 1024), "batch": 64, "damping": 0.3, "warmup": 10, "largest": 200,
              "ranks": (5, 10, 20, 40)},
}


def budgets(largest: int) -> list[int]:
    """1, 2, 3, 4, 5, 7, 9, ... : each ~1.25x the last, up to ``largest``."""
    grid = [1]
    while grid[-1] < largest:
        grid.append(min(largest, max(grid[-1] + 1, round(grid[-1] * 1.25))))
    return grid


class Probe:
    """Stands in for ``bilevel.hypergradient``: at the sampled hyper steps (and the step before each,
    for the warm starts) it measures every method on that step's problem, then returns the run's
    own hypergradient unchanged."""

    def __init__(self, every: int, samples: int, damping: float, largest: int, ranks: tuple[int, ...]):
        self.every, self.samples, self.damping, self.largest, self.ranks = every, samples, damping, largest, ranks
        self.step = 0
        self.active = False  # off during the warm-up epochs
        self.previous: dict | None = None  # step s − 1: the converged p and the Nyström sketches
        self.rows: list[dict] = []

    def __call__(self, train_loss, val_loss, params, hparams, **kwargs):
        self.step += self.active
        if self.active and len(self.rows) < self.samples and self.step % self.every in (0, self.every - 1):
            problem = (train_loss, val_loss, params, hparams)
            if self.step % self.every == self.every - 1:
                self.previous = self.prepare(problem)
            elif self.previous is not None:
                self.rows.append(self.measure(problem))
                self.previous = None
        return hypergradient(train_loss, val_loss, params, hparams, **kwargs)

    def reference(self, problem) -> tuple[dict, object]:
        return hypergradient(*problem, solver=ConjugateGradient(max_iter=5000, rtol=1e-10, damping=self.damping,
                                                                warm_start=True), return_info=True)

    def prepare(self, problem) -> dict:
        """At step s − 1: the converged solution (warm CG's state is its p) and one sketch per rank."""
        _, info = self.reference(problem)
        sketches = {rank: hypergradient(*problem, solver=self.nystrom(rank), return_info=True)[1].state
                    for rank in self.ranks}
        return {"p": info.state, "diverged": info.diverged, "sketches": sketches}

    def nystrom(self, rank: int) -> Nystrom:
        return Nystrom(rank=rank, rho=self.damping, refresh_every=2)  # a sketch serves two solves

    def measure(self, problem) -> dict:
        start = time.perf_counter()
        reference, info = self.reference(problem)
        alpha = 1.0 / (_top_eigenvalue(problem) + self.damping)
        cg = lambda m, warm: ConjugateGradient(max_iter=m, rtol=0.0, check_every=0,  # noqa: E731
                                                damping=self.damping, warm_start=warm)
        neumann = lambda m, warm: Neumann(terms=m, alpha=alpha, damping=self.damping, warm_start=warm)  # noqa: E731
        warm_state = self.previous["p"]
        grid = budgets(self.largest)
        row = {"step": self.step, "reference": info.iterations, "residual": info.residual,
               "indefinite": info.diverged or self.previous["diverged"], "alpha": alpha,
               "x0_cosine": common.cosine(warm_state["p"], info.state["p"])}
        # a warm budget of m products is m − 1 iterations (terms) after the one for r₀
        row["cg"] = first_reaching(problem, reference, [(m, cg(m, False), None) for m in grid])
        row["cg-warm"] = first_reaching(problem, reference, [(m, cg(m - 1, True), warm_state) for m in grid])
        row["neumann"] = first_reaching(problem, reference, [(m, neumann(m, False), None) for m in grid])
        row["neumann-warm"] = first_reaching(problem, reference,
                                             [(m, neumann(m - 1, True), warm_state) for m in grid])
        row["nystrom"] = first_reaching(problem, reference, [(k, self.nystrom(k), None) for k in self.ranks])
        sketches = self.previous["sketches"]
        row["nystrom-reused"] = first_reaching(problem, reference,
                                               [(k, self.nystrom(k), sketches[k]) for k in self.ranks])
        row["seconds"] = time.perf_counter() - start
        print(format_row(row), flush=True)
        return row


def _top_eigenvalue(problem) -> float:
    """|λ|_max(H) of the training loss at the step's weights by 30 power iterations (the Neumann step)."""
    train_loss, _, params, hparams = problem
    weights = [t.detach().requires_grad_(True) for t in params.values()]
    with torch.enable_grad():
        grads = torch.autograd.grad(train_loss(dict(zip(params, weights)), hparams), weights, create_graph=True)
        return float(top_eigenvalue(HessianOperator(grads, weights), weights, iters=30).abs())


def first_reaching(problem, reference: dict, candidates: list) -> dict[float, float | None]:
    """For each target: the cost (first of each candidate triple) of the first candidate whose
    hypergradient reaches that cosine to ``reference``; None when none does. Stops at the first
    candidate that reaches them all."""
    reached: dict[float, float | None] = dict.fromkeys(TARGETS)
    for cost, solver, state in candidates:
        gradient = hypergradient(*problem, solver=solver, state=state, return_info=True)[0]
        cos = common.cosine(gradient, reference)
        for target in TARGETS:
            if reached[target] is None and cos >= target:
                reached[target] = cost
        if all(value is not None for value in reached.values()):
            break
    reached["largest"] = candidates[-1][0]
    return reached


def cell(reached: dict, target: float) -> str:
    value = reached[target]
    return f">{reached['largest']}" if value is None else str(value)


def format_header() -> str:
    heads = "".join(f"{name:>16}" for name in METHODS)
    return f"{'step':>5}{'ref':>6}{'alpha':>8}{'cos x0':>8}{heads}{'s':>6}\n{'':>27}" + \
        "".join(f"{'0.99/0.999':>16}" for _ in METHODS)


def format_row(row: dict) -> str:
    cells = "".join(f"{cell(row[name], 0.99) + '/' + cell(row[name], 0.999):>16}" for name in METHODS)
    flag = " (reference met non-positive curvature: indicative)" if row["indefinite"] else ""
    return f"{row['step']:>5}{row['reference']:>6}{row['alpha']:>8.3g}{row['x0_cosine']:>8.3f}{cells}{row['seconds']:>6.0f}{flag}"


def summary(rows: list[dict]) -> list[str]:
    """Median over the sampled steps of each method's products per target, and warm / cold (steps
    whose reference met non-positive curvature left out)."""
    left_out = sum(row["indefinite"] for row in rows)
    rows = [row for row in rows if not row["indefinite"]]
    lines = [f"# {len(rows)} steps with a converged reference" + (f" ({left_out} indicative left out)" if left_out else "")
             + f"; median cosine of x0 (step s - 1's solution) to step s's: "
             f"{statistics.median(row['x0_cosine'] for row in rows):.3f}"]
    for target in TARGETS:
        medians = {}
        for name in METHODS:
            values = [row[name][target] for row in rows]
            reached = [v for v in values if v is not None]
            medians[name] = statistics.median(reached) if len(reached) == len(values) else None
        text = "  ".join(f"{name} {'not always reached' if m is None else f'{m:g}'}" for name, m in medians.items())
        lines.append(f"# median products to cosine >= {target}: {text}")
        for warm, cold in (("cg-warm", "cg"), ("neumann-warm", "neumann")):
            if medians[warm] is not None and medians[cold] is not None:
                ratios = [row[warm][target] / row[cold][target] for row in rows]
                lines.append(f"#   {warm} / {cold} at {target}: median ratio {statistics.median(ratios):.2f} "
                             f"[{min(ratios):.2f}-{max(ratios):.2f}] over {len(rows)} steps")
    return lines


def run_problem(name: str, args) -> list[dict]:
    setup = PROBLEMS[name]
    hidden, largest, ranks = setup["hidden"], setup["largest"], setup["ranks"]
    damping = setup["damping"] if args.damping is None else args.damping
    warmup = setup["warmup"] if args.warmup is None else args.warmup
    config = RunConfig.from_mapping({"dataset": "digits", "model": "mlp", "hidden": list(hidden),
                                     "family": "weight_decay", "granularity": "per_weight", "solver": "cg",
                                     "solver.max_iter": 20, "solver.damping": damping, "epochs": 1000,
                                     "batch_size": setup["batch"], "device": args.device, "seed": 0})
    samples = args.samples[list(args.problems).index(name)]
    probe = Probe(args.every, samples, damping, largest, ranks)
    trainer = BilevelTrainer(config)
    weights = sum(p.numel() for p in trainer.model.parameters())
    print(f"\n## {name}: MLP 64-{'-'.join(map(str, hidden))}-10 on digits, {weights:,} weights = hyperparameters; "
          f"run solver CG(max_iter=20, damping={damping}), batch {config.batch_size} (of {len(trainer.data.train)} "
          f"train / {len(trainer.data.val)} val), "
          f"{config.inner_steps} inner steps per hyper step; {warmup} warm-up epochs, then every {args.every}th "
          f"hyper step; "
          f"budgets up to {largest}, ranks {', '.join(map(str, ranks))}")
    print(format_header())
    original = bilevel.hypergradient
    bilevel.hypergradient = probe
    try:
        for _ in range(warmup):
            trainer.train_epoch()
        probe.active = True
        while len(probe.rows) < samples:
            trainer.train_epoch()
    finally:
        bilevel.hypergradient = original
    print("\n".join(summary(probe.rows)))
    return probe.rows


def plot(results: dict[str, list[dict]]) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(6 * len(results), 4.2), squeeze=False)
    for ax, (name, rows) in zip(axes[0], results.items()):
        steps = [row["step"] for row in rows]
        for method, colour in zip(METHODS[:4], ("C0", "C0", "C1", "C1")):
            style = "-" if method.endswith("warm") else "--"
            values = [row[method][0.999] for row in rows]
            ys = [v if v is not None else float("nan") for v in values]
            ax.semilogy(steps, ys, style, color=colour, marker="o", markersize=4, label=f"{method} (0.999)")
        ax.set_xlabel("hyper step")
        ax.set_ylabel("Hessian-vector products to cosine 0.999")
        ax.set_title(f"{name}: cold (dashed) versus warm (solid)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    return common.save_plot(fig, "trajectory.png")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    common.add_common_args(parser, threads=2)
    parser.add_argument("--problems", nargs="+", choices=list(PROBLEMS), default=list(PROBLEMS))
    parser.add_argument("--samples", type=int, nargs="+", default=[8, 8, 5], help="sampled hyper steps per problem")
    parser.add_argument("--every", type=int, default=4, help="sample every N-th hyper step (N >= 2)")
    parser.add_argument("--damping", type=float, help="δ of the solved system (H + δI) p = v (default: the "
                        "problem's: 0.2 small, 0.3 large, where H + δI was positive definite at most sampled steps)")
    parser.add_argument("--warmup", type=int, help="epochs trained before the first sample (default: the "
                        "problem's: 10 small, 200 small-full, 10 large)")
    parser.add_argument("--output", default="trajectory.txt", help="file in bench/results for this output")
    args = parser.parse_args()
    if args.every < 2 or len(args.samples) != len(args.problems):
        parser.error("--every must be >= 2 and --samples needs one count per problem")
    buffer = io.StringIO()
    with contextlib.redirect_stdout(_Tee(sys.stdout, buffer)):
        common.header(args, "products to a target accuracy along a bilevel run (bench/trajectory.py)")
        results = {name: run_problem(name, args) for name in args.problems}
        print(f"\n# plot: {plot(results)}")
        common.footer()
    with open(f"{common.RESULTS}/{args.output}", "w", encoding="utf-8") as handle:
        handle.write(buffer.getvalue())


class _Tee(io.TextIOBase):
    def __init__(self, *streams):
        self.streams = streams

    def write(self, text: str) -> int:
        for stream in self.streams:
            stream.write(text)
            stream.flush()
        return len(text)


if __name__ == "__main__":
    main()
