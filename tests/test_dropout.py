"""UnitDropout: Gaussian dropout with one rate per unit — noise statistics, reproducibility, no
dropout at prediction, IFT hypergradients against finite differences (MLP and LSTM language
model, fixed noise draw, strong L2), and end-to-end bilevel runs."""
import math

import pytest
import torch
import torch.nn.functional as F
from ift_check import directional_fd, inner, lbfgs_warm_start, newton_minimize

from hybrid_hpo.errors import ConfigError
from hybrid_hpo.hyper.base import GENERATOR_KEY
from hybrid_hpo.hyper.dropout import PICTURE, UnitDropout
from hybrid_hpo.implicit import Exact, hypergradient
from hybrid_hpo.models import build_model
from hybrid_hpo.nn import dropout_sites


def _family(name, input_shape, hidden, classes, init=0.2, dtype=torch.float32, seed=0):
    torch.manual_seed(seed)
    model = build_model(name, input_shape=input_shape, num_classes=classes, hidden=hidden, activation="tanh")
    model = model.to(dtype)
    params = {k: v.detach().clone() for k, v in model.named_parameters()}
    buffers = {k: v.to(dtype) for k, v in model.named_buffers()}
    sites = dropout_sites(model)
    family = UnitDropout(sites, like=next(iter(params.values())), init_dropout=init, seed=seed)
    fn = lambda p, x: torch.func.functional_call(model, {**buffers, **p}, (x,))  # noqa: E731
    return model, params, family, fn


def test_sites_rates_and_noise_statistics():
    _, _, family, _ = _family("mlp", (1, 8, 8), (32, 16), 10, init=0.3)
    assert set(family.hparams()) == {"3.scale", "6.scale"} and family.num_hparams == 48
    for p in family.rates(family.hparams()).values():
        torch.testing.assert_close(p, torch.full_like(p, 0.3))
    scale = family.scales({k: v.detach() for k, v in family.hparams().items()}, 20000)["3.scale"]
    assert scale.shape == (20000, 32)
    # Gaussian dropout: mean 1, variance p / (1 - p) = 3/7, per unit
    assert scale.mean(dim=0).sub(1).abs().max() < 0.03
    assert scale.var(dim=0).sub(0.3 / 0.7).abs().max() < 0.04


def test_prediction_has_no_dropout_and_training_noise_is_reproducible():
    model, params, family, fn = _family("mlp", (1, 8, 8), (32,), 10, init=0.5)
    x, y = torch.rand(16, 1, 8, 8), torch.arange(16) % 10
    lam = {k: v.detach() for k, v in family.hparams().items()}
    torch.testing.assert_close(family.predict(fn, params, lam, x), model(x))
    state = family.generator.get_state()
    first = family.train_loss(fn, params, lam, (x, y, torch.arange(16)))
    second = family.train_loss(fn, params, lam, (x, y, torch.arange(16)))
    assert first.item() != second.item()  # a fresh draw per call
    family.generator.set_state(state)
    assert family.train_loss(fn, params, lam, (x, y, torch.arange(16))).item() == first.item()
    family.generator.set_state(state)  # the loss by hand: CE of the model with the scaled activations
    scale = 1.0 + torch.exp(0.5 * lam["3.scale"]) * torch.randn((16, 32), generator=family.generator)
    hidden = torch.tanh(F.linear(x.flatten(1), params["1.weight"], params["1.bias"]))
    logits = F.linear(hidden * scale, params["4.weight"], params["4.bias"])
    assert first.item() == pytest.approx(F.cross_entropy(logits, y).item(), rel=1e-6)
    assert (logits - model(x)).abs().max() > 0.05  # the noise is not negligible


def _fd_check(name, input_shape, hidden, classes, x_train, y_train, x_val, y_val, l2, directions=3):
    """IFT (Exact solver) at the Newton-exact w*(λ) versus central differences, one fixed noise draw."""
    _, params, family, fn = _family(name, input_shape, hidden, classes, dtype=torch.float64, seed=1)
    generator = torch.Generator().manual_seed(5)
    lam = {k: -1.0 + 0.5 * torch.randn(v.shape, generator=generator, dtype=torch.float64)
           for k, v in family.hparams().items()}
    draw = family.generator.get_state()
    n, m = len(y_train), len(y_val)

    def train_loss(w, hp):
        family.generator.set_state(draw)  # the same ε in every evaluation: L_T is a function of (w, λ)
        loss = family.train_loss(fn, w, hp, (x_train, y_train, torch.arange(n)))
        return loss + 0.5 * l2 * sum((t**2).sum() for t in w.values())

    def val_loss(w, hp):
        return family.val_loss(fn, w, hp, (x_val, y_val, torch.arange(m)))

    w_star = newton_minimize(train_loss, lbfgs_warm_start(train_loss, params, lam), lam)
    grads = hypergradient(train_loss, val_loss, w_star, lam, solver=Exact())
    assert max(g.abs().max() for g in grads.values()) > 1e-5
    for _ in range(directions):
        direction = {k: torch.randn(v.shape, generator=generator, dtype=torch.float64) for k, v in lam.items()}
        fd = directional_fd(train_loss, val_loss, w_star, lam, direction, eps=1e-4)
        assert inner(grads, direction) == pytest.approx(fd, rel=1e-4, abs=1e-10)


def test_mlp_hypergradient_matches_finite_differences():
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(40, 6, generator=generator, dtype=torch.float64)
    y = torch.arange(40) % 3
    _fd_check("mlp", (6,), (4,), 3, x[:24], y[:24], x[24:], y[24:], l2=0.05)


def test_lstm_lm_hypergradient_matches_finite_differences():
    generator = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, 4, (10, 6), generator=generator)
    _fd_check("lstm_lm", (5,), (3,), 4, tokens[:6, :5], tokens[:6, 1:], tokens[6:, :5], tokens[6:, 1:], l2=0.05,
              directions=2)


def test_summaries_state_and_picture(tmp_path):
    _, _, family, _ = _family("lstm_lm", (8,), (6,), 5, init=0.1)
    with torch.no_grad():
        family.hparams()["output_gate.scale"].fill_(0.0)  # p = 1/2
    stats = family.summaries({})
    assert stats["dropout_mean_output_gate"] == pytest.approx(0.5)
    assert stats["dropout_mean_embed_gate"] == pytest.approx(0.1)
    assert stats["dropout_max"] == pytest.approx(0.5) and stats["dropout_min"] == pytest.approx(0.1)
    assert stats["dropout_mean"] == pytest.approx(0.3)

    state = family.state_dict()
    assert GENERATOR_KEY in state
    _, _, other, _ = _family("lstm_lm", (8,), (6,), 5, init=0.4, seed=9)
    other.load_state_dict(state)
    assert torch.equal(other.hparams()["output_gate.scale"], torch.zeros(6))
    assert torch.equal(other.generator.get_state(), family.generator.get_state())
    (path,) = family.render({}, tmp_path)
    assert path == tmp_path / PICTURE and path.read_bytes()[:4] == b"\x89PNG"


def test_bad_settings():
    with pytest.raises(ConfigError, match="init_dropout"):
        UnitDropout({"3.scale": (4,)}, like=torch.zeros(1), init_dropout=1.0)
    with pytest.raises(ConfigError, match="model"):
        UnitDropout({}, like=torch.zeros(1))
    from hybrid_hpo.config import RunConfig

    with pytest.raises(ConfigError, match="model"):
        RunConfig.from_mapping({"family": "dropout", "model": "cnn"})


@pytest.mark.parametrize("settings", [
    {"dataset": "digits", "model": "mlp", "hidden": [64], "train_size": 200, "val_size": 100},
    {"dataset": "text", "model": "lstm_lm", "hidden": [32], "train_size": 128, "val_size": 64,
     "batch_size": 32},
])
def test_bilevel_end_to_end(settings):
    from hybrid_hpo.bilevel import BilevelTrainer
    from hybrid_hpo.config import RunConfig

    config = RunConfig.from_mapping({
        "family": "dropout", "init_dropout": 0.2, "solver": "neumann", "solver.terms": 3, "solver.alpha": 0.1,
        "inner_lr": 0.1, "hyper_lr": 0.05, "epochs": 2, "inner_steps": 1, "device": "cpu",
        "val_fraction": 0.2, **settings,
    })
    trainer = BilevelTrainer(config)
    start = {k: v.detach().clone() for k, v in trainer.family.hparams().items()}
    last = trainer.fit(progress=False)[-1]
    # diverged solves (the Hessian is indefinite early on) are rejected by default; the rest are applied
    assert last["rejected_hyper_steps"] == last["solver_diverged_steps"] < last["hyper_steps"]
    assert all(math.isfinite(last[k]) for k in ("val_loss", "test_loss", "hypergrad_norm", "dropout_mean"))
    assert any(not torch.equal(start[k], v) for k, v in trainer.family.hparams().items())
    assert 0.0 <= last["test_acc"] <= 1.0  # accuracy per token for the language model
