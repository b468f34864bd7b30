"""Classifiers mapping x of shape ``(N, *input_shape)`` to logits of shape ``(N, num_classes)``.

=========  ====================================================================================
logreg     flatten -> Linear(D, C); D = prod(input_shape)
mlp        flatten -> [Linear -> activation -> HyperDropout] per entry of ``hidden`` -> Linear(hidden[-1], C)
cnn        conv(32) -> act -> conv(64) -> act -> maxpool(2) -> adaptive avg pool -> flatten -> Linear(., C);
           Conv1d for input_shape (C_in, L) (e.g. mnist1d), Conv2d for (C_in, H, W); ~20-30k weights
resnet18   torchvision resnet18 (no pretrained weights) with ``input_shape[0]`` input channels;
           ``cifar_stem=True``: conv1 is 3x3 stride 1 and the max-pool is removed (CIFAR variant)
lstm_lm    character/word language model for x (N, T) int64 tokens: Embedding(V, H) -> HyperDropout ->
           LSTM(H, H) -> HyperDropout -> Linear(H, V); logits shaped (N, V, T) (V = num_classes,
           H = hidden[0]), the layout F.cross_entropy and argmax(dim=1) take for targets (N, T)
=========  ====================================================================================

Dropout sites: :class:`hybrid_hpo.nn.HyperDropout` multiplies activations by a non-persistent buffer ``scale``
of ones, so the plain forward pass is unchanged (bit for bit, same parameter initialisation) and a
family can substitute a per-example scale through ``functional_call`` (per-unit dropout,
:mod:`hybrid_hpo.hyper.dropout`); :func:`hybrid_hpo.nn.dropout_sites` lists them.

All are plain ``nn.Module`` trees, so ``torch.func.functional_call(model, params, (x,))`` and
``model.double()`` work; the device is the caller's (no ``.cuda()`` here).
"""

from __future__ import annotations

import functools
import math
import numbers

import torch
from torch import nn

from hybrid_hpo.errors import ConfigError
from hybrid_hpo.nn import HyperDropout

MODELS: tuple[str, ...] = ("logreg", "mlp", "cnn", "resnet18", "lstm_lm")
ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "tanh": nn.Tanh}

_CNN_CHANNELS = (32, 64)
_CNN_POOLED = {1: 4, 2: 2}  # adaptive-pool output size per spatial dim (length 4 in 1-D, 2x2 in 2-D)


def build_model(name: str, *, input_shape: tuple[int, ...], num_classes: int,
                hidden: tuple[int, ...] = (512, 256), activation: str = "relu",
                cifar_stem: bool = True) -> nn.Module:
    """Build model ``name`` (one of :data:`MODELS`) for inputs ``(N, *input_shape)`` and ``num_classes``.

    ``hidden`` is used by ``mlp`` only; ``activation`` by ``mlp`` and ``cnn`` (``resnet18`` is ReLU
    only); ``cifar_stem`` by ``resnet18`` only.
    """
    if name not in MODELS:
        raise ConfigError(f"model: unknown name {name!r}; choose one of {', '.join(MODELS)}")
    if activation not in ACTIVATIONS:
        raise ConfigError(f"activation: unknown {activation!r}; choose one of {', '.join(ACTIVATIONS)}")
    input_shape = tuple(input_shape)
    if not input_shape or not all(_is_pos_int(d) for d in input_shape):
        raise ConfigError(f"input_shape: got {input_shape!r}; use a tuple of positive ints, e.g. (1, 28, 28)")
    if not _is_pos_int(num_classes) or num_classes < 2:
        raise ConfigError(f"num_classes: got {num_classes!r}; use an integer >= 2")
    act = ACTIVATIONS[activation]

    if name == "logreg":
        return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(input_shape), num_classes))
    if name == "mlp":
        return _mlp(input_shape, num_classes, tuple(hidden), act)
    if name == "cnn":
        return _cnn(input_shape, num_classes, act)
    if name == "lstm_lm":
        return LSTMLanguageModel(num_classes, _lm_width(input_shape, hidden))
    if activation != "relu":
        raise ConfigError(f"activation: resnet18 supports only 'relu', got {activation!r}; use activation='relu'")
    return _resnet18(input_shape, num_classes, bool(cifar_stem))


class LSTMLanguageModel(nn.Module):
    """Embedding(V, H) -> gate -> one-layer LSTM(H, H) -> gate -> Linear(H, V).

    x (N, T) int64 tokens -> logits (N, V, T). Both gates act on (N, T, H) with one scale per
    sequence and unit, shared over time (``site_shape`` (1, H): variational dropout, Gal & Ghahramani).
    """

    def __init__(self, vocab: int, width: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        self.embed_gate = HyperDropout((1, width))
        self.lstm = nn.LSTM(width, width, batch_first=True)
        self.output_gate = HyperDropout((1, width))
        self.decoder = nn.Linear(width, vocab)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden, _ = self.lstm(self.embed_gate(self.embed(x)))
        return self.decoder(self.output_gate(hidden)).transpose(1, 2)


@functools.cache
def has_dropout_sites(name: str) -> bool:
    """Whether built-in model ``name`` has :class:`HyperDropout` sites, read off a tiny instance
    (token windows (4,) for ``lstm_lm``, 8x8 one-channel images otherwise; cached per name)."""
    from hybrid_hpo.nn import dropout_sites

    shape = (4,) if name == "lstm_lm" else (1, 8, 8)
    return bool(dropout_sites(build_model(name, input_shape=shape, num_classes=2, hidden=(2,))))


def _lm_width(input_shape: tuple[int, ...], hidden: tuple[int, ...]) -> int:
    if len(input_shape) != 1:
        raise ConfigError(f"input_shape: lstm_lm needs token windows (T,), got {input_shape!r}; use dataset text")
    if len(hidden) != 1 or not _is_pos_int(hidden[0]):
        raise ConfigError(f"hidden: lstm_lm takes one width (embedding = LSTM size), got {hidden!r}; "
                          "e.g. --hidden 128")
    return int(hidden[0])


def _is_pos_int(v: object) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool) and v >= 1


def _mlp(input_shape: tuple[int, ...], num_classes: int, hidden: tuple[int, ...],
         act: type[nn.Module]) -> nn.Sequential:
    """flatten -> (Linear(d_i, d_{i+1}) -> act -> HyperDropout) per hidden width -> Linear(d_last, C)."""
    if not all(_is_pos_int(h) for h in hidden):
        raise ConfigError(f"hidden: got {hidden!r}; use a tuple of positive ints, e.g. (512, 256)")
    widths = (math.prod(input_shape), *hidden)
    layers: list[nn.Module] = [nn.Flatten()]
    for d_in, d_out in zip(widths[:-1], widths[1:]):
        layers += [nn.Linear(d_in, d_out), act(), HyperDropout((d_out,))]
    layers.append(nn.Linear(widths[-1], num_classes))
    return nn.Sequential(*layers)


def _cnn(input_shape: tuple[int, ...], num_classes: int, act: type[nn.Module]) -> nn.Sequential:
    """Two 3-wide same-padded convs, a 2x max-pool, then an adaptive average pool to a fixed size.

    (N, C_in, L) -> (N, 64, 4) or (N, C_in, H, W) -> (N, 64, 2, 2), so the head is Linear(256, C)
    for any input length / size >= 2.
    """
    spatial = len(input_shape) - 1
    if spatial not in _CNN_POOLED:
        raise ConfigError(f"input_shape: cnn needs (channels, length) or (channels, height, width), "
                          f"got {input_shape!r}; use logreg or mlp for flat features")
    if min(input_shape[1:]) < 2:
        raise ConfigError(f"input_shape: cnn needs spatial sizes >= 2, got {input_shape!r}")
    conv = nn.Conv1d if spatial == 1 else nn.Conv2d
    pool = nn.MaxPool1d if spatial == 1 else nn.MaxPool2d
    adaptive = nn.AdaptiveAvgPool1d if spatial == 1 else nn.AdaptiveAvgPool2d
    c1, c2 = _CNN_CHANNELS
    out = _CNN_POOLED[spatial]
    return nn.Sequential(
        conv(input_shape[0], c1, 3, padding=1), act(),
        conv(c1, c2, 3, padding=1), act(),
        pool(2), adaptive(out), nn.Flatten(),
        nn.Linear(c2 * out ** spatial, num_classes),
    )


def _resnet18(input_shape: tuple[int, ...], num_classes: int, cifar_stem: bool) -> nn.Module:
    """torchvision resnet18 with ``input_shape[0]`` input channels; CIFAR stem = 3x3/1 conv1, no max-pool."""
    import torchvision

    if len(input_shape) != 3:
        raise ConfigError(f"input_shape: resnet18 needs (channels, height, width), got {input_shape!r}; "
                          "use cnn for 1-D inputs")
    model = torchvision.models.resnet18(weights=None, num_classes=num_classes)
    in_channels = input_shape[0]
    if cifar_stem:
        model.conv1 = nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
        model.maxpool = nn.Identity()
    elif in_channels != 3:
        model.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
    # same initialisation torchvision gives its own conv layers
    nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")
    return model
