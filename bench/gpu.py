"""The GPU benchmark of issue 12; ``bench/gpu.sh`` runs tests/test_cuda.py first, then this.

Prints, every number from this one run (timings interleaved, median of per-repeat ratios, range in
brackets; bench/common.py and bench/hypergrad_cost.py do the timing and the floor):
  1. hypergradient time / lean floor for Neumann and CG at K = 5 and 20, on the 1.1M-weight MLP
     (bench/common.py ``mlp``: digits, batch 256, as in BENCHMARKS.md section 2) and on ResNet-18
     with one decay per weight (11.2M λ) on CIFAR-shaped synthetic batches of 128;
  2. peak memory of Neumann and CG at K = 10 and K = 100 on both (CUDA: max_memory_allocated above
     the level before the call; CPU: the resident-set high-water mark, in-process, indicative);
  3. one hyper step (hypergradient with Neumann K = 5, then an Adam step on λ) at the largest
     per-weight-decay model that fits: an MLP 3072-W-W-10 on the synthetic batches with W growing
     until the device runs out of memory; seconds per hyper step and the λ count;
  4. batched (vmap) versus looped HessianOperator.matmat, the products Nyström (and Exact) use, and
     the ``CUDA_BATCH_MAX_NUMEL`` they call for (hybrid_hpo/implicit/operators.py);
  5. a 4-trial sweep on digits, 2 trials at a time, resources {cpu: 2, gpu: 0.5} (two trials share
     one GPU): every trial must end COMPLETE with test metrics in the Optuna study (else exit 1).

    python bench/gpu.py [--device cuda|cpu] [--quick] [--threads N] [--repeats N]

``--quick`` shrinks every size and K so that a CPU smoke run takes a couple of minutes; its numbers
are not the GPU's. With ``--device cpu`` the sweep asks for gpu: 0 (and says so).
"""
from __future__ import annotations

import common  # noqa: I001  (sets OMP_WAIT_POLICY before torch loads)

import argparse
import tempfile
import time
from dataclasses import dataclass

import torch

import hypergrad_cost
import matmat
from hybrid_hpo import Neumann, hypergradient
from hybrid_hpo.implicit import operators


@dataclass(frozen=True)
class Sizes:
    """What each section runs; ``FULL`` is the issue's, ``QUICK`` a CPU smoke run."""

    mlp_hidden: tuple[int, ...]
    resnet_batch: int
    floor_ks: tuple[int, ...]
    memory_ks: tuple[int, ...]
    widths: tuple[int, ...]  # MLP 3072-W-W-10 widths tried in order for the largest model
    matmat_problems: tuple[str, ...]
    matmat_ks: tuple[int, ...]
    sweep_hidden: tuple[int, ...]
    sweep_epochs: int
    sweep_cpus: float


FULL = Sizes(mlp_hidden=(1024, 1024), resnet_batch=128, floor_ks=(5, 20), memory_ks=(10, 100),
             widths=(8_700, 13_000, 19_000, 27_000, 38_000, 54_000),  # λ ≈ 0.10, 0.21, 0.42, 0.81, 1.6, 3.1 B
             matmat_problems=("logreg", "cnn", "mlp", "resnet18"), matmat_ks=(5, 20),
             sweep_hidden=(512, 256), sweep_epochs=5, sweep_cpus=2)
QUICK = Sizes(mlp_hidden=(256, 256), resnet_batch=2, floor_ks=(2,), memory_ks=(2, 8),
              widths=(64, 128), matmat_problems=("logreg", "mlp-small"), matmat_ks=(2, 5),
              sweep_hidden=(32,), sweep_epochs=2, sweep_cpus=1)
BATCH = 128  # CIFAR-shaped synthetic batch of the ResNet-18 and largest-model problems (full run)
LARGEST_TERMS = 5


def problems(device: torch.device, sizes: Sizes) -> dict[str, common.Problem]:
    return {"mlp": common.build_problem("mlp", device, pretrain=0, hidden=sizes.mlp_hidden),
            "resnet18": common.build_problem("resnet18", device, pretrain=0, batch=sizes.resnet_batch)}


def floor_ratios(named: dict[str, common.Problem], sizes: Sizes, repeats: int, device: torch.device) -> None:
    print(f"{'problem':<10}{'λ':>12}{'solver':>8}{'K':>4}{'ours ms':>10}{'floor ms':>10}  ours/floor")
    for name, problem in named.items():
        for k in sizes.floor_ks:
            solvers = hypergrad_cost.solvers_for(k)
            contenders = {"floor": lambda: hypergrad_cost.lean_floor(problem, k)}
            contenders.update({kind: hypergrad_cost.ours(problem, solvers[kind]) for kind in ("neumann", "cg")})
            times = common.interleaved(contenders, repeats, device)
            for kind in ("neumann", "cg"):
                print(f"{name:<10}{problem.num_weights:>12,}{kind:>8}{k:>4}{common.median_ms(times[kind]):>10.0f}"
                      f"{common.median_ms(times['floor']):>10.0f}  {common.ratio(times[kind], times['floor'])}",
                      flush=True)


def peak_memory(named: dict[str, common.Problem], sizes: Sizes, device: torch.device) -> None:
    low, high = sizes.memory_ks
    how = "max_memory_allocated" if device.type == "cuda" else "VmHWM in-process (indicative)"
    print(f"# peak MiB above the level before the call ({how})")
    for name, problem in named.items():
        for kind in ("neumann", "cg"):
            peaks = [common.peak_mib(hypergrad_cost.ours(problem, hypergrad_cost.solvers_for(k)[kind]), device)
                     for k in (low, high)]
            print(f"{name:<10}{kind:<8} K={low} {peaks[0]:8.0f} MiB   K={high} {peaks[1]:8.0f} MiB   "
                  f"K={high}/K={low} {peaks[1] / peaks[0]:.3f}", flush=True)


def largest_hyper_step(sizes: Sizes, batch: int, repeats: int, device: torch.device) -> None:
    """Grow the MLP's width until out of memory; time one hyper step at each width that fits."""
    print(f"# MLP 3072-W-W-10 tanh, CIFAR-shaped synthetic batch {batch}, one decay per weight; hyper step = "
          f"hypergradient (Neumann K={LARGEST_TERMS}) + Adam step on λ")
    print(f"{'W':>7}{'λ':>16}{'s / hyper step':>16}{'peak GiB':>10}  finite")
    largest = None
    for width in sizes.widths:
        try:
            result = _time_hyper_step(width, batch, repeats, device)
        except torch.OutOfMemoryError:
            print(f"{width:>7}  out of memory: stop")
            break
        finally:
            if device.type == "cuda":
                torch.cuda.empty_cache()
        count, seconds, peak_gib, finite = result
        print(f"{width:>7}{count:>16,}{seconds:>16.3f}{peak_gib:>10.1f}  {finite}", flush=True)
        largest = (count, seconds)
    if largest is not None:
        print(f"largest that fits: {largest[0]:,} hyperparameters in one trial, {largest[1]:.3f} s per hyper step"
              + ("" if device.type == "cuda" else " (CPU: widths of the --quick list only, no search for the limit)"))


def _time_hyper_step(width: int, batch: int, repeats: int, device: torch.device) -> tuple[int, float, float, bool]:
    problem = common.build_problem("mlp-cifar", device, pretrain=0, batch=batch, hidden=(width, width))
    with torch.no_grad():  # the losses substitute problem.params: free the model's own copy of the weights
        for parameter in problem.model.parameters():
            parameter.data = parameter.data.new_empty(0)
    lam = {k: t.clone().requires_grad_(True) for k, t in problem.hparams.items()}
    optimizer = torch.optim.Adam(lam.values(), lr=1e-3)
    solver = Neumann(terms=LARGEST_TERMS, alpha=1e-3)
    finite = []

    def hyper_step() -> None:
        grads, info = hypergradient(problem.train_loss, problem.val_loss, problem.params, lam, solver=solver,
                                    return_info=True)
        for name, tensor in lam.items():
            tensor.grad = grads[name]
        optimizer.step()
        finite.append(info.finite)

    with common.PeakMemory(device) as memory:
        times = common.interleaved({"step": hyper_step}, repeats, device)["step"]
    return problem.num_weights, sorted(times)[len(times) // 2], memory.mib / 1024, all(finite)


def batching(sizes: Sizes, repeats: int, device: torch.device) -> None:
    print(f"{'problem':<10}{'weights':>12}{'k':>4}{'batched ms':>12}{'loop ms':>10}  batched/loop")
    verdicts = []  # (weights, batched wins at every k)
    for name in sizes.matmat_problems:
        problem = common.build_problem(name, device, pretrain=0, batch=BATCH if name == "resnet18" else 256)
        try:
            rows = matmat.batched_vs_looped(problem, sizes.matmat_ks, repeats, device)
        except RuntimeError as error:  # no vmap rule, or out of memory: matmat would loop
            print(f"{name:<10}{problem.num_weights:>12,}  batched backward failed ({str(error).splitlines()[0][:80]})")
            verdicts.append((problem.num_weights, False))
            continue
        for k, batched_ms, loop_ms, r in rows:
            print(f"{name:<10}{problem.num_weights:>12,}{k:>4}{batched_ms:>12.1f}{loop_ms:>10.1f}  {r}", flush=True)
        verdicts.append((problem.num_weights, all(r.median < 1 for *_, r in rows)))
        del problem
    constant = "CUDA_BATCH_MAX_NUMEL" if device.type == "cuda" else "CPU_BATCH_MAX_NUMEL"
    current = getattr(operators, constant)
    print(f"{constant} these call for: {batch_threshold(verdicts)} (set now: {current})"
          + ("; --quick: one repeat on tiny problems, a smoke value, not a setting" if sizes is QUICK else ""))


def batch_threshold(verdicts: list[tuple[int, bool]]) -> str:
    """The largest weight count up to which batching won at every measured size: "None (always batch)"
    when it won everywhere, "0 (never batch)" when it lost at the smallest."""
    threshold = None
    for weights, batched_wins in sorted(verdicts):
        if not batched_wins:
            return "0 (never batch)" if threshold is None else f"{threshold:,} (batching lost at {weights:,} weights)"
        threshold = weights
    return "None (always batch)"


def fractional_sweep(sizes: Sizes, device: torch.device) -> bool:
    """4 trials, 2 at a time, each holding half a GPU (gpu 0 on the CPU); True when every trial of the
    study is COMPLETE with test metrics."""
    import optuna

    from hybrid_hpo.tune.plan import plan_sweep
    from hybrid_hpo.tune.spec import validate_spec
    from hybrid_hpo.tune.sweep import run_sweep

    gpu = 0.5 if device.type == "cuda" else 0.0
    if gpu == 0:
        print("# --device cpu: the trials ask for gpu: 0 (the fractional GPU share is exercised only on CUDA)")
    spec = validate_spec({
        "name": "gpu-fractional",
        "task": {"dataset": "digits", "model": "mlp", "hidden": list(sizes.sweep_hidden), "family": "weight_decay",
                 "granularity": "per_weight", "device": "auto"},
        "inner": {"epochs": sizes.sweep_epochs, "batch_size": 64},
        "solver": {"name": "neumann"},
        "search": {"inner_lr": {"type": "loguniform", "low": 0.01, "high": 0.3},
                   "hyper_lr": {"type": "loguniform", "low": 0.001, "high": 0.1}},
        "num_trials": 4, "max_concurrent": 2, "seed": 0, "checkpoint_every": 0,
        "resources": {"cpu": sizes.sweep_cpus, "gpu": gpu},
    })
    print(f"# resources per trial {{cpu: {sizes.sweep_cpus:g}, gpu: {gpu:g}}}, 4 trials, max_concurrent 2, "
          f"digits MLP {list(sizes.sweep_hidden)}, {sizes.sweep_epochs} epochs")
    with tempfile.TemporaryDirectory(prefix="gpu-sweep-") as results:
        outcome = run_sweep(spec, plan_sweep(spec, results_dir=results), verbose=False)
        trials = optuna.load_study(study_name=outcome.study_name, storage=outcome.storage_url).trials
    print(f"{'trial':>5}  {'state':<9}{'val_loss':>9}{'test_loss':>10}{'test_acc':>9}{'epochs':>7}")
    for t in trials:
        attrs = t.user_attrs
        print(f"{t.number:>5}  {t.state.name:<9}{_num(t.value):>9}{_num(attrs.get('test_loss')):>10}"
              f"{_num(attrs.get('test_acc')):>9}{attrs.get('epoch', '-'):>7}")
    complete = [t for t in trials if t.state.name == "COMPLETE" and "test_acc" in t.user_attrs]
    print(f"sweep: {len(complete)}/{len(trials)} trials COMPLETE with test metrics in the study; at most "
          f"{_most_at_once(trials)} ran at once; {outcome.errors} errors; wall {outcome.wall_s:.0f} s")
    return len(trials) == 4 and len(complete) == 4


def _num(value) -> str:
    return f"{value:.4f}" if isinstance(value, float) else "-"


def _most_at_once(trials) -> int:
    """Largest number of trials whose [start, complete] intervals overlap (from the study's times)."""
    events = sorted([(t.datetime_start, 1) for t in trials if t.datetime_start and t.datetime_complete]
                    + [(t.datetime_complete, -1) for t in trials if t.datetime_start and t.datetime_complete])
    running = most = 0
    for _, step in events:
        running += step
        most = max(most, running)
    return most


def section(title: str, run, *args) -> object:
    print(f"\n## {title}", flush=True)
    started = time.perf_counter()
    result = run(*args)
    print(f"# ({time.perf_counter() - started:.0f} s)", flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    common.add_common_args(parser)
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a CPU smoke run, not the GPU numbers")
    parser.set_defaults(device="cuda", repeats=3)
    args = parser.parse_args()
    if args.quick:
        args.repeats = 1
    sizes = QUICK if args.quick else FULL
    started = time.perf_counter()
    device = common.header(args, "GPU benchmark (bench/gpu.py)" + (" --quick: smoke sizes" if args.quick else ""))
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        print(f"# {props.name}: {props.total_memory / 2**30:.0f} GiB; TF32 matmul "
              f"{torch.backends.cuda.matmul.allow_tf32}, cuDNN TF32 {torch.backends.cudnn.allow_tf32}")
    named = problems(device, sizes)
    print(f"# mlp: 64-{'-'.join(map(str, sizes.mlp_hidden))}-10 tanh on digits, batch 256; resnet18: CIFAR stem, "
          f"synthetic 3x32x32 batch {sizes.resnet_batch}; one decay per weight (λ = weights)")
    section("1. hypergradient time / lean floor", floor_ratios, named, sizes, args.repeats, device)
    section(f"2. peak memory, K={sizes.memory_ks[0]} versus K={sizes.memory_ks[1]}", peak_memory, named, sizes, device)
    del named
    batch = BATCH if sizes is FULL else 8
    section("3. the largest per-weight-decay model that fits", largest_hyper_step, sizes, batch, args.repeats, device)
    section("4. batched versus looped HVPs (Nyström's matmat)", batching, sizes, args.repeats, device)
    ok = section("5. fractional-GPU sweep", fractional_sweep, sizes, device)
    print(f"\n# total {time.perf_counter() - started:.0f} s")
    common.footer()
    if not ok:
        raise SystemExit("fractional-GPU sweep: not every trial completed with test metrics (see above)")


if __name__ == "__main__":
    main()
