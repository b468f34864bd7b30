"""Accuracy versus cost: cosine of each solver's hypergradient to the exact one, against its time.

Problems (bench/common.py, per-weight decay on digits, weights pretrained with full-batch Adam):
  * ``logreg`` (650 weights, decay 0.01, 300 steps): the reference is exact (dense Hessian, torch.linalg.solve);
  * ``mlp-small`` (64-32-10 tanh, 2,410 weights): exact too, with decay 0.1 and 3000 pretraining
    steps, where its Hessian is positive definite (eigenvalues 3.6e-4 .. 2.6, condition ~7000).
    With decay 0.01 the trained MLP's Hessian is indefinite (CE is not convex in the weights: 2-37
    negative eigenvalues), the exact IFT solve is dominated by near-zero eigenvalues, and no
    Krylov/Neumann solver approaches it — for that reason the 1.1M-weight MLP (``--problems mlp``)
    has only an indicative reference (a CG run that stops at negative curvature).
Solvers: Identity, Neumann(K, α = 1/λ_max) and CG(K, rtol=0) for K in --ks, Nyström(rank, ρ) for
rank in --ranks. Time = median of --repeats interleaved runs. Writes bench/results/accuracy.png
(one panel per problem) and prints the table behind it.

    python bench/accuracy.py [--problems logreg mlp-small] [--ks 1 2 5 10 20 50] [--ranks 5 10 20 50 100]
"""
from __future__ import annotations

import common  # noqa: I001  (sets OMP_WAIT_POLICY before torch loads)

import argparse

from hybrid_hpo import ConjugateGradient, Identity, Neumann, Nystrom, hypergradient


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    common.add_common_args(parser)
    parser.add_argument("--problems", nargs="+", default=["logreg", "mlp-small"])
    parser.add_argument("--ks", type=int, nargs="+", default=[1, 2, 5, 10, 20, 50])
    parser.add_argument("--ranks", type=int, nargs="+", default=[5, 10, 20, 50, 100])
    parser.add_argument("--rho", type=float, default=1e-2, help="Nyström ρ (default 0.01 = the decay)")
    parser.set_defaults(repeats=2)
    args = parser.parse_args()
    device = common.header(args, "accuracy versus cost (bench/accuracy.py)")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(args.problems), figsize=(5.5 * len(args.problems), 4), squeeze=False)
    for ax, name in zip(axes[0], args.problems):
        settings = {"mlp-small": {"pretrain": 3000, "init_decay": 0.1}}.get(name, {"pretrain": 300})
        problem = common.build_problem(name, device, **settings)
        alpha = common.neumann_alpha(problem)
        reference, described = common.reference_hypergradient(problem)
        print(f"\n## {name}: {problem.num_weights:,} weights; α = {alpha:.4g}; reference: {described}")
        solvers = {("identity", 0): Identity()}
        solvers.update({("neumann", k): Neumann(terms=k, alpha=alpha) for k in args.ks})
        solvers.update({("cg", k): ConjugateGradient(max_iter=k, rtol=0.0) for k in args.ks})
        solvers.update({("nystrom", r): Nystrom(rank=r, rho=args.rho) for r in args.ranks})

        def run(solver):
            return lambda: hypergradient(problem.train_loss, problem.val_loss, problem.params, problem.hparams,
                                         solver=solver, return_info=True)[0]

        times = common.interleaved({key: run(s) for key, s in solvers.items()}, args.repeats, device)
        print(f"{'solver':<10}{'K/rank':>7}{'ms':>9}{'cosine':>9}")
        curves: dict[str, list[tuple[float, float, int]]] = {}
        for key, solver in solvers.items():
            cos = common.cosine(run(solver)(), reference)
            ms = common.median_ms(times[key])
            curves.setdefault(key[0], []).append((ms, cos, key[1]))
            print(f"{key[0]:<10}{key[1]:>7}{ms:>9.1f}{cos:>9.4f}")
        for solver_name, points in curves.items():
            xs, ys, ks = zip(*points)
            ax.semilogx(xs, ys, "o-" if len(xs) > 1 else "*", label=solver_name, markersize=8 if len(xs) == 1 else 5)
            for x, y, k in points:
                if len(points) > 1:
                    ax.annotate(str(k), (x, y), fontsize=7, textcoords="offset points", xytext=(2, 3))
        ax.set_xlabel("time per hypergradient (ms)")
        ax.set_ylabel("cosine to reference")
        ax.set_title(f"{name} ({problem.num_weights:,} weights), {args.device}")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    print(f"\n# plot: {common.save_plot(fig, 'accuracy.png')}")
    common.footer()


if __name__ == "__main__":
    main()
