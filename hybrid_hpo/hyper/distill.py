"""Dataset distillation as hyperparameters: λ = the pixels of a few synthetic images per class.

(Wang et al. 2018, "Dataset Distillation"; by implicit differentiation as in Lorraine, Vicol &
Duvenaud 2020, Sec. 5.) With n = ``distill_per_class`` and C classes, λ is one tensor
``images`` of shape (n·C, *input_shape) with fixed labels ``labels = [0]*n + [1]*n + ... `` The
model trains only on them; the real training batch is ignored by L_T:

    L_T(w, λ) = mean_j ℓ(f(images_j; w), labels_j) + 1/2 · c · ||w||²
    L_V(w)    = mean_b ℓ(f(x_b; w), y_b)            on real validation data

with ℓ the task's per-example loss (cross-entropy by default). Distillation needs classes (the
fixed labels): a task that is not classification is refused with one line, and so are inputs
that are not images or signals (C, H, W) / (C, L) of floats.

c = ``fixed_decay`` (a fixed L2 on every weight and bias). For the IFT the inner problem must be
(approximately) solved: with ``model=logreg`` and c > 0 L_T is strongly convex in w, so w*(λ) is
unique and the inner steps converge to it; with a CNN the inner problem is non-convex and the
hypergradient is the usual local approximation.

The pixels are unconstrained (no clamp to the data range) and start as noise,
``INIT_PIXEL + INIT_NOISE · N(0, 1)`` = 0.25 + 0.1·N(0, 1) (0.25 is close to the mean pixel of
digits, which lie in [0, 1]); no real example is copied in.

:func:`fit_on_images` trains a *fresh* model on the distilled images only — the evaluation the
results report (test accuracy of a model that never saw a real training example).
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
from hybrid_hpo.hyper.augment import spatial_dims
from hybrid_hpo.hyper.base import Batch, FamilyContext, FamilyOptions, HyperFamily, ModelFn
from hybrid_hpo.hyper.penalty import FIXED_DECAY, fixed_decay_setting, l2_penalty, with_fixed_decay
from hybrid_hpo.optimizers import make_optimizer
from hybrid_hpo.rules import Range, setting

if TYPE_CHECKING:
    from hybrid_hpo.config import RunConfig
    from hybrid_hpo.splits import DataSplits
    from hybrid_hpo.task.task import ExampleLoss

INIT_PIXEL = 0.25
INIT_NOISE = 0.1
GRID_FILE = "distilled_images.png"


@dataclass(frozen=True)
class DistillOptions(FamilyOptions):
    """Options of ``distill``."""

    distill_per_class: int = setting(1, "distilled images per class", Range(1, integer=True))
    fixed_decay: float = fixed_decay_setting()


class Distill(HyperFamily):
    """Learned synthetic training set (module docstring).

    Args:
        params: the model's named parameters (dtype and device of λ).
        input_shape: shape of one input.
        num_classes: C.
        per_class: n, images per class (>= 1).
        fixed_decay: c of the fixed L2 term in L_T (>= 0).
        loss: the task's per-example loss (default: cross-entropy).

    The initial pixels come from the global torch RNG (the trainer seeds it with ``config.seed``).
    """

    name = "distill"
    options = DistillOptions

    def __init__(self, params: Mapping[str, Tensor], *, input_shape: tuple[int, ...], num_classes: int,
                 per_class: int = DistillOptions.distill_per_class, fixed_decay: float = FIXED_DECAY,
                 loss: ExampleLoss | None = None) -> None:
        super().__init__(loss)
        if num_classes is None:
            raise ConfigError("family: distill learns images per class and needs a classification task; this task "
                              "has no classes (give Task.num_classes, or use another family)")
        spatial_dims(tuple(input_shape), self.name)
        DistillOptions(distill_per_class=per_class, fixed_decay=fixed_decay)
        first = next(iter(params.values()))
        self.per_class, self.fixed_decay = int(per_class), float(fixed_decay)
        self.labels = torch.arange(num_classes, device=first.device).repeat_interleave(self.per_class)
        shape = (num_classes * self.per_class, *input_shape)
        self._register("images", INIT_PIXEL + INIT_NOISE * torch.randn(shape, dtype=first.dtype).to(first.device))

    @classmethod
    def from_config(cls, config: RunConfig, context: FamilyContext) -> Distill:
        return cls(context.params, input_shape=context.input_shape, num_classes=context.num_classes,
                   per_class=config.family_options["distill_per_class"],
                   fixed_decay=config.family_options["fixed_decay"], loss=context.loss)

    def train_loss(self, model_fn: ModelFn, params: Mapping[str, Tensor], hparams: Mapping[str, Tensor],
                   batch: Batch) -> Tensor:
        """L_T on the distilled set; ``batch`` (real data) is not used."""
        loss = self.data_loss(model_fn(params, hparams["images"]), self.labels)
        return with_fixed_decay(loss, params, self.fixed_decay)

    def images(self) -> tuple[Tensor, Tensor]:
        """Detached copies of the distilled images (n·C, *input_shape) and their labels (n·C,)."""
        return self._raw["images"].detach().clone(), self.labels.clone()

    def summaries(self, params: Mapping[str, Tensor]) -> dict[str, float]:
        """distill_pixel_mean / distill_pixel_std over all distilled pixels."""
        with torch.no_grad():
            images = self._raw["images"]
            mean, std = torch.stack([images.mean(), images.std()]).tolist()
        return {"distill_pixel_mean": mean, "distill_pixel_std": std}

    def render(self, params: Mapping[str, Tensor], directory: Path, data: DataSplits | None = None) -> list[Path]:
        """``distilled_images.png``: the grid of distilled images, one row per class (one row of C
        images when n = 1), one grey scale [min, max] over the grid."""
        from hybrid_hpo.pictures import image_grid

        images, labels = self.images()
        classes = [str(int(c)) for c in labels[:: self.per_class]]
        title = f"distilled images: {self.per_class} per class"
        path = Path(directory) / GRID_FILE
        if self.per_class == 1:
            return [image_grid(images, path, ncols=len(classes), titles=classes, title=title)]
        return [image_grid(images, path, ncols=self.per_class, row_labels=classes, title=title)]


def fit_on_images(model: nn.Module, x: Tensor, y: Tensor, *, steps: int, lr: float, optimizer: str = "adam",
                  decay: float = 0.0) -> nn.Module:
    """Train ``model`` in place by ``steps`` full-batch steps on (x, y) only, minimising
    mean CE(model(x), y) + 1/2 · decay · ||w||²; returns the model (in eval mode).

    ``optimizer`` is one of hybrid_hpo.optimizers.OPTIMIZERS (sgd, momentum, adam, rmsprop), or "lbfgs":
    L-BFGS with a strong-Wolfe line search for up to ``steps`` iterations (``lr`` is its initial step,
    1 is usual) — for a convex objective (logreg, decay > 0) it reaches the minimiser w*(λ) the
    hypergradient assumes.
    """
    x, y = x.detach(), y.detach()
    params = dict(model.named_parameters())

    def objective() -> Tensor:
        return F.cross_entropy(model(x), y) + l2_penalty(params, decay)

    model.train()
    if optimizer == "lbfgs":
        lbfgs = torch.optim.LBFGS(list(params.values()), lr=lr, max_iter=steps, history_size=50,
                                  tolerance_grad=1e-9, tolerance_change=1e-12, line_search_fn="strong_wolfe")

        def closure() -> Tensor:
            lbfgs.zero_grad(set_to_none=True)
            loss = objective()
            loss.backward()
            return loss

        lbfgs.step(closure)
        return model.eval()
    step = make_optimizer(optimizer, params.values(), lr)
    for _ in range(steps):
        loss = objective()
        step.zero_grad(set_to_none=True)
        loss.backward()
        step.step()
    return model.eval()


@torch.no_grad()
def accuracy(model: nn.Module, x: Tensor, y: Tensor) -> float:
    """Fraction of (x, y) that ``model`` classifies correctly (one host sync)."""
    return (model(x).argmax(dim=1) == y).double().mean().item()
