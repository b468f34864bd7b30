"""The ``fixed`` family (the BO baselines'): Bernoulli dropout statistics, the L2 term and per-tensor
decays on the right tensors, class loss weights ∝ n_c^-p (p = 1: scikit-learn's balanced, p = 0:
plain training), no λ and no hyper steps, reproducible masks, and one-line errors for unusable
settings."""
import math

import numpy
import pytest
import torch
import torch.nn.functional as F

from hybrid_hpo.bilevel import BilevelTrainer
from hybrid_hpo.config import RunConfig
from hybrid_hpo.errors import ConfigError
from hybrid_hpo.hyper.penalty import decayed_tensors, l2_penalty
from hybrid_hpo.hyper.fixed import FixedRegularization, class_loss_weights
from hybrid_hpo.models import build_model
from hybrid_hpo.nn import dropout_sites

SITES = dropout_sites(build_model("mlp", input_shape=(1, 8, 8), num_classes=10, hidden=(32, 16)))


def test_masks_drop_at_the_rate_and_keep_the_mean():
    family = FixedRegularization(SITES, fixed_dropout=0.3, seed=0)
    masks = family.masks(20000, torch.zeros(1))
    assert set(masks) == set(SITES) and masks["3.scale"].shape == (20000, 32)
    dropped = (masks["3.scale"] == 0).double().mean(dim=0)
    assert dropped.sub(0.3).abs().max() < 0.02
    kept = masks["3.scale"][masks["3.scale"] != 0]
    torch.testing.assert_close(kept, torch.full_like(kept, 1 / 0.7))  # inverted dropout: mean stays 1
    assert masks["3.scale"].mean(dim=0).sub(1).abs().max() < 0.05


def test_train_loss_is_cross_entropy_plus_l2_without_dropout_and_changes_with_it():
    model, params, fn, batch = _mlp_problem()
    x, y = batch[0], batch[1]
    plain = FixedRegularization(SITES, fixed_decay=0.01, fixed_dropout=0.0)
    expected = F.cross_entropy(model(x), y) + 0.5 * 0.01 * sum(p.square().sum() for p in params.values())
    torch.testing.assert_close(plain.train_loss(fn, params, {}, batch), expected)
    torch.testing.assert_close(l2_penalty(params, 0.01), expected - F.cross_entropy(model(x), y))
    noisy = FixedRegularization(SITES, fixed_decay=0.01, fixed_dropout=0.5)
    assert not torch.allclose(noisy.train_loss(fn, params, {}, batch), expected)
    assert plain.num_hparams == 0 and plain.hparams() == {}


def test_bilevel_run_takes_no_hyper_steps_and_restores_bit_for_bit():
    settings = {"dataset": "digits", "train_size": 64, "val_size": 64, "model": "mlp", "hidden": [16],
                "family": "fixed", "fixed_decay": 1e-3, "fixed_dropout": 0.3, "batch_size": 32, "epochs": 4,
                "device": "cpu"}
    trainer = BilevelTrainer(RunConfig.from_mapping(settings))
    first = trainer.train_epoch()
    assert first["hyper_steps"] == 0 and first["num_hparams"] == 0 and first["fixed_dropout"] == 0.3
    state = trainer.state_dict()
    expected = [trainer.train_epoch()["val_loss"] for _ in range(2)]
    restored = BilevelTrainer(RunConfig.from_mapping(settings))
    restored.load_state_dict(state)
    assert [restored.train_epoch()["val_loss"] for _ in range(2)] == expected  # masks continue identically


@pytest.mark.parametrize("settings, field", [
    ({"family": "fixed", "fixed_dropout": 1.0}, "fixed_dropout must be a number >= 0 and < 1"),
    ({"family": "fixed", "fixed_dropout": 0.2, "model": "logreg"}, "fixed_dropout: the fixed family needs dropout sites, which 'logreg' has not"),
    ({"family": "fixed", "fixed_decay": -1.0}, "fixed_decay must be a number >= 0"),
])
def test_bad_settings_name_the_field(settings, field):
    with pytest.raises(ConfigError, match=field.replace("[", r"\[").replace(")", r"\)")):
        RunConfig.from_mapping(settings)


def _mlp_problem():
    """An MLP (32, 16) on 8x8 inputs, its parameters and a batch; weight matrices 1, 4, 7."""
    torch.manual_seed(0)
    model = build_model("mlp", input_shape=(1, 8, 8), num_classes=10, hidden=(32, 16))
    params = dict(model.named_parameters())
    buffers = dict(model.named_buffers())
    fn = lambda p, x: torch.func.functional_call(model, {**buffers, **p}, (x,))  # noqa: E731
    x, y = torch.randn(64, 1, 8, 8), torch.randint(0, 10, (64,))
    return model, params, fn, (x, y, torch.arange(64))


def test_layer_decays_land_on_their_weight_tensors_and_fixed_decay_on_the_rest():
    model, params, fn, batch = _mlp_problem()
    decays = (0.3, 0.02, 0.001)
    family = FixedRegularization(SITES, fixed_decay=0.0, layer_decay=decays, decayed=decayed_tensors(params))
    assert family.layer_decay == {"1.weight": 0.3, "4.weight": 0.02, "7.weight": 0.001}
    by_hand = 0.5 * (0.3 * model[1].weight.square().sum() + 0.02 * model[4].weight.square().sum()
                     + 0.001 * model[7].weight.square().sum())  # Σ_l d_l ||W_l||² / 2, biases undecayed
    data = F.cross_entropy(model(batch[0]), batch[1])
    torch.testing.assert_close(family.train_loss(fn, params, {}, batch), data + by_hand)
    grads = torch.autograd.grad(family.penalty(params), list(params.values()), allow_unused=True)
    for (name, weight), grad in zip(params.items(), grads):  # d/dw_n of the penalty is c_n · w_n; biases: none
        decay = dict(zip(("1.weight", "4.weight", "7.weight"), decays)).get(name)
        assert (grad is None) == (decay is None), name
        if decay is not None:
            torch.testing.assert_close(grad, decay * weight.detach())
    with_biases = FixedRegularization(SITES, fixed_decay=0.5, layer_decay=decays, decayed=decayed_tensors(params))
    biases = 0.5 * 0.5 * sum(model[i].bias.square().sum() for i in (1, 4, 7))
    torch.testing.assert_close(with_biases.penalty(params), by_hand + biases)
    assert FixedRegularization(SITES, fixed_decay=0.0).penalty(params) is None


def test_layer_decay_items_from_settings_reach_the_trainers_family():
    settings = {"dataset": "digits", "train_size": 64, "val_size": 64, "model": "mlp", "hidden": [16],
                "family": "fixed", "fixed_decay": 0, "layer_decay.1": 0.2, "layer_decay.0": 0.05, "epochs": 1,
                "device": "cpu"}
    config = RunConfig.from_mapping(settings)
    assert config.family_options["layer_decay"] == (0.05, 0.2) and config.to_dict()["layer_decay"] == [0.05, 0.2]
    family = BilevelTrainer(config).family
    assert family.layer_decay == {"1.weight": 0.05, "4.weight": 0.2}


def test_class_weights_follow_the_power_law_with_mean_one_and_p1_is_sklearns_balanced():
    from sklearn.utils.class_weight import compute_class_weight

    counts = torch.tensor([50, 20, 5, 1])
    labels = torch.repeat_interleave(torch.arange(4), counts)
    for power in (0.0, 0.3, 1.0):
        weights = class_loss_weights(counts, power)
        raw = counts.double() ** -power
        torch.testing.assert_close(weights, raw * 76 / (counts * raw).sum())  # N = 76
        torch.testing.assert_close(weights[labels].mean(), torch.tensor(1.0, dtype=torch.float64))
    assert torch.equal(class_loss_weights(counts, 0.0), torch.ones(4, dtype=torch.float64))
    balanced = compute_class_weight("balanced", classes=numpy.arange(4), y=labels.numpy())
    torch.testing.assert_close(class_loss_weights(counts, 1.0), torch.from_numpy(balanced))
    absent = class_loss_weights(torch.tensor([6, 0, 2]), 0.5)  # a class without examples: weight 0
    assert absent[1] == 0 and math.isclose(float(6 * absent[0] + 2 * absent[2]), 8.0)


def test_class_weighted_loss_is_the_mean_of_weighted_losses_and_p0_is_plain_training():
    model, params, fn, batch = _mlp_problem()
    counts = torch.bincount(batch[1], minlength=10)
    weighted = FixedRegularization(SITES, fixed_decay=0.0, class_weight_power=0.7, class_counts=counts)
    losses = F.cross_entropy(model(batch[0]), batch[1], reduction="none")
    expected = (class_loss_weights(counts, 0.7).float()[batch[1]] * losses).mean()
    torch.testing.assert_close(weighted.train_loss(fn, params, {}, batch), expected)
    plain = FixedRegularization(SITES, fixed_decay=1e-3)
    zero = FixedRegularization(SITES, fixed_decay=1e-3, class_weight_power=0.0, class_counts=counts)
    assert zero.class_weights is None
    assert torch.equal(zero.train_loss(fn, params, {}, batch), plain.train_loss(fn, params, {}, batch))


def test_class_weights_come_from_the_imbalanced_training_split():
    from sklearn.utils.class_weight import compute_class_weight

    settings = {"dataset": "digits", "imbalance": 10, "model": "mlp", "hidden": [16], "family": "fixed",
                "class_weight_power": 1.0, "epochs": 1, "device": "cpu"}
    trainer = BilevelTrainer(RunConfig.from_mapping(settings))
    labels = trainer.data.train.targets().cpu().numpy()
    balanced = compute_class_weight("balanced", classes=numpy.arange(10), y=labels)
    torch.testing.assert_close(trainer.family.class_weights, torch.from_numpy(balanced))
    assert trainer.family.class_weights[0] < trainer.family.class_weights[9]  # digit 0 is the most frequent


@pytest.mark.parametrize("settings, message", [
    ({"class_weight_power": 1.5}, "class_weight_power must be a number >= 0 and <= 1 (got 1.5)"),
    ({"layer_decay.0": -1.0, "layer_decay.1": 1.0, "layer_decay.2": 1.0}, "layer_decay.0 must be a number >= 0"),
    ({"layer_decay.0": 1e-3, "layer_decay.2": 1e-3}, "layer_decay.1: missing; give every item layer_decay.0 to layer_decay.2"),
    ({"layer_decay.0": 1e-3, "layer_decay.1": 1e-3}, "layer_decay: 2 decays given, but 'mlp' (hidden [512, 256]) has 3 weight tensors"),
    ({"layer_decay": [1e-3, 1e-3, 1e-3], "layer_decay.0": 1e-3}, "layer_decay: given twice"),
    ({"layer_decay.0": "big", "layer_decay.1": 1.0, "layer_decay.2": 1.0}, "layer_decay.0 must be a number (got 'big')"),
    ({"dataset": "text", "model": "lstm_lm", "hidden": [8], "class_weight_power": 0.5}, "class_weight_power: the text dataset has no classes"),
])
def test_bad_layer_decays_and_class_weights_are_one_line_errors_naming_the_field(settings, message):
    with pytest.raises(ConfigError) as caught:
        RunConfig.from_mapping({"family": "fixed", **settings})
    assert str(caught.value).startswith(message.split(" ")[0].rstrip(":")) and message in str(caught.value)
    assert "\n" not in str(caught.value)


def test_a_user_model_with_another_tensor_count_is_refused_when_the_family_is_built():
    params = dict(build_model("mlp", input_shape=(1, 8, 8), num_classes=10, hidden=(4,)).named_parameters())
    with pytest.raises(ConfigError, match=r"^layer_decay: 3 decays given, but this model has 2 weight tensors"):
        FixedRegularization(SITES, layer_decay=(1.0, 1.0, 1.0), decayed=decayed_tensors(params))
    with pytest.raises(ConfigError, match="^class_weight_power: needs a classification task"):
        FixedRegularization(SITES, class_weight_power=0.5, class_counts=None)
