"""hybrid_hpo.pictures (shared PNG helpers) and the weight-decay histogram."""
import matplotlib.image
from matplotlib.backends.backend_agg import FigureCanvasAgg
import numpy as np
import pytest
import torch

from hybrid_hpo.errors import ConfigError
from hybrid_hpo.hyper import WeightDecay
from hybrid_hpo.models import build_model
from hybrid_hpo.pictures import fixed_layout, histogram_by_group, image_grid, new_figure, save_figure

PNG = b"\x89PNG\r\n\x1a\n"


def brightness(path):
    """Grey level per pixel (H, W) of a PNG, in [0, 1]."""
    return matplotlib.image.imread(path)[..., :3].mean(-1)


def test_image_grid_places_images_row_major_with_one_scale(tmp_path):
    dark, light = torch.zeros(1, 8, 8), torch.ones(1, 8, 8)
    path = image_grid(torch.stack([dark, light, light, dark]), tmp_path / "sub" / "grid.png", ncols=2)
    assert path.read_bytes()[:8] == PNG
    grey = brightness(path)
    h, w = grey.shape
    quarters = [grey[: h // 2, : w // 2], grey[: h // 2, w // 2 :], grey[h // 2 :, : w // 2], grey[h // 2 :, w // 2 :]]
    means = [float(np.median(q)) for q in quarters]
    assert means[0] < 0.3 and means[3] < 0.3 and means[1] > 0.7 and means[2] > 0.7


def test_image_grid_accepts_rgb_and_signals_and_rejects_bad_shapes(tmp_path):
    assert image_grid(torch.rand(3, 3, 5, 5), tmp_path / "rgb.png").exists()
    assert image_grid(torch.randn(4, 1, 40), tmp_path / "signals.png").exists()
    with pytest.raises(ConfigError, match="images"):
        image_grid(torch.rand(2, 2, 5, 5), tmp_path / "bad.png")
    with pytest.raises(ConfigError, match="row_labels"):
        image_grid(torch.rand(4, 1, 5, 5), tmp_path / "bad.png", ncols=2, row_labels=["a"])


def test_histogram_by_group_log_axis_needs_positive_values(tmp_path):
    path = histogram_by_group({"a": torch.rand(50) + 0.1, "b": np.array([1e-3, 1e-2])}, tmp_path / "h.png",
                              xlabel="decay", log_x=True)
    assert path.read_bytes()[:8] == PNG
    with pytest.raises(ConfigError, match="log_x"):
        histogram_by_group({"a": torch.tensor([0.0, 1.0])}, tmp_path / "h.png", xlabel="x", log_x=True)
    with pytest.raises(ConfigError, match="groups"):
        histogram_by_group({"a": torch.tensor([])}, tmp_path / "h.png", xlabel="x")
    with pytest.raises(ConfigError, match="path"):
        save_figure(new_figure(1, 1), tmp_path / "figure.jpg")


def test_weight_decay_histogram_has_one_row_per_layer(tmp_path):
    torch.manual_seed(0)
    params = dict(build_model("mlp", input_shape=(1, 8, 8), num_classes=10, hidden=(16, 8)).named_parameters())
    family = WeightDecay(params, granularity="per_weight", init_decay=1e-3)
    with torch.no_grad():
        for raw in family.hparams().values():
            raw.add_(torch.randn_like(raw))
    (three,) = family.render(params, tmp_path / "a")
    assert three.name == "weight_decay_histogram.png"
    two_layers = dict(build_model("mlp", input_shape=(1, 8, 8), num_classes=10, hidden=(16,)).named_parameters())
    (two,) = WeightDecay(two_layers, granularity="global").render(two_layers, tmp_path / "b")
    # 3 decayed tensors (3 rows) make a taller picture than 2
    assert matplotlib.image.imread(three).shape[0] > matplotlib.image.imread(two).shape[0]


def test_weight_decay_histogram_survives_underflowed_and_non_finite_decays(tmp_path):
    """After a diverged hyper step softplus(raw) can be exactly 0 or NaN: the picture still renders."""
    params = dict(build_model("mlp", input_shape=(1, 8, 8), num_classes=10, hidden=(16, 8)).named_parameters())
    family = WeightDecay(params, granularity="per_weight", init_decay=1e-3)
    raws = list(family.hparams().values())
    with torch.no_grad():
        raws[0].fill_(-1e4)  # softplus underflows to exactly 0
        raws[1].view(-1)[0] = float("nan")
    assert (family.decays(family.hparams())[next(iter(family.decays(family.hparams())))] == 0).all()
    (picture,) = family.render(params, tmp_path)
    assert picture.read_bytes().startswith(PNG)
    with torch.no_grad():
        for raw in raws:
            raw.fill_(float("nan"))
    assert family.render(params, tmp_path / "none") == []


def _labels_inside_and_apart(figure, axes, heading=None) -> None:
    """Every axes' tick and axis labels (and the title) lie inside the figure, none overlapping."""
    renderer = FigureCanvasAgg(figure).get_renderer()
    boxes = [ax.get_tightbbox(renderer) for ax in axes]
    if heading is not None:
        boxes.append(heading.get_window_extent(renderer))
    inside = figure.bbox
    for index, box in enumerate(boxes):
        assert inside.x0 <= box.x0 and box.x1 <= inside.x1 and inside.y0 <= box.y0 and box.y1 <= inside.y1, index
        for other in boxes[index + 1:]:
            assert not box.overlaps(other), index


def test_fixed_layout_fits_the_histogram_rows_and_title():
    """Fixed margins (no measuring draw) leave room for 5-digit counts, the log axis and the title."""
    figure = new_figure(6.5, 1.2 + 1.1 * 3)
    axes = figure.subplots(3, 1, sharex=True, squeeze=False)[:, 0]
    for ax in axes:
        ax.hist(np.geomspace(7e-4, 2e-3, 45000), bins=np.geomspace(7e-4, 2e-3, 31))
        ax.set_xscale("log")
        ax.set_ylabel("count")
    axes[-1].set_xlabel("decay (softplus(raw))")
    heading = figure.suptitle("learned weight decays (per_weight, 166400 λ)")
    fixed_layout(figure, 3, 1, title_inches=0.35)
    _labels_inside_and_apart(figure, axes, heading)


def test_fixed_layout_fits_the_learning_curves_side_by_side():
    from hybrid_hpo.tune.pictures import CURVES_MARGINS

    figure = new_figure(8.0, 3.2)
    axes = figure.subplots(1, 2, squeeze=False)[0]
    for ax, (label, high) in zip(axes, (("loss", 12.5), ("acc", 0.9875))):
        ax.plot(np.arange(1, 101), np.linspace(0.0, high, 100), marker=".", label="train")
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.legend()
    fixed_layout(figure, 1, 2, **CURVES_MARGINS)
    _labels_inside_and_apart(figure, axes)
