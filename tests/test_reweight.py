"""Reweight: per-example loss weights — the loss, the IFT hypergradient against finite differences
of λ ↦ L_V(w*(λ)) on a tiny strongly convex instance, and an end-to-end bilevel run."""
import math

import pytest
import torch
import torch.nn.functional as F
from ift_check import directional_fd, inner, newton_minimize

from hybrid_hpo.errors import ConfigError
from hybrid_hpo.hyper.reweight import PICTURE, Reweight
from hybrid_hpo.implicit import ConjugateGradient, Exact, hypergradient
from hybrid_hpo.models import build_model


def _logreg_problem(n_train=12, n_val=9, dim=4, classes=3, l2=0.1, seed=0):
    """Tiny float64 logistic regression; L_T = weighted CE + fixed L2 (strongly convex in w)."""
    generator = torch.Generator().manual_seed(seed)
    model = build_model("logreg", input_shape=(dim,), num_classes=classes).double()
    params = {k: v.detach().clone() for k, v in model.named_parameters()}
    xt = torch.randn(n_train, dim, generator=generator, dtype=torch.float64)
    yt = torch.arange(n_train) % classes
    xv = torch.randn(n_val, dim, generator=generator, dtype=torch.float64)
    yv = torch.arange(n_val) % classes
    family = Reweight(n_train, like=params["1.weight"])
    fn = lambda p, x: torch.func.functional_call(model, p, (x,))  # noqa: E731
    train_batch = (xt, yt, torch.arange(n_train))

    def train_loss(w, lam):
        return family.train_loss(fn, w, lam, train_batch) + 0.5 * l2 * sum((t**2).sum() for t in w.values())

    def val_loss(w, lam):
        return family.val_loss(fn, w, lam, (xv, yv, torch.arange(n_val)))

    lam = {"weight": torch.randn(n_train, generator=generator, dtype=torch.float64)}
    return family, fn, params, lam, train_loss, val_loss, train_batch, generator


def test_weighted_mean_loss_by_hand():
    family, fn, params, lam, _, _, (x, y, index), _ = _logreg_problem()
    subset = index[[1, 4, 7, 10]]
    loss = family.train_loss(fn, params, lam, (x[subset], y[subset], subset))
    ce = F.cross_entropy(fn(params, x[subset]), y[subset], reduction="none")
    s = 1.0 / (1.0 + torch.exp(-lam["weight"][subset]))
    assert loss.item() == pytest.approx(float((s * ce).sum() / s.sum()), rel=1e-12)
    # λ = 0 (the initial value) is the unweighted mean
    assert torch.equal(family.hparams()["weight"], torch.zeros(12, dtype=torch.float64))
    plain = family.train_loss(fn, params, family.hparams(), (x, y, index))
    assert plain.item() == pytest.approx(F.cross_entropy(fn(params, x), y).item(), rel=1e-12)


def test_hypergradient_matches_finite_differences():
    family, _, params, lam, train_loss, val_loss, _, generator = _logreg_problem()
    w_star = newton_minimize(train_loss, params, lam)
    exact = hypergradient(train_loss, val_loss, w_star, lam, solver=Exact())
    cg = hypergradient(train_loss, val_loss, w_star, lam, solver=ConjugateGradient(max_iter=200, rtol=1e-13))
    assert exact["weight"].abs().max() > 1e-4  # a non-trivial gradient
    torch.testing.assert_close(cg["weight"], exact["weight"], rtol=1e-7, atol=1e-10)
    for _ in range(3):
        direction = {"weight": torch.randn(12, generator=generator, dtype=torch.float64)}
        fd = directional_fd(train_loss, val_loss, w_star, lam, direction, eps=1e-4)
        assert inner(exact, direction) == pytest.approx(fd, rel=1e-4, abs=1e-10)


def test_hypergradient_detects_a_wrong_sign():
    """The check above can fail: the FD of the *negated* direction has the opposite sign."""
    family, _, params, lam, train_loss, val_loss, _, generator = _logreg_problem(seed=3)
    w_star = newton_minimize(train_loss, params, lam)
    exact = hypergradient(train_loss, val_loss, w_star, lam, solver=Exact())
    direction = {"weight": torch.randn(12, generator=generator, dtype=torch.float64)}
    fd = directional_fd(train_loss, val_loss, w_star, lam, {"weight": -direction["weight"]})
    assert inner(exact, direction) == pytest.approx(-fd, rel=1e-4)
    assert abs(fd) > 1e-6


def test_summaries_class_weights_and_picture(tmp_path):
    family = Reweight(6, like=torch.zeros(1))
    with torch.no_grad():
        family.hparams()["weight"].copy_(torch.tensor([0.0, 0.0, 2.0, 2.0, -2.0, math.log(3.0)]))
    stats = family.summaries({})
    s = torch.sigmoid(torch.tensor([0.0, 0.0, 2.0, 2.0, -2.0, math.log(3.0)]))
    assert stats["example_weight_max"] == pytest.approx(float(s.max()))
    assert stats["example_weight_min"] == pytest.approx(float(s.min()))
    assert stats["example_weight_ess"] == pytest.approx(float(s.sum() ** 2 / (s**2).sum() / 6))
    by_class = family.class_weights(torch.tensor([0, 0, 1, 1, 2, 2]))
    assert sorted(by_class) == [0, 1, 2]
    torch.testing.assert_close(by_class[2], torch.tensor([float(s[4]), 0.75]))

    from hybrid_hpo.data import load_dataset

    data = load_dataset("digits", val_fraction=0.5, train_size=40, val_size=20)
    family = Reweight(len(data.train), like=torch.zeros(1))
    (path,) = family.render({}, tmp_path, data)
    assert path == tmp_path / PICTURE and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert family.render({}, tmp_path, None) == []


def test_bad_size():
    with pytest.raises(ConfigError, match="num_train"):
        Reweight(0, like=torch.zeros(1))


def test_bilevel_end_to_end_on_imbalanced_digits():
    from hybrid_hpo.bilevel import BilevelTrainer
    from hybrid_hpo.config import RunConfig

    config = RunConfig.from_mapping({
        "dataset": "digits", "imbalance": 10, "val_fraction": 0.2, "model": "logreg", "family": "reweight",
        "solver": "cg", "solver.max_iter": 10, "inner_lr": 0.3, "hyper_lr": 0.1, "epochs": 2, "inner_steps": 2,
        "batch_size": 64, "device": "cpu", "seed": 1,
    })
    trainer = BilevelTrainer(config)
    counts = torch.bincount(trainer.data.train.y, minlength=10)
    assert counts[0] > 9 * counts[9]  # imbalanced train split
    history = trainer.fit(progress=False)
    last = history[-1]
    assert last["num_hparams"] == len(trainer.data.train)
    assert last["rejected_hyper_steps"] == 0 and last["hyper_steps"] > 0
    moved = trainer.family.hparams()["weight"].detach()
    assert (moved != 0).sum() > 0.5 * len(moved)  # the hyper steps moved most weights
    assert 0.0 <= last["test_balanced_acc"] <= 1.0 and last["test_acc"] > 0.5
