"""Batched (vmap) versus looped Hessian-vector products for k vectors (Nyström's and Exact's matmat).

For each problem (bench/common.py) and k in --ks: HessianOperator's batched product (one backward
with ``is_grads_batched=True``) against k sequential products through the same retained graph,
interleaved; prints the median per-repeat ratio batched/loop. This decides
``hybrid_hpo.implicit.operators.CPU_BATCH_MAX_NUMEL``.

    python bench/matmat.py [--problems logreg cnn mlp] [--ks 5 20] [--repeats 3] [--device cpu|cuda]
"""
from __future__ import annotations

import common  # noqa: I001  (sets OMP_WAIT_POLICY before torch loads)

import argparse

import torch

from hybrid_hpo.implicit import HessianOperator


def batched_vs_looped(problem, ks, repeats: int, device: torch.device) -> list[tuple[int, float, float, common.Ratio]]:
    """(k, batched ms, looped ms, batched/loop) per k: HessianOperator.matmat with one vmap-batched
    backward against k products through the same retained graph, interleaved. Raises RuntimeError
    when the batched backward itself fails (no vmap rule, out of memory), instead of timing matmat's
    silent fallback to the loop."""
    w = [t.detach().requires_grad_(True) for t in problem.params.values()]
    grads = torch.autograd.grad(problem.train_loss(dict(zip(problem.params, w)), problem.hparams), w,
                                create_graph=True)
    batched = HessianOperator(grads, w, batch_max_numel=None)
    looped = HessianOperator(grads, w, batch_max_numel=0)
    rows = []
    for k in ks:
        vs = [torch.randn(k, *t.shape, device=device, dtype=t.dtype) for t in w]
        batched._backward(vs, batched=True)  # the vmap path must work on its own
        times = common.interleaved({"batched": lambda: batched.matmat(vs), "loop": lambda: looped.matmat(vs)},
                                   repeats, device)
        rows.append((k, common.median_ms(times["batched"]), common.median_ms(times["loop"]),
                     common.ratio(times["batched"], times["loop"])))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    common.add_common_args(parser)
    parser.add_argument("--problems", nargs="+", default=["logreg", "cnn", "mlp"])
    parser.add_argument("--ks", type=int, nargs="+", default=[5, 20])
    parser.set_defaults(repeats=3)
    args = parser.parse_args()
    device = common.header(args, "batched versus looped HVPs (bench/matmat.py)")
    print(f"{'problem':<8}{'weights':>10}{'k':>4}{'batched ms':>12}{'loop ms':>10}  batched/loop")
    for name in args.problems:
        problem = common.build_problem(name, device, pretrain=0)
        for k, batched_ms, loop_ms, r in batched_vs_looped(problem, args.ks, args.repeats, device):
            print(f"{name:<8}{problem.num_weights:>10,}{k:>4}{batched_ms:>12.1f}{loop_ms:>10.1f}  {r}", flush=True)
    common.footer()


if __name__ == "__main__":
    main()
