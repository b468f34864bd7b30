"""Data augmentation as hyperparameters: a learned augmentation network, and fixed shift/flip.

``augment`` (Lorraine, Vicol & Duvenaud 2020, Sec. 5): λ = the weights of a small U-Net-style
network U_λ that maps an input x and Gaussian noise ε ~ N(0, I) of the same shape to an augmented
input of the same shape,

    U_λ(x, ε) = x + out(act(up([upsample(act(down(h))), h])))),  h = act(enc([x, ε]))

(``[a, b]``: channel concatenation, the skip connection; ``down`` halves the spatial size with a
stride-2 conv, ``upsample`` is nearest-neighbour back to the input size; ``out`` is a 1x1 conv
initialised to zero, so U_λ starts as the identity). The classifier trains on augmented inputs,
validation does not augment:

    L_T(w, λ) = mean_b ℓ(f(U_λ(x_b, ε_b); w), y_b) + 1/2 · c · ||w||²
    L_V(w)    = mean_b ℓ(f(x_b; w), y_b)

(ℓ the task's per-example loss, cross-entropy by default)

with c = ``fixed_decay`` (a fixed L2 on every weight and bias, which keeps the inner problem well
posed; 0 disables it). λ reaches L_V only through w*(λ), so its hypergradient is the IFT's mixed
term through the training loss. A fresh ε is drawn for every evaluation of L_T from the family's
seeded CPU generator (its state is checkpointed), so runs are reproducible.

``fixed_augment`` (the standard baseline, no λ): random integer shifts of up to ``augment_shift``
pixels along every spatial axis (zero padding) and, with ``augment_flip``, a mirror of the last
axis with probability 1/2. ``augment_shift=0`` and no flip is plain training. Digits are not
mirror-invariant (a mirrored 2, 3, 4, 7 or 9 is not that digit), so the digits baseline uses
shifts only.

Inputs: (B, C, H, W) images or (B, C, L) signals (Conv2d / Conv1d accordingly), of any task;
other inputs (flat feature vectors, token windows) are refused with one line.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hybrid_hpo.errors import ConfigError
from hybrid_hpo.hyper.base import Batch, FamilyContext, FamilyOptions, HyperFamily, ModelFn
from hybrid_hpo.hyper.penalty import FIXED_DECAY, fixed_decay_setting, with_fixed_decay
from hybrid_hpo.rules import Range, setting

if TYPE_CHECKING:
    from hybrid_hpo.config import RunConfig
    from hybrid_hpo.splits import DataSplits
    from hybrid_hpo.task.task import ExampleLoss

GENERATOR_SEED_OFFSET = 7919
"""The family generator is seeded with ``config.seed + GENERATOR_SEED_OFFSET`` (a stream distinct
from the trainer's shuffling generator, which uses ``config.seed``)."""
SAMPLES_FILE = "augmentation_samples.png"


def spatial_dims(input_shape: tuple[int, ...], family: str) -> int:
    if len(input_shape) not in (2, 3):
        raise ConfigError(f"family: {family} needs task inputs shaped (channels, H, W) or (channels, L), "
                          f"got {input_shape}; use an image or signal task such as digits or mnist1d")
    return len(input_shape) - 1


class AugmentNet(nn.Module):
    """The U-Net-style augmenter U(x, ε) of the module docstring (x, ε: (B, C, *S) -> (B, C, *S)).

    Args:
        channels: C, the input channels (ε has as many).
        spatial: 1 (signals) or 2 (images).
        width: channels of the full-resolution features; the half-resolution ones have 2·width.
    """

    def __init__(self, channels: int, spatial: int, width: int) -> None:
        super().__init__()
        conv = nn.Conv1d if spatial == 1 else nn.Conv2d
        self.enc = conv(2 * channels, width, 3, padding=1)
        self.down = conv(width, 2 * width, 3, stride=2, padding=1)
        self.up = conv(3 * width, width, 3, padding=1)
        self.out = conv(width, channels, 1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: Tensor, noise: Tensor) -> Tensor:
        h = F.silu(self.enc(torch.cat([x, noise], dim=1)))
        low = F.silu(self.down(h))
        up = F.interpolate(low, size=h.shape[2:], mode="nearest")
        return x + self.out(F.silu(self.up(torch.cat([up, h], dim=1))))


@dataclass(frozen=True)
class AugmentOptions(FamilyOptions):
    """Options of ``augment``."""

    augment_width: int = setting(8, "channels of the learned augmenter", Range(1, integer=True))
    fixed_decay: float = fixed_decay_setting()


@dataclass(frozen=True)
class FixedAugmentOptions(FamilyOptions):
    """Options of ``fixed_augment``."""

    augment_shift: int = setting(1, "largest random shift in pixels", Range(0, integer=True))
    augment_flip: bool = setting(False, "mirror images at random", None)
    fixed_decay: float = fixed_decay_setting()


class Augment(HyperFamily):
    """Learned augmentation: λ = the weights of an :class:`AugmentNet` (module docstring).

    Args:
        params: the classifier's named parameters (dtype and device of λ).
        input_shape: (C, H, W) or (C, L).
        width: feature channels of the augmenter.
        fixed_decay: c of the fixed L2 term in L_T (>= 0).
        seed: seed of the noise generator.
        loss: the task's per-example loss (default: cross-entropy).
    """

    name = "augment"
    options = AugmentOptions

    def __init__(self, params: Mapping[str, Tensor], *, input_shape: tuple[int, ...],
                 width: int = AugmentOptions.augment_width, fixed_decay: float = FIXED_DECAY, seed: int = 0,
                 loss: ExampleLoss | None = None) -> None:
        super().__init__(loss)
        spatial = spatial_dims(tuple(input_shape), self.name)
        AugmentOptions(augment_width=width, fixed_decay=fixed_decay)
        self.fixed_decay = float(fixed_decay)
        first = next(iter(params.values()))
        self.net = AugmentNet(input_shape[0], spatial, width).to(dtype=first.dtype, device=first.device)
        for name, value in self.net.named_parameters():
            self._register(name, value)
        self._seed_generator(seed + GENERATOR_SEED_OFFSET)

    @classmethod
    def from_config(cls, config: RunConfig, context: FamilyContext) -> Augment:
        options = config.family_options
        return cls(context.params, input_shape=context.input_shape, width=options["augment_width"],
                   fixed_decay=options["fixed_decay"], seed=config.seed, loss=context.loss)

    def augment(self, hparams: Mapping[str, Tensor], x: Tensor, noise: Tensor) -> Tensor:
        """U_λ(x, ε) with λ = ``hparams``: the augmented inputs, shaped like x."""
        return torch.func.functional_call(self.net, dict(hparams), (x, noise))

    def draw_noise(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """ε ~ N(0, I) shaped like x, drawn on the CPU from ``generator`` (default: the family's)."""
        noise = torch.randn(x.shape, generator=self.generator if generator is None else generator, dtype=x.dtype)
        return noise.to(x.device)

    def train_loss(self, model_fn: ModelFn, params: Mapping[str, Tensor], hparams: Mapping[str, Tensor],
                   batch: Batch) -> Tensor:
        x, y, _ = batch
        augmented = self.augment(hparams, x, self.draw_noise(x))
        loss = self.data_loss(model_fn(params, augmented), y)
        return with_fixed_decay(loss, params, self.fixed_decay)

    def summaries(self, params: Mapping[str, Tensor]) -> dict[str, float]:
        """augment_lambda_norm: ||λ||₂; augment_out_norm: norm of the output layer (0 = identity)."""
        with torch.no_grad():
            hparams = self.hparams()
            total = torch.linalg.vector_norm(torch.stack([t.norm() for t in hparams.values()]))
            out = torch.linalg.vector_norm(torch.stack([hparams["out.weight"].norm(), hparams["out.bias"].norm()]))
            lambda_norm, out_norm = torch.stack([total, out]).tolist()
        return {"augment_lambda_norm": lambda_norm, "augment_out_norm": out_norm}

    @torch.no_grad()
    def render(self, params: Mapping[str, Tensor], directory: Path, data: DataSplits | None = None,
               samples: int = 6) -> list[Path]:
        """``augmentation_samples.png``: per class (up to 10), a validation original, ``samples``
        augmentations U_λ(x, ε) and their per-pixel standard deviation (over 32 draws). Noise comes
        from a generator seeded 0, never the training stream. Needs ``data``; otherwise no picture."""
        if data is None or len(data.input_shape) != 3 or data.num_classes is None:
            return []
        from hybrid_hpo.pictures import new_figure, save_figure, tight_layout

        split = data.val if len(data.val) else data.train
        labels = split.targets()
        picks = [int(torch.nonzero(labels == c)[0]) for c in range(data.num_classes) if (labels == c).any()][:10]
        x = split.fetch(torch.tensor(picks))[0].to(self.net.out.weight.dtype)
        generator = torch.Generator().manual_seed(0)
        hparams = {name: t.detach() for name, t in self.hparams().items()}
        draws = torch.stack([self.augment(hparams, x, self.draw_noise(x, generator)) for _ in range(32)])
        std = draws.std(dim=0)[:, 0].cpu().double().numpy()
        shown = torch.cat([x[None], draws[:samples]])[:, :, 0].cpu().double().numpy()  # (1 + samples, N, H, W)
        low, high = float(shown.min()), float(shown.max())
        figure = new_figure(1.0 * (samples + 2), 1.0 * len(picks) + 0.6)
        axes = figure.subplots(len(picks), samples + 2, squeeze=False)
        for row in range(len(picks)):
            for column in range(samples + 2):
                ax = axes[row, column]
                ax.set_xticks([])
                ax.set_yticks([])
                if column < samples + 1:
                    ax.imshow(shown[column, row], cmap="gray", vmin=low, vmax=high, interpolation="nearest")
                else:
                    ax.imshow(std[row], cmap="magma", vmin=0.0, vmax=max(float(std.max()), 1e-12),
                              interpolation="nearest")
                if row == 0:
                    ax.set_title("original" if column == 0 else "std" if column == samples + 1 else f"sample {column}",
                                 fontsize=7)
            axes[row, 0].set_ylabel(f"y={int(labels[picks[row]])}", fontsize=7)
        figure.suptitle(f"learned augmentation U_λ(x, ε): std max {float(std.max()):.3f}", fontsize=9)
        tight_layout(figure, 0.35)
        return [save_figure(figure, Path(directory) / SAMPLES_FILE)]


def random_shift_flip(x: Tensor, shift: int, flip: bool, generator: torch.Generator) -> Tensor:
    """x (B, C, *S) shifted by independent random integers in [-shift, shift] along every spatial
    axis (vacated pixels are 0) and, when ``flip``, mirrored along the last axis with probability
    1/2; the random numbers come from ``generator`` (CPU)."""
    batch, spatial = x.shape[0], x.dim() - 2
    if shift > 0:
        padded = F.pad(x, (shift, shift) * spatial)
        offsets = torch.randint(0, 2 * shift + 1, (batch, spatial), generator=generator).to(x.device)
        rows = torch.arange(batch, device=x.device)
        if spatial == 1:
            index = offsets[:, 0, None] + torch.arange(x.shape[2], device=x.device)          # (B, L)
            x = padded[rows[:, None], :, index].permute(0, 2, 1)                              # (B, C, L)
        else:
            r = offsets[:, 0, None] + torch.arange(x.shape[2], device=x.device)               # (B, H)
            c = offsets[:, 1, None] + torch.arange(x.shape[3], device=x.device)               # (B, W)
            x = padded[rows[:, None, None], :, r[:, :, None], c[:, None, :]].permute(0, 3, 1, 2)  # (B, C, H, W)
    if flip:
        mirror = (torch.rand(batch, generator=generator) < 0.5).to(x.device)
        x = torch.where(mirror.view(-1, *([1] * (x.dim() - 1))), x.flip(-1), x)
    return x


class FixedAugment(HyperFamily):
    """Baseline without λ: random shifts (and optional flips) of the training inputs, same L_T
    otherwise (module docstring). ``num_hparams == 0``: the bilevel loop takes no hyper steps."""

    name = "fixed_augment"
    options = FixedAugmentOptions
    tunable = False

    def __init__(self, *, input_shape: tuple[int, ...], shift: int = FixedAugmentOptions.augment_shift,
                 flip: bool = FixedAugmentOptions.augment_flip, fixed_decay: float = FIXED_DECAY, seed: int = 0,
                 loss: ExampleLoss | None = None) -> None:
        super().__init__(loss)
        spatial_dims(tuple(input_shape), self.name)
        FixedAugmentOptions(augment_shift=shift, augment_flip=flip, fixed_decay=fixed_decay)
        self.shift, self.flip, self.fixed_decay = int(shift), bool(flip), float(fixed_decay)
        self._seed_generator(seed + GENERATOR_SEED_OFFSET)

    @classmethod
    def from_config(cls, config: RunConfig, context: FamilyContext) -> FixedAugment:
        options = config.family_options
        return cls(input_shape=context.input_shape, shift=options["augment_shift"], flip=options["augment_flip"],
                   fixed_decay=options["fixed_decay"], seed=config.seed, loss=context.loss)

    def train_loss(self, model_fn: ModelFn, params: Mapping[str, Tensor], hparams: Mapping[str, Tensor],
                   batch: Batch) -> Tensor:
        x, y, _ = batch
        loss = self.data_loss(model_fn(params, random_shift_flip(x, self.shift, self.flip, self.generator)), y)
        return with_fixed_decay(loss, params, self.fixed_decay)

    def summaries(self, params: Mapping[str, Tensor]) -> dict[str, float]:
        return {"augment_shift": float(self.shift), "augment_flip": float(self.flip)}
