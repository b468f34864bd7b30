"""HessianOperator.matmat: the batched (vmap) and the looped paths give the same products and the
same Nyström hypergradient, so the size-based choice between them (a speed setting) is safe."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from hybrid_hpo import Nystrom, hypergradient
from hybrid_hpo.implicit import HessianOperator, operators


def _problem():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(5, 6), torch.nn.Tanh(), torch.nn.Linear(6, 3)).double()
    x, y = torch.randn(20, 5, dtype=torch.float64), torch.randint(0, 3, (20,))
    params = {k: p.detach() for k, p in model.named_parameters()}
    hparams = {k: torch.full_like(p, -2.0) for k, p in params.items()}

    def train_loss(p, h):
        penalty = sum((F.softplus(h[k]) * p[k].pow(2)).sum() for k in p)
        return F.cross_entropy(torch.func.functional_call(model, p, (x,)), y) + 0.5 * penalty

    def val_loss(p, h):
        return F.cross_entropy(torch.func.functional_call(model, p, (x[:10],)), y[:10])

    return train_loss, val_loss, params, hparams


def test_batched_and_looped_matmat_agree():
    train_loss, _, params, hparams = _problem()
    weights = [p.clone().requires_grad_(True) for p in params.values()]
    grads = torch.autograd.grad(train_loss(dict(zip(params, weights)), hparams), weights, create_graph=True)
    vs = [torch.randn(4, *w.shape, dtype=torch.float64) for w in weights]
    batched = HessianOperator(grads, weights, batch_max_numel=None).matmat(vs)
    looped = HessianOperator(grads, weights, batch_max_numel=0).matmat(vs)
    assert all(b.shape == (4, *w.shape) for b, w in zip(batched, weights))
    assert all(torch.allclose(b, lo, atol=1e-13) for b, lo in zip(batched, looped))


def test_auto_threshold_picks_the_loop_above_it_on_cpu(monkeypatch):
    train_loss, val_loss, params, hparams = _problem()
    solver = Nystrom(rank=8, rho=0.1)
    batched = hypergradient(train_loss, val_loss, params, hparams, solver=solver)
    monkeypatch.setattr(operators, "CPU_BATCH_MAX_NUMEL", 0)
    weights = [p.clone().requires_grad_(True) for p in params.values()]
    grads = torch.autograd.grad(train_loss(dict(zip(params, weights)), hparams), weights, create_graph=True)
    assert HessianOperator(grads, weights)._batched is False
    looped = hypergradient(train_loss, val_loss, params, hparams, solver=solver)
    assert all(torch.allclose(batched[k], looped[k], atol=1e-12) for k in hparams)
    assert any(g.abs().max() > 1e-6 for g in looped.values())
