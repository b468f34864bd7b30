"""Tests for hybrid_hpo.models: shapes, parameter counts, stems, functional_call, float64."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.func import functional_call

from hybrid_hpo.errors import ConfigError
from hybrid_hpo.models import MODELS, build_model

SHAPES = [(1, 8, 8), (1, 40), (1, 28, 28), (3, 32, 32)]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Run these CPU-bound convolutions on one intra-op thread (2 busy shared cores make 2 threads slow)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("input_shape", SHAPES)
@pytest.mark.parametrize("name", ["logreg", "mlp", "cnn"])
def test_output_shape_small_models(name, input_shape):
    torch.manual_seed(0)
    model = build_model(name, input_shape=input_shape, num_classes=7, hidden=(16, 8))
    out = model(torch.randn(5, *input_shape))
    assert out.shape == (5, 7) and out.dtype == torch.float32 and torch.isfinite(out).all()


@pytest.mark.parametrize("input_shape, cifar_stem", [((3, 32, 32), True), ((1, 8, 8), True),
                                                     ((3, 32, 32), False), ((1, 28, 28), False)])
def test_resnet18_output_shape(input_shape, cifar_stem):
    model = build_model("resnet18", input_shape=input_shape, num_classes=100, cifar_stem=cifar_stem).eval()
    assert model(torch.randn(2, *input_shape)).shape == (2, 100)
    assert model.conv1.in_channels == input_shape[0]


def test_parameter_counts():
    assert _count(build_model("logreg", input_shape=(1, 8, 8), num_classes=10)) == 64 * 10 + 10
    mlp = build_model("mlp", input_shape=(1, 8, 8), num_classes=10, hidden=(1024, 1024))
    assert _count(mlp) == 64 * 1024 + 1024 + 1024 * 1024 + 1024 + 1024 * 10 + 10
    default = build_model("mlp", input_shape=(3, 32, 32), num_classes=10)  # hidden=(512, 256)
    assert _count(default) == 3072 * 512 + 512 + 512 * 256 + 256 + 256 * 10 + 10
    # cnn: conv(C_in->32, k3) + conv(32->64, k3) + Linear(64 * pooled, 10)
    conv2d_tail = (32 * 9 * 64 + 64 + 64 * 4 * 10 + 10)
    assert _count(build_model("cnn", input_shape=(1, 28, 28), num_classes=10)) == 1 * 9 * 32 + 32 + conv2d_tail
    assert _count(build_model("cnn", input_shape=(3, 32, 32), num_classes=10)) == 3 * 9 * 32 + 32 + conv2d_tail
    conv1d = 1 * 3 * 32 + 32 + 32 * 3 * 64 + 64 + 64 * 4 * 10 + 10
    assert _count(build_model("cnn", input_shape=(1, 40), num_classes=10)) == conv1d
    # torchvision resnet18 has 11,689,512 parameters at 3 channels / 1000 classes; changing the
    # head to 10 classes removes 512 * 990 + 990, the CIFAR 3x3 stem removes 64 * 3 * (49 - 9).
    standard = build_model("resnet18", input_shape=(3, 224, 224), num_classes=10, cifar_stem=False)
    assert _count(standard) == 11_689_512 - 512 * 990 - 990
    cifar = build_model("resnet18", input_shape=(3, 32, 32), num_classes=10)
    assert _count(cifar) == _count(standard) - 64 * 3 * 40


def test_mlp_structure_and_activation():
    relu = build_model("mlp", input_shape=(1, 40), num_classes=10, hidden=(32, 16))
    tanh = build_model("mlp", input_shape=(1, 40), num_classes=10, hidden=(32, 16), activation="tanh")
    widths = [(m.in_features, m.out_features) for m in relu if isinstance(m, nn.Linear)]
    assert widths == [(40, 32), (32, 16), (16, 10)]
    assert sum(isinstance(m, nn.ReLU) for m in relu) == 2 and sum(isinstance(m, nn.Tanh) for m in tanh) == 2
    assert not any(isinstance(m, nn.ReLU) for m in tanh)
    cnn = build_model("cnn", input_shape=(1, 40), num_classes=10, activation="tanh")
    assert sum(isinstance(m, nn.Tanh) for m in cnn) == 2 and any(isinstance(m, nn.Conv1d) for m in cnn)
    assert any(isinstance(m, nn.Conv2d) for m in build_model("cnn", input_shape=(1, 8, 8), num_classes=10))


def test_cifar_stem_differs_from_standard_stem():
    cifar = build_model("resnet18", input_shape=(3, 32, 32), num_classes=10, cifar_stem=True)
    standard = build_model("resnet18", input_shape=(3, 32, 32), num_classes=10, cifar_stem=False)
    assert cifar.conv1.kernel_size == (3, 3) and cifar.conv1.stride == (1, 1)
    assert standard.conv1.kernel_size == (7, 7) and standard.conv1.stride == (2, 2)
    assert isinstance(cifar.maxpool, nn.Identity) and isinstance(standard.maxpool, nn.MaxPool2d)
    gray = build_model("resnet18", input_shape=(1, 28, 28), num_classes=10, cifar_stem=False)
    assert gray.conv1.in_channels == 1 and gray.conv1.kernel_size == (7, 7)


@pytest.mark.parametrize("name, input_shape", [("logreg", (1, 8, 8)), ("mlp", (1, 40)), ("cnn", (1, 8, 8)),
                                               ("cnn", (1, 40)), ("resnet18", (3, 16, 16))])
def test_functional_call_matches_forward_and_uses_given_params(name, input_shape):
    torch.manual_seed(1)
    model = build_model(name, input_shape=input_shape, num_classes=10, hidden=(16,)).eval()
    x = torch.randn(2, *input_shape)
    params = {k: v.detach().clone() for k, v in model.named_parameters()}
    assert torch.allclose(functional_call(model, params, (x,)), model(x), atol=1e-6, rtol=1e-5)
    last_bias = [k for k in params if k.endswith("bias")][-1]
    shifted = dict(params, **{last_bias: params[last_bias] + 1.0})
    assert torch.allclose(functional_call(model, shifted, (x,)), model(x) + 1.0, atol=1e-5)


@pytest.mark.parametrize("name, input_shape", [("mlp", (1, 8, 8)), ("cnn", (1, 40)), ("resnet18", (1, 8, 8))])
def test_double_precision_and_gradients(name, input_shape):
    torch.manual_seed(2)
    model = build_model(name, input_shape=input_shape, num_classes=10, hidden=(16,)).double()
    x = torch.randn(2, *input_shape, dtype=torch.float64)
    params = dict(model.named_parameters())
    out = functional_call(model, params, (x,))
    assert out.dtype == torch.float64 and out.shape == (2, 10)
    grads = torch.autograd.grad(out.square().sum(), list(params.values()))
    assert all(g.dtype == torch.float64 for g in grads) and all(torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)


@pytest.mark.parametrize("kwargs, field", [
    ({"name": "vgg"}, "model"),
    ({"name": "mlp", "activation": "gelu"}, "activation"),
    ({"name": "resnet18", "activation": "tanh", "input_shape": (3, 32, 32)}, "activation"),
    ({"name": "mlp", "hidden": (16, 0)}, "hidden"),
    ({"name": "cnn", "input_shape": (64,)}, "input_shape"),
    ({"name": "resnet18", "input_shape": (1, 40)}, "input_shape"),
    ({"name": "mlp", "input_shape": (1, -8)}, "input_shape"),
    ({"name": "logreg", "num_classes": 1}, "num_classes"),
])
def test_bad_arguments_raise_config_error_naming_the_field(kwargs, field):
    args = {"input_shape": (1, 8, 8), "num_classes": 10, **kwargs}
    name = args.pop("name")
    with pytest.raises(ConfigError) as err:
        build_model(name, **args)
    assert str(err.value).startswith(f"{field}:") and "\n" not in str(err.value)


def test_model_names_and_flat_features():
    assert MODELS == ("logreg", "mlp", "cnn", "resnet18", "lstm_lm")
    flat = build_model("mlp", input_shape=(64,), num_classes=3, hidden=(8,))
    assert flat(torch.randn(4, 64)).shape == (4, 3)
