"""Per-example loss weights (data reweighting; the benchmark of Hataya & Yamada, AISTATS 2023).

One λ per training example, λ of shape (num_train,), gathered with the batch's example indices.
The weight of example i is s_i = sigmoid(λ_i) ∈ (0, 1), and the training loss of a batch b is the
weighted mean

    L_T(w, λ) = Σ_{i ∈ b} s_i · ℓ_i(w) / Σ_{i ∈ b} s_i,

with ℓ_i the task's per-example loss (cross-entropy by default; any loss of a user's Task),

so only relative weights matter (scaling every s_i changes nothing, and the step size of the
inner optimizer stays that of an unweighted run). λ starts at 0 (every s_i = 1/2, the unweighted
loss). L_V is the plain mean task loss on validation examples: λ reaches it only through w*(λ).
On a class-imbalanced training split (``imbalance`` option of the data) the hypergradient raises the
weights of the classes the balanced validation set needs — the picture shows the weights by class.
"""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from hybrid_hpo.errors import ConfigError
from hybrid_hpo.hyper.base import Batch, FamilyContext, HyperFamily, ModelFn

if TYPE_CHECKING:
    from hybrid_hpo.config import RunConfig
    from hybrid_hpo.splits import DataSplits
    from hybrid_hpo.task.task import ExampleLoss

PICTURE = "example_weights_by_class.png"


class Reweight(HyperFamily):
    """One loss weight sigmoid(λ_i) per training example (see the module docstring).

    Args:
        num_train: training-split size N (λ has shape (N,)).
        like: a weight tensor giving λ's dtype and device.
        loss: the task's per-example loss (default: cross-entropy).
    """

    name = "reweight"

    def __init__(self, num_train: int, *, like: Tensor, loss: ExampleLoss | None = None) -> None:
        super().__init__(loss)
        if num_train < 1:
            raise ConfigError(f"num_train: reweight needs at least one training example (got {num_train})")
        self._register("weight", torch.zeros(num_train, dtype=like.dtype, device=like.device))

    @classmethod
    def from_config(cls, config: RunConfig, context: FamilyContext) -> Reweight:
        return cls(context.num_train, like=next(iter(context.params.values())), loss=context.loss)

    @staticmethod
    def weights(hparams: Mapping[str, Tensor]) -> Tensor:
        """s = sigmoid(λ), shape (N,)."""
        return torch.sigmoid(hparams["weight"])

    def train_loss(self, model_fn: ModelFn, params: Mapping[str, Tensor], hparams: Mapping[str, Tensor],
                   batch: Batch) -> Tensor:
        x, y, index = batch
        losses = self.example_loss(self.predict(model_fn, params, hparams, x), y)  # (B,)
        s = self.weights(hparams)[index]
        return (s * losses).sum() / s.sum()

    def summaries(self, params: Mapping[str, Tensor]) -> dict[str, float]:
        """Mean, min, max of the weights s and the effective sample size (Σs)²/Σs² / N ∈ (0, 1]."""
        with torch.no_grad():
            s = self.weights(self.hparams())
            ess = s.sum().square() / s.square().sum() / s.numel()
            mean, low, high, ess = torch.stack([s.mean(), s.min(), s.max(), ess]).tolist()
        return {"example_weight_mean": mean, "example_weight_min": low, "example_weight_max": high,
                "example_weight_ess": ess}

    def class_weights(self, labels: Tensor) -> dict[int, Tensor]:
        """The weights s of the training examples of each class present in ``labels`` (N,)."""
        s = self.weights(self.hparams()).detach().cpu()
        labels = labels.cpu()
        return {int(c): s[labels == c] for c in labels.unique()}

    def render(self, params: Mapping[str, Tensor], directory: Path, data: DataSplits | None = None) -> list[Path]:
        """A histogram of the learned weights per class (needs ``data`` of a classification task for
        the training labels; otherwise no picture)."""
        from hybrid_hpo.pictures import histogram_by_group

        if data is None or data.num_classes is None:
            return []
        labels = data.train.targets()
        if labels.ndim != 1:
            return []
        groups = {f"class {c} (mean {s.mean():.2f})": s for c, s in self.class_weights(labels).items()}
        return [histogram_by_group(groups, Path(directory) / PICTURE, xlabel="example weight sigmoid(λ)",
                                   bins=25, title="learned per-example loss weights by class")]
