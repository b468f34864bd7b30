"""Learned augmentation (family "augment") and the fixed shift/flip baseline ("fixed_augment")."""
import math

import pytest
import torch
import torch.nn.functional as F

from hybrid_hpo.data import load_dataset
from hybrid_hpo.errors import ConfigError
from hybrid_hpo.hyper.augment import Augment, AugmentNet, FixedAugment, random_shift_flip
from hybrid_hpo.implicit import Exact, Identity, hypergradient
from hybrid_hpo.models import build_model
from ift_check import directional_fd, inner, newton_minimize


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", val_fraction=0.5, seed=0)


def tiny_instance(digits, classes=3, n_train=24, n_val=30):
    """float64 logreg on `classes` digit classes, a width-2 augmenter with random (non-identity) λ,
    fixed L2 1e-2: L_T is strongly convex in w for the noise of one fixed draw."""
    torch.manual_seed(0)
    model = build_model("logreg", input_shape=(1, 8, 8), num_classes=classes).double()
    fn = lambda p, x: torch.func.functional_call(model, p, (x,))  # noqa: E731
    params = {k: v.detach() for k, v in model.named_parameters()}
    family = Augment(params, input_shape=(1, 8, 8), width=2, fixed_decay=1e-2, seed=3)
    generator = torch.Generator().manual_seed(1)
    hparams = {k: v.detach() + 0.3 * torch.randn(v.shape, generator=generator, dtype=v.dtype)
               for k, v in family.hparams().items()}
    keep_train, keep_val = digits.train.y < classes, digits.val.y < classes
    train = (digits.train.x[keep_train][:n_train].double(), digits.train.y[keep_train][:n_train], torch.arange(n_train))
    val = (digits.val.x[keep_val][:n_val].double(), digits.val.y[keep_val][:n_val], torch.arange(n_val))
    noise_state = family.generator.get_state()

    def train_loss(w, lam):  # the family's own L_T, with the same noise draw at every evaluation
        family.generator.set_state(noise_state)
        return family.train_loss(fn, w, lam, train)

    def val_loss(w, lam):
        return family.val_loss(fn, w, lam, val)

    return family, params, hparams, train_loss, val_loss, generator


def test_ift_hypergradient_matches_finite_differences(digits):
    family, params, hparams, train_loss, val_loss, generator = tiny_instance(digits)
    assert family.num_hparams == (2 * 2 * 9 + 2) + (2 * 4 * 9 + 4) + (6 * 2 * 9 + 2) + (2 + 1)
    w_star = newton_minimize(train_loss, params, hparams)
    exact = hypergradient(train_loss, val_loss, w_star, hparams, solver=Exact())
    identity = hypergradient(train_loss, val_loss, w_star, hparams, solver=Identity())
    for _ in range(3):
        direction = {k: torch.randn(v.shape, generator=generator, dtype=v.dtype) for k, v in hparams.items()}
        fd = directional_fd(train_loss, val_loss, w_star, hparams, direction)
        assert abs(fd) > 1e-4  # a non-trivial directional derivative
        assert inner(exact, direction) == pytest.approx(fd, rel=1e-4)
        # the comparison discriminates: dropping H⁻¹ (Identity) is far off
        assert abs(inner(identity, direction) - fd) > 1e-2 * abs(fd)


def test_augmenter_starts_as_identity_and_keeps_shapes():
    torch.manual_seed(0)
    for shape in ((1, 8, 8), (3, 7, 5), (1, 40)):
        net = AugmentNet(shape[0], len(shape) - 1, width=4)
        x, noise = torch.randn(5, *shape), torch.randn(5, *shape)
        torch.testing.assert_close(net(x, noise), x, rtol=0, atol=0)
        torch.nn.init.normal_(net.out.weight)
        assert net(x, noise).shape == x.shape
        assert not torch.allclose(net(x, noise), net(x, torch.randn(5, *shape)))  # the noise matters


def test_flat_inputs_are_rejected():
    params = dict(build_model("logreg", input_shape=(64,), num_classes=10).named_parameters())
    with pytest.raises(ConfigError, match="family: augment needs task inputs shaped"):
        Augment(params, input_shape=(64,))
    with pytest.raises(ConfigError, match="augment_shift"):
        FixedAugment(input_shape=(1, 8, 8), shift=-1)


def test_noise_stream_is_seeded_and_restored_by_state_dict():
    params = dict(build_model("logreg", input_shape=(1, 8, 8), num_classes=10).named_parameters())
    x = torch.zeros(4, 1, 8, 8)
    a, b = Augment(params, input_shape=(1, 8, 8), seed=5), Augment(params, input_shape=(1, 8, 8), seed=5)
    torch.testing.assert_close(a.draw_noise(x), b.draw_noise(x), rtol=0, atol=0)
    state = a.state_dict()
    expected = a.draw_noise(x)
    b.draw_noise(x)  # b moves on ...
    b.load_state_dict(state)  # ... and is put back to a's saved point
    torch.testing.assert_close(b.draw_noise(x), expected, rtol=0, atol=0)
    assert not torch.equal(Augment(params, input_shape=(1, 8, 8), seed=6).draw_noise(x), a.draw_noise(x))


def shifted_copies(image, shift):
    """All (2 shift + 1)² zero-padded integer shifts of one (C, H, W) image."""
    padded = F.pad(image, (shift,) * 4)
    h, w = image.shape[1:]
    return [padded[:, i : i + h, j : j + w] for i in range(2 * shift + 1) for j in range(2 * shift + 1)]


def test_random_shift_is_a_zero_padded_integer_shift_and_covers_all_offsets():
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(200, 1, 6, 6) + 0.5  # no zeros, so every shift is distinguishable
    out = random_shift_flip(x, 1, False, generator)
    seen = set()
    for original, shifted in zip(x, out):
        matches = [k for k, copy in enumerate(shifted_copies(original, 1)) if torch.equal(copy, shifted)]
        assert len(matches) == 1
        seen.add(matches[0])
    assert seen == set(range(9))
    torch.testing.assert_close(random_shift_flip(x, 0, False, generator), x, rtol=0, atol=0)
    flipped = random_shift_flip(x, 0, True, generator)
    mirrored = (flipped == x.flip(-1)).flatten(1).all(1)
    assert ((flipped == x).flatten(1).all(1) | mirrored).all() and 60 < int(mirrored.sum()) < 140
    signal = torch.rand(50, 1, 10) + 0.5
    out1d = random_shift_flip(signal, 2, False, generator)
    padded = F.pad(signal, (2, 2))
    for s, o, p in zip(signal, out1d, padded):
        assert any(torch.equal(p[:, k : k + 10], o) for k in range(5))


SMALL = dict(model="mlp", hidden=[32], batch_size=64, inner_steps=3, device="cpu", fixed_decay=1e-4,
             epochs=2, **{"solver.terms": 3, "solver.alpha": "auto"})


def trainer(**overrides):
    from hybrid_hpo.bilevel import BilevelTrainer
    from hybrid_hpo.config import RunConfig

    return BilevelTrainer(RunConfig.from_mapping({**SMALL, "train_size": 256, "val_size": 256, **overrides}))


def test_learned_augmentation_trains_end_to_end_and_restores_exactly(tmp_path):
    run = trainer(family="augment", augment_width=4, hyper_lr=0.01, diverged_policy="apply")  # as searches/augment.yaml
    assert run.family.num_hparams == (2 * 4 * 9 + 4) + (4 * 8 * 9 + 8) + (12 * 4 * 9 + 4) + (4 + 1)
    first = run.train_epoch()
    assert first["hyper_steps"] > 0 and first["rejected_hyper_steps"] == 0
    assert first["augment_out_norm"] > 0  # λ left the identity
    state = run.state_dict()
    continued = run.train_epoch()
    restored = trainer(family="augment", augment_width=4, hyper_lr=0.01, diverged_policy="apply")
    restored.load_state_dict(state)
    again = restored.train_epoch()
    for key in ("train_loss", "val_loss", "test_acc", "augment_lambda_norm"):
        assert again[key] == continued[key]  # the noise stream is part of the state
    (picture,) = run.render(tmp_path)
    assert picture.name == "augmentation_samples.png" and picture.stat().st_size > 1000


def test_fixed_augment_has_no_lambda_and_takes_no_hyper_steps():
    run = trainer(family="fixed_augment", augment_shift=1, epochs=4)
    metrics = run.fit(progress=False)
    assert run.family.num_hparams == 0 and run.hyper_optimizer is None
    assert all(m["hyper_steps"] == 0 for m in metrics)
    assert math.isnan(metrics[-1]["hypergrad_norm"])
    assert metrics[-1]["train_loss"] < metrics[0]["train_loss"] - 0.05  # the weights still train
    plain = trainer(family="fixed_augment", augment_shift=0, epochs=4).fit(progress=False)
    assert plain[-1]["train_loss"] < metrics[-1]["train_loss"] - 0.1  # shifted inputs are harder to fit


def test_cli_run_writes_pictures(tmp_path, capsys):
    from hybrid_hpo.cli import main

    code = main(["run", "--family", "augment", "--hidden", "16", "--epochs", "1", "--device", "cpu",
                 "--train-size", "64", "--val-size", "64", "--quiet", "--pictures", str(tmp_path)])
    assert code == 0 and (tmp_path / "augmentation_samples.png").exists()
    assert "picture:" in capsys.readouterr().out
    assert main(["run", "--family", "augment", "--augment-width", "0", "--quiet"]) == 2
