"""Reproducer: which conjugate-gradient implementations solve a small SPD system correctly.

Problem (float64): L_T(w, λ) = ½ wᵀAw − λᵀw,  L_V(w, λ) = bᵀw,  A = Q diag(1..κ) Qᵀ (n × n, SPD).
Then H = A, ∂²L_T/∂w∂λ = −I and the hypergradient is exactly dL_V/dλ = A⁻¹b; n CG iterations
must reproduce torch.linalg.solve(A, b) up to rounding. Prints each library's relative error
after n and 2n iterations (run in the bench environment for the peers):

    /root/venv-bench/bin/python bench/cg_reproducer.py [--n 12] [--kappa 50]
"""
from __future__ import annotations

import common  # noqa: I001  (sets OMP_WAIT_POLICY before torch loads)

import argparse
import warnings

import torch

from hybrid_hpo import ConjugateGradient, hypergradient

warnings.filterwarnings("ignore")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=12)
    parser.add_argument("--kappa", type=float, default=50.0)
    args = parser.parse_args()
    generator = torch.Generator().manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(args.n, args.n, generator=generator, dtype=torch.float64))
    a = q @ torch.diag(torch.linspace(1.0, args.kappa, args.n, dtype=torch.float64)) @ q.T
    b = torch.randn(args.n, generator=generator, dtype=torch.float64)
    expected = torch.linalg.solve(a, b)

    def train_loss(p, h):
        return 0.5 * p["w"] @ a @ p["w"] - h["w"] @ p["w"]

    def val_loss(p, h):
        return b @ p["w"]

    w0 = {"w": torch.zeros(args.n, dtype=torch.float64)}
    lam = {"w": torch.zeros(args.n, dtype=torch.float64)}

    def error(x: torch.Tensor) -> float:
        return float(torch.linalg.vector_norm(x - expected) / torch.linalg.vector_norm(expected))

    runners = {"hybrid_hpo ConjugateGradient": lambda k: hypergradient(
        train_loss, val_loss, w0, lam, solver=ConjugateGradient(max_iter=k, rtol=0.0))["w"]}
    try:
        from hypergrad.approx_hypergrad import conjugate_gradient

        runners["hypergrad 0.0.1 conjugate_gradient(lr=1)"] = lambda k: conjugate_gradient(
            lambda w, h: train_loss({"w": w[0]}, {"w": h[0]}), lambda w, h: val_loss({"w": w[0]}, {"w": h[0]}),
            (w0["w"],), (lam["w"],), k, 1.0)[0]
    except Exception as e:  # noqa: BLE001
        print(f"hypergrad unavailable: {e}")
    try:
        from types import SimpleNamespace

        import betty.hypergradient  # noqa: F401
        from peers import betty_fn

        quadratic = SimpleNamespace(params=w0, hparams=lam, train_loss=train_loss, val_loss=val_loss)
        runners["betty 0.1.1 hypergradient.cg(cg_alpha=1)"] = lambda k: betty_fn(quadratic, "cg", k, 1.0)()[0]
    except Exception as e:  # noqa: BLE001
        print(f"betty unavailable: {e}")
    try:
        import torchopt

        runners["torchopt 0.7.3 linalg.cg"] = lambda k: torchopt.linalg.cg(lambda x: a @ x, b, maxiter=k, rtol=0.0)
    except Exception as e:  # noqa: BLE001
        print(f"torchopt unavailable: {e}")

    print(f"# SPD system n={args.n}, eigenvalues 1..{args.kappa:g}, float64; relative error to torch.linalg.solve")
    print(f"{'implementation':<44}{'K=n':>12}{'K=2n':>12}")
    for name, run in runners.items():
        print(f"{name:<44}{error(run(args.n)):>12.2e}{error(run(2 * args.n)):>12.2e}")


if __name__ == "__main__":
    main()
