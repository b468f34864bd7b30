"""WeightDecay: positive decays, λ counts per granularity, the penalty's value."""
import math

import pytest
import torch
import torch.nn.functional as F

from hybrid_hpo.errors import ConfigError
from hybrid_hpo.hyper import FAMILIES, WeightDecay, make_family
from hybrid_hpo.hyper.weight_decay import inverse_softplus
from hybrid_hpo.models import build_model


@pytest.fixture
def params():
    torch.manual_seed(0)
    model = build_model("mlp", input_shape=(1, 8, 8), num_classes=10, hidden=(32, 16))
    return dict(model.named_parameters())


def test_registry():
    assert FAMILIES["weight_decay"] is WeightDecay
    with pytest.raises(ConfigError, match="family"):
        make_family("nope")


@pytest.mark.parametrize("value", [1e-6, 1e-3, 0.5, 3.0, 40.0])
def test_inverse_softplus(value):
    assert F.softplus(torch.tensor(inverse_softplus(value), dtype=torch.float64)).item() == pytest.approx(value, rel=1e-9)


def test_decays_stay_positive_and_start_at_init(params):
    family = WeightDecay(params, granularity="per_weight", init_decay=2e-3)
    decays = family.decays(family.hparams())
    for decay in decays.values():
        torch.testing.assert_close(decay, torch.full_like(decay, 2e-3))
    with torch.no_grad():
        for raw in family.hparams().values():
            raw.fill_(-60.0)  # far below any init: softplus keeps it positive
    assert all((d > 0).all() for d in family.decays(family.hparams()).values())


def test_counts_per_granularity(params):
    weights = [name for name, p in params.items() if p.ndim >= 2]
    assert len(weights) == 3  # three Linear layers; biases are not decayed
    n_weights = sum(params[name].numel() for name in weights)
    assert n_weights == 64 * 32 + 32 * 16 + 16 * 10
    assert make_family("weight_decay", params=params, granularity="global").num_hparams == 1
    assert make_family("weight_decay", params=params, granularity="per_tensor").num_hparams == 3
    per_weight = make_family("weight_decay", params=params, granularity="per_weight")
    assert per_weight.num_hparams == n_weights
    assert set(per_weight.hparams()) == set(weights)
    assert all(t.is_leaf and t.requires_grad for t in per_weight.hparams().values())


@pytest.mark.parametrize("granularity", ["global", "per_tensor", "per_weight"])
def test_penalty_equals_hand_computed_half_sum_decay_w2(params, granularity):
    family = WeightDecay(params, granularity=granularity)
    generator = torch.Generator().manual_seed(1)
    hparams = {name: torch.randn(t.shape, generator=generator) - 3 for name, t in family.hparams().items()}
    expected = 0.0
    for index, name in enumerate(family.decayed):
        w = params[name].detach().double()
        if granularity == "global":
            decay = math.log1p(math.exp(hparams["decay"].item()))
        elif granularity == "per_tensor":
            decay = math.log1p(math.exp(hparams["decay"][index].item()))
        else:
            decay = torch.log1p(torch.exp(hparams[name].double()))
        expected += 0.5 * float((decay * w**2).sum())
    assert family.penalty(params, hparams).item() == pytest.approx(expected, rel=1e-5)

    x, y = torch.rand(5, 1, 8, 8), torch.arange(5)
    model = build_model("mlp", input_shape=(1, 8, 8), num_classes=10, hidden=(32, 16))
    fn = lambda p, inputs: torch.func.functional_call(model, p, (inputs,))  # noqa: E731
    loss = family.train_loss(fn, params, hparams, (x, y, torch.arange(5)))
    ce = F.cross_entropy(fn(params, x), y)
    assert loss.item() == pytest.approx(ce.item() + expected, rel=1e-5)


def test_state_round_trip_and_mismatch(params):
    family = WeightDecay(params, granularity="per_tensor", init_decay=1e-2)
    other = WeightDecay(params, granularity="per_tensor", init_decay=1.0)
    other.load_state_dict(family.state_dict())
    assert torch.equal(other.hparams()["decay"], family.hparams()["decay"])
    with pytest.raises(ConfigError, match="hparams"):
        WeightDecay(params, granularity="global").load_state_dict(family.state_dict())


def test_bad_arguments(params):
    with pytest.raises(ConfigError, match="granularity"):
        WeightDecay(params, granularity="per_unit")
    with pytest.raises(ConfigError, match="init_decay"):
        WeightDecay(params, init_decay=-1.0)
