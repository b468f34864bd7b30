"""The ``fixed`` family (BO-only baseline): Bernoulli dropout statistics, the L2 term, no λ and no
hyper steps, reproducible masks, and one-line errors for unusable settings."""
import pytest
import torch
import torch.nn.functional as F

from hybrid_hpo.bilevel import BilevelTrainer
from hybrid_hpo.config import RunConfig
from hybrid_hpo.errors import ConfigError
from hybrid_hpo.hyper.penalty import l2_penalty
from hybrid_hpo.hyper.fixed import FixedRegularization
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
    torch.manual_seed(0)
    model = build_model("mlp", input_shape=(1, 8, 8), num_classes=10, hidden=(32, 16))
    params = dict(model.named_parameters())
    buffers = dict(model.named_buffers())
    fn = lambda p, x: torch.func.functional_call(model, {**buffers, **p}, (x,))  # noqa: E731
    x, y = torch.randn(64, 1, 8, 8), torch.randint(0, 10, (64,))
    batch = (x, y, torch.arange(64))
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
