"""Time to a target validation loss: our BilevelTrainer against the peers' own training loops.

Run it in the bench environment, where the peers are installed (see BENCHMARKS.md):

    /work/venv-bench/bin/python bench/peers_loop.py [--epochs 30] [--repeats 3] [--hidden 256 128]

The same bilevel problem for every contender: sklearn digits split by our loader (seed s: 718
train / 719 validation examples), our built-in ``mlp`` (64-hidden-10, ReLU; one initialisation
per seed, copied to each contender), one weight decay per weight of every weight matrix
(decay = softplus(λ), λ₀ = softplus⁻¹(1e-3)),

    L_T(w, λ) = mean CE(f_w(x), y) + ½ Σ softplus(λ) ⊙ w²,     L_V(w) = mean CE(f_w(x_val), y_val),

mini-batches of 64, the weights by SGD with momentum 0.9 (lr 0.1), λ by Adam (lr 0.03), one hyper
step after every ``inner_steps`` (2) weight steps, K Hessian-vector products per hyper step:

  ours      hybrid_hpo.BilevelTrainer (the library's loop: a fresh train and validation batch per
            hyper step, IFT hypergradient with the configured solver);
  betty     betty.engine.Engine with two ImplicitProblems (inner: the weights, ``unroll_steps`` =
            inner_steps, ``type="neumann"``; outer: λ on validation batches), as its docs show;
  torchopt  torchopt.diff.implicit.custom_root (optimality ∂L_T/∂w = 0, solve_inv(ns=True)) driven
            by a hand loop of the same shape, as its implicit-differentiation examples show.

Every contender trains for ``--epochs`` passes of the training split; after each pass (a pass =
ceil(718/64) weight steps, the clock paused) the full validation loss is measured. The target is
the worst contender's best validation loss of that repeat, so every contender reaches it; the
time to target is the training wall time until a contender's validation loss first falls to it.
Each library runs at its best settings from the grid ``--settings`` (K Neumann terms, α), chosen
by its own median time to target. Repeats are interleaved (ours, betty, torchopt, ours, ...) so
load drifts hit all alike; the table gives medians and the median per-repeat ratio peer / ours.
``--clock cpu`` times by the process's CPU time instead of the wall clock (one thread: on a machine
loaded by others, what the loop would take alone on a core).
"""
from __future__ import annotations

import common  # noqa: I001  (sets OMP_WAIT_POLICY before torch loads)

import argparse
import copy
import logging
import math
import statistics
import time
import traceback
import warnings
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hybrid_hpo.bilevel import BilevelTrainer
from hybrid_hpo.config import RunConfig
from hybrid_hpo.hyper.weight_decay import inverse_softplus

warnings.filterwarnings("ignore")  # the peers' deprecation warnings

INIT_DECAY, INNER_LR, HYPER_LR, BATCH = 1e-3, 0.1, 0.03, 64
CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}
_clock = [time.perf_counter]  # set by --clock


def now() -> float:
    """Seconds on the chosen clock: wall (perf_counter) or this process's CPU time (process_time:
    with one thread, the wall time the loop would take on an idle core, whatever else loads the machine)."""
    return _clock[0]()


@dataclass
class Curve:
    """One run of one contender: training seconds and validation loss after each pass."""

    times: list[float] = field(default_factory=list)
    val_losses: list[float] = field(default_factory=list)

    def time_to(self, target: float) -> float:
        for seconds, loss in zip(self.times, self.val_losses):
            if loss <= target:
                return seconds
        return math.inf


@dataclass
class Setup:
    """What every contender shares for one seed: the config, the initial model and the splits."""

    config: RunConfig
    model: nn.Module
    x_train: Tensor
    y_train: Tensor
    x_val: Tensor
    y_val: Tensor

    @property
    def steps_per_pass(self) -> int:
        return math.ceil(len(self.y_train) / BATCH)

    def val_loss(self, model: nn.Module) -> float:
        with torch.no_grad():
            return float(F.cross_entropy(model(self.x_val), self.y_val))

    def fresh(self) -> tuple[nn.Module, dict[str, Tensor]]:
        """A copy of the initial model and λ₀ for every weight matrix."""
        model = copy.deepcopy(self.model)
        raw = inverse_softplus(INIT_DECAY)
        lam = {n: torch.full_like(p, raw).requires_grad_(True) for n, p in model.named_parameters() if p.ndim >= 2}
        return model, lam


def make_setup(seed: int, hidden: list[int], inner_steps: int) -> Setup:
    config = RunConfig.from_mapping({
        "dataset": "digits", "model": "mlp", "hidden": hidden, "family": "weight_decay", "granularity": "per_weight",
        "init_decay": INIT_DECAY, "inner_optimizer": "momentum", "inner_lr": INNER_LR, "hyper_optimizer": "adam",
        "hyper_lr": HYPER_LR, "batch_size": BATCH, "inner_steps": inner_steps, "seed": seed, "device": "cpu",
        "val_fraction": 0.5})
    trainer = BilevelTrainer(config)
    data = trainer.data
    return Setup(config, copy.deepcopy(trainer.model), data.train.x, data.train.y, data.val.x, data.val.y)


def penalty(model: nn.Module, lam: dict[str, Tensor]) -> Tensor:
    params = dict(model.named_parameters())
    return 0.5 * sum((F.softplus(lam[n]) * params[n].square()).sum() for n in lam)


# ------------------------------------------------------------------------------ the contenders

def run_ours(setup: Setup, epochs: int, solver: dict) -> Curve:
    """Our BilevelTrainer; the clock excludes its per-epoch evaluation and summaries' evaluation."""
    config = RunConfig.from_mapping({**setup.config.to_dict(), **{f"solver.{k}": v for k, v in solver.items()}})
    trainer = BilevelTrainer(config)
    trainer.model.load_state_dict(setup.model.state_dict())
    evaluate, spent = trainer._evaluate, [0.0]

    def timed_evaluate():
        start = now()
        metrics = evaluate()
        spent[0] += now() - start
        return metrics

    trainer._evaluate = timed_evaluate
    curve, clock = Curve(), 0.0
    for _ in range(epochs):
        spent[0] = 0.0
        start = now()
        metrics = trainer.train_epoch()
        clock += now() - start - spent[0]
        curve.times.append(clock)
        curve.val_losses.append(metrics["val_loss"])
    return curve


def run_torchopt(setup: Setup, epochs: int, solver: dict) -> Curve:
    """torchopt's implicit layer in a hand loop: inner_steps SGD steps, then dL_V/dλ through
    custom_root (optimality ∂L_T/∂w = 0 on a fresh train batch) and an Adam step on λ."""
    import torchopt

    model, lam = setup.fresh()
    names = [n for n, _ in model.named_parameters()]
    inner_opt = torch.optim.SGD(model.parameters(), lr=INNER_LR, momentum=0.9)
    hyper_opt = torch.optim.Adam(lam.values(), lr=HYPER_LR)
    solve = torchopt.linear_solve.solve_inv(ns=True, maxiter=solver["terms"], alpha=solver["alpha"])
    generator = torch.Generator().manual_seed(setup.config.seed)

    def fn(ws, x):
        return torch.func.functional_call(model, dict(zip(names, ws)), (x,))

    def train_loss(ws, lam_values, x, y):
        params = dict(zip(names, ws))
        return F.cross_entropy(fn(ws, x), y) + 0.5 * sum(
            (F.softplus(l) * params[n].square()).sum() for n, l in zip(lam, lam_values))

    def hyper_step():
        ti = torch.randperm(len(setup.y_train), generator=generator)[:BATCH]
        vi = torch.randperm(len(setup.y_val), generator=generator)[:BATCH]
        xt, yt, xv, yv = setup.x_train[ti], setup.y_train[ti], setup.x_val[vi], setup.y_val[vi]

        def optimality(ws, lam_values):
            return torch.func.grad(lambda w: train_loss(w, lam_values, xt, yt))(ws)

        @torchopt.diff.implicit.custom_root(optimality, argnums=1, solve=solve)
        def inner_solution(ws, lam_values):
            return ws

        w_star = inner_solution(tuple(p.detach() for p in model.parameters()), tuple(lam.values()))
        grads = torch.autograd.grad(F.cross_entropy(fn(w_star, xv), yv), tuple(lam.values()))
        for leaf, grad in zip(lam.values(), grads):
            leaf.grad = grad
        hyper_opt.step()
        hyper_opt.zero_grad(set_to_none=True)

    return _hand_loop(setup, epochs, model, lam, inner_opt, hyper_step, generator)


def _hand_loop(setup, epochs, model, lam, inner_opt, hyper_step, generator) -> Curve:
    """Epochs of shuffled mini-batches: a weight step on each, a hyper step after every inner_steps."""
    curve, clock, count = Curve(), 0.0, 0
    for _ in range(epochs):
        start = now()
        for index in torch.randperm(len(setup.y_train), generator=generator).split(BATCH):
            x, y = setup.x_train[index], setup.y_train[index]
            detached = {n: t.detach() for n, t in lam.items()}
            loss = F.cross_entropy(model(x), y) + penalty(model, detached)
            inner_opt.zero_grad(set_to_none=True)
            loss.backward()
            inner_opt.step()
            count += 1
            if count % setup.config.inner_steps == 0:
                hyper_step()
        clock += now() - start
        curve.times.append(clock)
        curve.val_losses.append(setup.val_loss(model))
    return curve


def run_betty(setup: Setup, epochs: int, solver: dict) -> Curve:
    """betty's Engine with an inner problem (weights) and an outer problem (λ), Neumann hypergradient."""
    from betty.configs import Config, EngineConfig
    from betty.engine import Engine
    from betty.problems import ImplicitProblem

    model, lam = setup.fresh()
    generator = torch.Generator().manual_seed(setup.config.seed)

    class Decays(nn.Module):
        def __init__(self):
            super().__init__()
            self.raw = nn.ParameterList([nn.Parameter(t.detach().clone()) for t in lam.values()])

    decays = Decays()
    decayed = list(lam)

    class Batches:
        """An endless loader of shuffled mini-batches of one split (betty pulls with next())."""

        def __init__(self, x, y):
            self.x, self.y = x, y

        def __iter__(self):
            while True:
                for index in torch.randperm(len(self.y), generator=generator).split(BATCH):
                    yield self.x[index], self.y[index]

    class Inner(ImplicitProblem):
        def training_step(self, batch):
            x, y = batch
            params = dict(self.module.named_parameters())
            reg = 0.5 * sum((F.softplus(r) * params[n].square()).sum() for n, r in zip(decayed, self.outer.module.raw))
            return F.cross_entropy(self.module(x), y) + reg

    class Outer(ImplicitProblem):
        def training_step(self, batch):
            x, y = batch
            return F.cross_entropy(self.inner(x), y)

    inner_steps = setup.config.inner_steps
    inner = Inner(name="inner", module=model, optimizer=torch.optim.SGD(model.parameters(), lr=INNER_LR, momentum=0.9),
                  train_data_loader=Batches(setup.x_train, setup.y_train),
                  config=Config(type="neumann", unroll_steps=inner_steps, neumann_iterations=solver["terms"],
                                neumann_alpha=solver["alpha"]))
    outer = Outer(name="outer", module=decays, optimizer=torch.optim.Adam(decays.parameters(), lr=HYPER_LR),
                  train_data_loader=Batches(setup.x_val, setup.y_val), config=Config())
    curve = Curve()
    logging.disable(logging.INFO)  # betty logs its problem graph at INFO on every Engine
    engine = Engine(problems=[outer, inner], config=EngineConfig(train_iters=setup.steps_per_pass, logger_type="none"),
                    dependencies={"l2u": {inner: [outer]}, "u2l": {outer: [inner]}})
    clock = 0.0
    for _ in range(epochs):
        start = now()
        engine.train_iters = setup.steps_per_pass
        engine.run()
        clock += now() - start
        curve.times.append(clock)
        curve.val_losses.append(setup.val_loss(model))
    return curve


CONTENDERS = {"ours": run_ours, "betty": run_betty, "torchopt": run_torchopt}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    common.add_common_args(parser, threads=1)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--hidden", type=int, nargs="+", default=[256, 128])
    parser.add_argument("--inner-steps", type=int, default=2)
    parser.add_argument("--settings", nargs="+", default=["1:0.1", "5:0.1"],
                        help="Neumann grid K:alpha, each library runs at its best (default 1:0.1 5:0.1)")
    parser.add_argument("--clock", choices=list(CLOCKS), default="wall",
                        help="wall time, or the process's CPU time (on a loaded machine; default wall)")
    parser.add_argument("--contenders", nargs="+", default=list(CONTENDERS), choices=list(CONTENDERS))
    parser.set_defaults(repeats=3)
    args = parser.parse_args()
    common.header(args, "time to a target validation loss: our loop against the peers' loops (bench/peers_loop.py)")
    _clock[0] = CLOCKS[args.clock]
    grid = [{"terms": int(k), "alpha": float(a)} for k, a in (s.split(":") for s in args.settings)]
    print(f"# problem: digits, mlp 64-{'-'.join(map(str, args.hidden))}-10 relu, per-weight decay, batch {BATCH}, "
          f"SGD momentum {INNER_LR} / Adam {HYPER_LR}, inner_steps {args.inner_steps}, {args.epochs} passes, "
          f"grid {args.settings}, {args.repeats} interleaved repeats (seed = repeat), {args.clock} clock")
    curves: dict[tuple[str, str], list[Curve]] = {}
    for repeat in range(args.repeats):
        setup = make_setup(repeat, args.hidden, args.inner_steps)
        for solver in grid:
            for name in args.contenders:
                key = (name, f"K={solver['terms']} α={solver['alpha']:g}")
                try:
                    curve = CONTENDERS[name](setup, args.epochs, solver)
                except Exception as error:  # noqa: BLE001 - the reason goes into the table
                    traceback.print_exc()
                    print(f"# {name} {key[1]}: failed: {type(error).__name__}: {str(error).splitlines()[0][:160]}")
                    continue
                curves.setdefault(key, []).append(curve)
                print(f"#   repeat {repeat} {name:8s} {key[1]}: {curve.times[-1]:6.1f} s for {args.epochs} passes, "
                      f"best val loss {min(curve.val_losses):.4f}", flush=True)
    report(curves, args.repeats)
    common.footer()


def report(curves: dict[tuple[str, str], list[Curve]], repeats: int) -> None:
    """Per repeat the target (worst best loss over every run), then per contender at its best grid
    point: median time to target, median val loss at the end, median ratio peer / ours."""
    targets = [max(min(c[r].val_losses) for c in curves.values() if len(c) > r) for r in range(repeats)]
    print(f"# targets per repeat (the worst contender's best validation loss): {', '.join(f'{t:.4f}' for t in targets)}")
    print("| library | settings | median time to target (s) | median s per pass | final val loss | ratio to ours |")
    print("|---|---|---|---|---|---|")
    best: dict[str, tuple[str, list[float]]] = {}
    for (name, settings), runs in curves.items():
        to_target = [run.time_to(targets[r]) for r, run in enumerate(runs)]
        if name not in best or statistics.median(to_target) < statistics.median(best[name][1]):
            best[name] = (settings, to_target)
    ours = best.get("ours")
    for name, (settings, to_target) in best.items():
        runs = curves[(name, settings)]
        per_pass = statistics.median(run.times[-1] / len(run.times) for run in runs)
        final = statistics.median(run.val_losses[-1] for run in runs)
        ratio = "—" if ours is None or name == "ours" else \
            f"{statistics.median(t / o for t, o in zip(to_target, ours[1])):.2f}x"
        print(f"| {name} | {settings} | {statistics.median(to_target):.2f} | {per_pass:.3f} | {final:.4f} | {ratio} |")


if __name__ == "__main__":
    main()
