"""Our hypergradient against the peer libraries: same problem, same run, interleaved timing.

Run it in the bench environment, where the peers are installed (see BENCHMARKS.md):

    /root/venv-bench/bin/python bench/peers.py [--problems mlp cnn] [--ks 5 20] [--repeats 3]
        [--device cpu|cuda] [--threads 1] [--profile]

For each problem (bench/common.py: per-weight decay on the 1.1M-weight MLP and on the small CNN,
both on digits) and each K it computes the same hypergradient dL_V/dλ with the matching method:

  Neumann K, α   ours Neumann(terms=K, alpha=α) | hypergrad.approx_hypergrad.neumann(num_iters=K, lr=α)
                 | torchopt custom_root + linear_solve.solve_inv(ns=True, maxiter=K, alpha=α)
                 | betty.hypergradient.neumann (neumann_iterations=K, neumann_alpha=α)
                 All four compute p = α Σ_{j=0..K} (I − αH)^j v (read from their source); α = 1/λ_max(H).
  CG K           ours ConjugateGradient(max_iter=K, rtol=0) | hypergrad conjugate_gradient(lr=1)
                 | torchopt solve_cg(maxiter=K, rtol=0) | betty cg (cg_alpha=1)
  Nyström k, ρ   ours Nystrom(rank=k, rho=ρ, seed=s) | hypergrad nystrom(rank=k, rho=ρ) after
                 torch.manual_seed(s): the same k sampled coordinates on CPU
  Unrolled T, η  ours unrolled_hypergradient(steps=T, lr=η) | higher.innerloop_ctx + SGD(lr=η)

and prints per row: median time, the median of per-repeat ratios ours/theirs (with range), the
cosine to the reference hypergradient (exact or converged CG), the cosine to ours, and the peak
memory above the starting level. A peer that does not import or run gets a row saying why.
betty is called through its hypergradient functions (betty.hypergradient.neumann / cg) with two
small stand-ins for its Problem objects: its Engine runs whole training loops and has no call
that returns one hypergradient.
"""
from __future__ import annotations

import common  # noqa: I001  (sets OMP_WAIT_POLICY before torch loads)

import argparse
import traceback
import warnings
from collections.abc import Callable

import torch
import torch.nn.functional as F

from hybrid_hpo import ConjugateGradient, Neumann, Nystrom, hypergradient, unrolled_hypergradient

warnings.filterwarnings("ignore")  # the peers' functorch deprecation warnings, once per call

PEERS = ("hypergrad", "torchopt", "betty", "higher")


def import_peers() -> dict[str, object | str]:
    """Each peer's module, or the one-line reason it is unavailable."""
    found: dict[str, object | str] = {}
    for name in PEERS:
        try:
            found[name] = __import__(name)
            if name == "hypergrad":
                import hypergrad.approx_hypergrad  # noqa: F401
            if name == "torchopt":
                import torchopt.diff.implicit  # noqa: F401
            if name == "betty":
                import betty.hypergradient  # noqa: F401
        except Exception as error:  # noqa: BLE001 - the reason goes into the table
            found[name] = f"does not import: {type(error).__name__}: {str(error).splitlines()[0][:120]}"
    return found


# ------------------------------------------------------------------------------ the contenders

def ours(problem, solver) -> Callable[[], list[torch.Tensor]]:
    def run():
        return list(hypergradient(problem.train_loss, problem.val_loss, problem.params, problem.hparams,
                                  solver=solver, return_info=True)[0].values())
    return run


def ours_unrolled(problem, steps: int, lr: float):
    def run():
        return list(unrolled_hypergradient(problem.train_loss, problem.val_loss, problem.params, problem.hparams,
                                           steps=steps, lr=lr).values())
    return run


def hypergrad_fn(problem, method: str, k: int, scalar: float, seed: int = 0):
    """hypergrad.approx_hypergrad.{neumann, conjugate_gradient, nystrom}(inner, outer, w, λ, k, scalar)."""
    from hypergrad import approx_hypergrad

    names = list(problem.params)
    fn = {"neumann": approx_hypergrad.neumann, "cg": approx_hypergrad.conjugate_gradient,
          "nystrom": approx_hypergrad.nystrom}[method]

    def inner(w, lam):
        return problem.train_loss(dict(zip(names, w)), dict(zip(names, lam)))

    def outer(w, lam):
        return problem.val_loss(dict(zip(names, w)), dict(zip(names, lam)))

    def run():
        torch.manual_seed(seed)  # nystrom draws its coordinates from the global generator
        w, lam = tuple(problem.params.values()), tuple(problem.hparams.values())
        return list(fn(inner, outer, w, lam, k, scalar))
    return run


def torchopt_fn(problem, method: str, k: int, alpha: float):
    """torchopt.diff.implicit.custom_root with the optimality condition ∂L_T/∂w = 0."""
    import torchopt

    names = list(problem.params)
    solve = (torchopt.linear_solve.solve_inv(ns=True, maxiter=k, alpha=alpha) if method == "neumann"
             else torchopt.linear_solve.solve_cg(maxiter=k, rtol=0.0))

    def optimality(w, lam):
        return torch.func.grad(lambda ws: problem.train_loss(dict(zip(names, ws)), dict(zip(names, lam))))(w)

    @torchopt.diff.implicit.custom_root(optimality, argnums=1, solve=solve)
    def inner_solution(w, lam):
        return w  # the weights are already trained

    def run():
        lam = tuple(t.detach().requires_grad_(True) for t in problem.hparams.values())
        w_star = inner_solution(tuple(problem.params.values()), lam)
        loss = problem.val_loss(dict(zip(names, w_star)), dict(zip(names, lam)))
        return list(torch.autograd.grad(loss, lam))
    return run


class _BettyConfig:
    def __init__(self, k: int, alpha: float):
        self.neumann_iterations, self.neumann_alpha = k, alpha
        self.cg_iterations, self.cg_alpha = k, 1.0


class _BettyLower:
    """What betty.hypergradient.{neumann, cg} read from the lower Problem."""

    paths: list = []
    cur_batch = None

    def __init__(self, problem, w, lam, config):
        self._problem, self._w, self._lam, self.config = problem, w, lam, config

    def training_step_exec(self, batch):
        names = list(self._problem.params)
        return self._problem.train_loss(dict(zip(names, self._w)), dict(zip(names, self._lam)))

    def trainable_parameters(self):
        return self._w

    def parameters(self):
        return self._w


class _BettyUpper:
    def __init__(self, lam):
        self._lam = lam

    def trainable_parameters(self):
        return self._lam


def betty_fn(problem, method: str, k: int, alpha: float):
    """betty's hypergradient functions; v = ∂L_V/∂w is what betty's upper problem passes down."""
    from betty import hypergradient as betty_hg

    fn = betty_hg.neumann if method == "neumann" else betty_hg.cg
    names = list(problem.params)

    def run():
        w = [t.detach().requires_grad_(True) for t in problem.params.values()]
        lam = [t.detach().requires_grad_(True) for t in problem.hparams.values()]
        v = torch.autograd.grad(problem.val_loss(dict(zip(names, w)), dict(zip(names, lam))), w)
        # betty returns the implicit part −(∂L_V/∂w)H⁻¹∂²L_T/∂w∂λ; the direct ∂L_V/∂λ is 0 here
        return fn(list(v), _BettyLower(problem, w, lam, _BettyConfig(k, alpha)), _BettyUpper(lam))
    return run


def higher_fn(problem, steps: int, lr: float):
    """higher.innerloop_ctx: differentiate through ``steps`` SGD steps from the trained weights."""
    import higher

    model = problem.model

    def run():
        lam = [t.detach().requires_grad_(True) for t in problem.hparams.values()]
        optimizer = torch.optim.SGD(model.parameters(), lr=lr)
        with higher.innerloop_ctx(model, optimizer, copy_initial_weights=True) as (fmodel, diffopt):
            for _ in range(steps):
                fast = list(fmodel.parameters())
                penalty = sum((F.softplus(h) * w.pow(2)).sum() for h, w in zip(lam, fast))
                diffopt.step(F.cross_entropy(fmodel(problem.x), problem.y) + 0.5 * penalty)
            loss = F.cross_entropy(fmodel(problem.xv), problem.yv)
            return list(torch.autograd.grad(loss, lam))
    return run


def contenders(problem, peers, method: str, k: int, alpha: float, rho: float) -> dict[str, Callable | str]:
    """name -> callable, or -> the reason it cannot run."""
    def peer(name, make):
        return make() if not isinstance(peers[name], str) else peers[name]

    if method == "neumann":
        return {"ours": ours(problem, Neumann(terms=k, alpha=alpha)),
                "hypergrad": peer("hypergrad", lambda: hypergrad_fn(problem, "neumann", k, alpha)),
                "torchopt": peer("torchopt", lambda: torchopt_fn(problem, "neumann", k, alpha)),
                "betty": peer("betty", lambda: betty_fn(problem, "neumann", k, alpha))}
    if method == "cg":
        return {"ours": ours(problem, ConjugateGradient(max_iter=k, rtol=0.0)),
                "hypergrad": peer("hypergrad", lambda: hypergrad_fn(problem, "cg", k, 1.0)),
                "torchopt": peer("torchopt", lambda: torchopt_fn(problem, "cg", k, alpha)),
                "betty": peer("betty", lambda: betty_fn(problem, "cg", k, alpha))}
    if method == "nystrom":
        return {"ours": ours(problem, Nystrom(rank=k, rho=rho, seed=0)),
                "hypergrad": peer("hypergrad", lambda: hypergrad_fn(problem, "nystrom", k, rho, seed=0)),
                "torchopt": "has no Nyström solver", "betty": "has no Nyström solver"}
    return {"ours": ours_unrolled(problem, k, alpha),
            "higher": peer("higher", lambda: higher_fn(problem, k, alpha))}


def profile(fn: Callable, label: str, rows: int = 8) -> None:
    from torch.profiler import ProfilerActivity, profile as torch_profile

    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    print(f"## profile: {label}")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    common.add_common_args(parser)
    parser.add_argument("--problems", nargs="+", default=["mlp", "cnn"])
    parser.add_argument("--ks", type=int, nargs="+", default=[5, 20])
    parser.add_argument("--methods", nargs="+", default=["neumann", "cg", "nystrom", "unrolled"])
    parser.add_argument("--rho", type=float, default=1e-1, help="Nyström ρ (default 0.1)")
    parser.add_argument("--pretrain", type=int, default=300)
    parser.add_argument("--profile", action="store_true", help="torch.profiler table for ours and the fastest peer")
    parser.set_defaults(repeats=3)
    args = parser.parse_args()
    device = common.header(args, "peers: same hypergradient, same run (bench/peers.py)")
    peers = import_peers()
    for name in PEERS:
        status = peers[name] if isinstance(peers[name], str) else f"version {getattr(peers[name], '__version__', '?')}"
        print(f"# {name}: {status}")

    for problem_name in args.problems:
        problem = common.build_problem(problem_name, device, pretrain=args.pretrain)
        alpha = common.neumann_alpha(problem)
        reference, described = common.reference_hypergradient(problem)
        print(f"\n## {problem_name}: {problem.num_weights:,} weights = hyperparameters; α = 1/λ_max = {alpha:.4g}; "
              f"ρ = {args.rho}; reference: {described}")
        print(f"{'method':<9}{'K':>4}  {'library':<10}{'ms':>9}  {'ours/theirs':<19}{'cos ref':>9}{'cos ours':>9}"
              f"{'peak MiB':>10}")
        for method in args.methods:
            for k in args.ks:
                entries = contenders(problem, peers, method, k, alpha, args.rho)
                runnable: dict[str, Callable] = {}
                outputs: dict[str, list[torch.Tensor]] = {}
                failures = {name: why for name, why in entries.items() if isinstance(why, str)}
                for name, fn in entries.items():
                    if isinstance(fn, str):
                        continue
                    try:
                        outputs[name] = [t.detach() for t in fn()]
                        runnable[name] = fn
                    except Exception as error:  # noqa: BLE001 - the reason goes into the table
                        failures[name] = f"fails: {type(error).__name__}: {str(error).splitlines()[0][:100]}"
                        traceback.print_exc(limit=2)
                peaks = {name: common.peak_mib(fn, device) for name, fn in runnable.items()}
                times = common.interleaved(runnable, args.repeats, device, warmup=0)
                for name in entries:
                    if name in failures:
                        print(f"{method:<9}{k:>4}  {name:<10}  -- {failures[name]}")
                        continue
                    r = "" if name == "ours" else str(common.ratio(times["ours"], times[name]))
                    print(f"{method:<9}{k:>4}  {name:<10}{common.median_ms(times[name]):>9.0f}  {r:<19}"
                          f"{common.cosine(outputs[name], reference):>9.4f}"
                          f"{common.cosine(outputs[name], outputs['ours']):>9.4f}{peaks[name]:>10.0f}")
                peer_times = {n: common.median_ms(t) for n, t in times.items() if n != "ours"}
                if args.profile and peer_times:
                    fastest = min(peer_times, key=peer_times.get)
                    profile(runnable["ours"], f"{problem_name} {method} K={k} ours")
                    profile(runnable[fastest], f"{problem_name} {method} K={k} {fastest}")
    common.footer()


if __name__ == "__main__":
    main()
