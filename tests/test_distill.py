"""Dataset distillation (family "distill"): IFT hypergradient vs finite differences, the loss, the
fresh-model evaluation, the picture."""
import pytest
import torch
import torch.nn.functional as F

from hybrid_hpo.data import load_dataset
from hybrid_hpo.errors import ConfigError
from hybrid_hpo.hyper.distill import Distill, accuracy, fit_on_images
from hybrid_hpo.implicit import Exact, Identity, hypergradient
from hybrid_hpo.models import build_model
from ift_check import directional_fd, inner, newton_minimize


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", val_fraction=0.5, seed=0)


def logreg(classes, dtype=torch.float64):
    model = build_model("logreg", input_shape=(1, 8, 8), num_classes=classes).to(dtype)
    return model, (lambda p, x: torch.func.functional_call(model, p, (x,)))


def test_ift_hypergradient_matches_finite_differences(digits):
    torch.manual_seed(0)
    classes = 3
    model, fn = logreg(classes)
    params = {k: v.detach() for k, v in model.named_parameters()}
    family = Distill(params, input_shape=(1, 8, 8), num_classes=classes, per_class=2, fixed_decay=1e-2)
    assert family.num_hparams == 2 * classes * 64
    keep = digits.val.y < classes
    val = (digits.val.x[keep][:60].double(), digits.val.y[keep][:60], torch.arange(60))
    unused = (torch.full((4, 1, 8, 8), float("nan")), torch.zeros(4, dtype=torch.int64), torch.arange(4))
    train_loss = lambda w, lam: family.train_loss(fn, w, lam, unused)  # noqa: E731 (ignores the real batch)
    val_loss = lambda w, lam: family.val_loss(fn, w, lam, val)  # noqa: E731
    hparams = family.hparams()
    w_star = newton_minimize(train_loss, params, hparams)
    exact = hypergradient(train_loss, val_loss, w_star, hparams, solver=Exact())
    identity = hypergradient(train_loss, val_loss, w_star, hparams, solver=Identity())
    generator = torch.Generator().manual_seed(2)
    for _ in range(3):
        direction = {"images": torch.randn(hparams["images"].shape, generator=generator, dtype=torch.float64)}
        fd = directional_fd(train_loss, val_loss, w_star, hparams, direction)
        assert abs(fd) > 1e-4
        assert inner(exact, direction) == pytest.approx(fd, rel=1e-4)
        assert abs(inner(identity, direction) - fd) > 1e-2 * abs(fd)


def test_train_loss_is_ce_on_the_distilled_set_plus_l2():
    torch.manual_seed(0)
    model, fn = logreg(10, torch.float32)
    params = dict(model.named_parameters())
    family = Distill(params, input_shape=(1, 8, 8), num_classes=10, per_class=3, fixed_decay=0.5)
    images, labels = family.images()
    assert images.shape == (30, 1, 8, 8) and labels.tolist() == [c for c in range(10) for _ in range(3)]
    l2 = sum(float(p.detach().square().sum()) for p in params.values())
    with torch.no_grad():
        expected = float(F.cross_entropy(model(images), labels)) + 0.25 * l2
    batch = (torch.rand(7, 1, 8, 8), torch.randint(0, 10, (7,)), torch.arange(7))
    assert float(family.train_loss(fn, params, family.hparams(), batch).detach()) == pytest.approx(expected, rel=1e-5)
    with pytest.raises(ConfigError, match="distill_per_class"):
        Distill(params, input_shape=(1, 8, 8), num_classes=10, per_class=0)


def test_fit_on_images_trains_a_fresh_model_only_on_them(digits):
    """Class means as 'distilled' images: a fresh logreg trained on those 10 images alone classifies
    real test digits far above chance; trained on 10 noise images it stays near chance."""
    means = torch.stack([digits.train.x[digits.train.y == c].mean(0) for c in range(10)])
    labels = torch.arange(10)
    torch.manual_seed(0)
    model = fit_on_images(logreg(10, torch.float32)[0], means, labels, steps=200, lr=0.1, optimizer="momentum",
                          decay=1e-3)
    with torch.no_grad():
        assert float(F.cross_entropy(model(means), labels)) < 0.1
    assert accuracy(model, digits.test.x, digits.test.y) > 0.8
    noise = fit_on_images(logreg(10, torch.float32)[0], torch.rand(10, 1, 8, 8), labels, steps=200, lr=0.1,
                          optimizer="momentum")
    assert accuracy(noise, digits.test.x, digits.test.y) < 0.3


def test_render_writes_the_grid(tmp_path):
    import matplotlib.image

    params = dict(build_model("logreg", input_shape=(1, 8, 8), num_classes=10).named_parameters())
    one = Distill(params, input_shape=(1, 8, 8), num_classes=10, per_class=1)
    (path,) = one.render(params, tmp_path / "a")
    assert path.name == "distilled_images.png" and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    wide = matplotlib.image.imread(path).shape
    (path,) = Distill(params, input_shape=(1, 8, 8), num_classes=10, per_class=4).render(params, tmp_path / "b")
    tall = matplotlib.image.imread(path).shape
    assert wide[1] > wide[0] and tall[0] > tall[1]  # 1 x 10 grid vs 10 rows x 4 columns


def test_bilevel_distillation_lowers_real_validation_loss(tmp_path):
    """Hypergradient steps on the pixels must beat the same run with a negligible hyper learning rate."""
    from hybrid_hpo.bilevel import BilevelTrainer
    from hybrid_hpo.config import RunConfig

    settings = dict(family="distill", model="logreg", distill_per_class=1, fixed_decay=1e-3, solver="cg",
                    inner_lr=0.1, **{"solver.max_iter": 20}, inner_steps=2, batch_size=128, epochs=6, device="cpu")
    tuned = BilevelTrainer(RunConfig.from_mapping({**settings, "hyper_lr": 0.05}))
    history = tuned.fit(progress=False)
    fixed = BilevelTrainer(RunConfig.from_mapping({**settings, "hyper_lr": 1e-9})).fit(progress=False)
    assert tuned.family.num_hparams == 10 * 64
    assert history[-1]["val_loss"] < history[0]["val_loss"] - 0.5
    assert history[-1]["val_loss"] < fixed[-1]["val_loss"] - 0.5
    assert history[-1]["test_acc"] > fixed[-1]["test_acc"] + 0.2
    (picture,) = tuned.render(tmp_path)
    assert picture.name == "distilled_images.png"
