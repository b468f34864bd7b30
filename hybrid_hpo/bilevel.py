"""The inner loop: Algorithm 2 of Lorraine, Vicol & Duvenaud (AISTATS 2020).

    repeat
        inner_steps times:  w ← inner_optimizer step on L_T(w, λ) over a training mini-batch
        once:               g = dL_V/dλ by the IFT (hybrid_hpo.implicit.hypergradient) on a fresh
                            training batch (L_T) and a validation batch (L_V);
                            λ ← hyper_optimizer step with g, unless g is not finite or the
                            solver diverged and diverged_policy is "reject" (rejected)

An epoch is one pass over the training split in shuffled mini-batches; the count of inner steps
runs across epochs, so a hyper step happens after every ``inner_steps`` inner steps whatever the
epoch length. All randomness of the loop (shuffles, hyper batches) comes from one CPU
``torch.Generator`` seeded with ``config.seed``; model initialisation uses the same seed in a
forked global RNG. On CPU a run is therefore reproducible, and :meth:`BilevelTrainer.state_dict`
/ :meth:`BilevelTrainer.load_state_dict` continue it bit for bit.

The task (model, data, per-example loss, metrics) is a :class:`hybrid_hpo.Task`: given directly,
made by a factory ``config -> Task`` (a function, or its name in ``config.task``), or the built-in
one of ``config.dataset`` / ``config.model``. The loop picks the examples of every batch by
position (see :mod:`hybrid_hpo.splits`), so in-memory tensors and DataLoader-read datasets give the
same batches and the same metrics for the same seed.

Metrics (one dict per epoch; losses are the task's mean loss without any penalty, measured on the
full splits in eval mode after the epoch): epoch, <split>_loss and <split>_<metric> for each of
the task's metrics (default: acc) and, for classification, <split>_balanced_acc, with split in
train / val / sel / test (sel only with a selection split, see ``selection_fraction``; test only
when the task has a test set), hypergrad_norm
(mean L2 norm of the accepted hypergradients of the epoch), solver_residual (mean relative residual
of the linear solves, NaN for solvers without one), solver_diverged_steps, rejected_hyper_steps (a
non-finite hypergradient, or a diverged solve under ``diverged_policy: reject``, the default),
hyper_steps (counts in this epoch; rejected steps are included in hyper_steps), epoch_time_s,
num_hparams, and the family's summaries (decay_mean, ...).

A family without λ (``tunable = False``, e.g. the fixed_augment baseline) trains the weights
only: no hyper optimizer, no hyper steps (hyper_steps 0, hypergrad_norm NaN).
:meth:`BilevelTrainer.render` writes the family's pictures of λ (PNG files).
"""
from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
from torch import Tensor, nn

from hybrid_hpo.config import RunConfig
from hybrid_hpo.hyper import FamilyContext, family_class
from hybrid_hpo.implicit import hypergradient
from hybrid_hpo.optimizers import make_optimizer
from hybrid_hpo.splits import DatasetSplit, Split
from hybrid_hpo.task import TaskSource, make_splits, metric_names, resolve_task

logger = logging.getLogger(__name__)

_EVAL_CHUNK = 1024  # examples per forward pass when evaluating a split
_STATE_FORMAT = 1


def resolve_device(device: str | torch.device) -> torch.device:
    """"auto" -> cuda when available, else cpu; anything else as given."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


class _ModelCall:
    """The families' ``model_fn(params, x)``: the model's outputs for inputs x with the weights
    ``params`` and the model's own buffers.

    When ``params`` are the model's own parameter tensors (the same objects, every one: the inner
    steps, the evaluation and the hypergradient, which keeps leaf parameters as they are), this is
    the plain call ``model(x)``; otherwise (a family substitutes tensors, e.g. dropout's scales)
    ``torch.func.functional_call``. Both run the same forward on the same tensors, so they give the
    same outputs and gradients bit for bit; the plain call saves functional_call's swapping of every
    tensor in and out of the module (the larger part of a step's time on a small model).
    """

    def __init__(self, model: nn.Module, own: Mapping[str, Tensor]) -> None:
        self.model, self.own = model, own

    def direct(self, params: Mapping[str, Tensor]) -> bool:
        """Whether ``params`` are the model's own parameters (then ``model(x)`` is the same call)."""
        own = self.own
        return len(params) == len(own) and all(params.get(name) is tensor for name, tensor in own.items())

    def __call__(self, params: Mapping[str, Tensor], x: Tensor) -> Tensor:
        if self.direct(params):
            return self.model(x)
        return torch.func.functional_call(self.model, {**dict(self.model.named_buffers()), **params}, (x,))


class BilevelTrainer:
    """Weights by SGD-like steps, hyperparameters by IFT hypergradients (see the module docstring).

    Args:
        config: the run settings (validated here).
        device: overrides ``config.device``; "auto" picks cuda when available.
        task: a :class:`hybrid_hpo.Task`, a factory ``config dict -> Task``, or a factory's name
            (``FILE.py:FUNCTION`` / ``MODULE:FUNCTION``); default: ``config.task``, else the built-in
            task of ``config.dataset`` and ``config.model``. A Task's model is trained in place.

    Attributes:
        epoch: epochs completed.
        task: the :class:`hybrid_hpo.Task` trained on.
        model: the ``nn.Module`` (its parameters are the weights w).
        data: the :class:`~hybrid_hpo.splits.DataSplits` (train / val / test).
        family: the :class:`~hybrid_hpo.hyper.HyperFamily` owning λ.
    """

    def __init__(self, config: RunConfig, device: str | torch.device | None = None,
                 task: TaskSource = None) -> None:
        config.validate()
        self.config = config
        self.device = resolve_device(config.device if device is None else device)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)  # model (factory) and family initialisation are reproducible
            self.task = resolve_task(task, config)
            self.model = self.task.model.to(self.device)
            self.data = data = make_splits(self.task, config, self.device)
            context = FamilyContext(params=dict(self.model.named_parameters()), num_train=len(data.train),
                                    input_shape=data.input_shape, num_classes=data.num_classes, model=self.model,
                                    loss=self.task.example_loss, data=data)
            self.family = family_class(config.family).from_config(config, context)
        self.metric_functions = self.task.metric_functions()
        self.weights = dict(self.model.named_parameters())  # the live parameter tensors, name -> tensor
        self.model_call = _ModelCall(self.model, self.weights)
        self.inner_optimizer = make_optimizer(config.inner_optimizer, self.model.parameters(), config.inner_lr)
        self.hyper_optimizer = (make_optimizer(config.hyper_optimizer, self.family.hparams().values(),
                                               config.hyper_lr) if self.family.tunable else None)
        self.solver = config.make_solver()
        self.solver_state = None  # the last accepted solve's state (warm start), see Solution.state
        self.generator = torch.Generator().manual_seed(config.seed)
        self.epoch = 0
        self.inner_step_count = 0  # across epochs: a hyper step follows every inner_steps-th inner step

    # ---------------------------------------------------------------------------------- the loop
    def train_epoch(self) -> dict[str, float]:
        """One epoch of Algorithm 2; returns its metrics dict (see the module docstring)."""
        return self._run_epoch(lambda: None)

    def fit(self, epochs: int | None = None, progress: bool = True,
            on_epoch: Callable[[dict[str, float]], None] | None = None) -> list[dict[str, float]]:
        """Run ``epochs`` more epochs (default: until ``config.epochs`` are done) and return their
        metrics. ``progress`` shows a tqdm bar over inner steps; ``on_epoch`` gets each metrics dict
        as soon as its epoch ends (print with ``tqdm.write`` to keep the bar intact)."""
        from tqdm.auto import tqdm

        epochs = max(self.config.epochs - self.epoch, 0) if epochs is None else epochs
        steps = math.ceil(len(self.data.train) / self.config.batch_size)
        history = []
        with tqdm(total=epochs * steps, disable=not progress, unit="step", dynamic_ncols=True) as bar:
            for _ in range(epochs):
                metrics = self._run_epoch(lambda: bar.update(1))
                bar.set_postfix(epoch=metrics["epoch"], val_loss=f"{metrics['val_loss']:.4f}")
                history.append(metrics)
                if on_epoch is not None:
                    on_epoch(metrics)
        return history

    def _run_epoch(self, tick: Callable[[], None]) -> dict[str, float]:
        start = time.perf_counter()
        config, train = self.config, self.data.train
        self.model.train()
        stats = _HyperStats()
        positions = torch.randperm(len(train), generator=self.generator).to(self.device).split(config.batch_size)
        for index, (x, y) in zip(positions, train.batches(positions)):
            self._inner_step((x, y, index))
            self.inner_step_count += 1
            if self.hyper_optimizer is not None and self.inner_step_count % config.inner_steps == 0:
                self._hyper_step(stats)
            tick()
        self.epoch += 1
        metrics = {"epoch": self.epoch, **self._evaluate()}
        metrics.update(stats.summary())
        if stats.rejected:
            logger.warning("epoch %d: rejected %d of %d hyper steps (non-finite hypergradient or diverged solve; "
                           "λ kept). Lower inner_lr / hyper_lr or solver.alpha, or add solver.damping",
                           self.epoch, stats.rejected, stats.steps)
        metrics["num_hparams"] = self.family.num_hparams
        metrics.update(self.family.summaries(self._params()))
        metrics["epoch_time_s"] = time.perf_counter() - start
        return metrics

    def _params(self, detach: bool = False) -> dict[str, Tensor]:
        return {name: p.detach() for name, p in self.weights.items()} if detach else dict(self.weights)

    def _detached_hparams(self) -> dict[str, Tensor]:
        return {name: t.detach() for name, t in self.family.hparams().items()}

    def _inner_step(self, batch: tuple[Tensor, Tensor, Tensor]) -> None:
        """One optimizer step on the weights: w ← step(∇_w L_T(w, λ)) with λ fixed."""
        loss = self.family.train_loss(self.model_call, self._params(), self._detached_hparams(), batch)
        self.inner_optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.inner_optimizer.step()

    def _draw(self, split: Split | DatasetSplit) -> tuple[Tensor, Tensor, Tensor]:
        """A mini-batch of distinct examples (the whole split when it is smaller than a batch)."""
        index = torch.randperm(len(split), generator=self.generator)[: self.config.batch_size].to(self.device)
        return (*split.fetch(index), index)

    def _hyper_step(self, stats: _HyperStats) -> None:
        """One step on λ with the IFT hypergradient; rejected (λ unchanged) when not finite, or when the
        solver diverged and ``config.diverged_policy`` is "reject"."""
        train_batch, val_batch = self._draw(self.data.train), self._draw(self.data.val)
        # The live weights go in as they are (leaves: hypergradient differentiates them without
        # copies, and the model is called directly, see _ModelCall). The buffers are put back
        # afterwards: the hypergradient's forward passes must not move BatchNorm's running statistics.
        buffers = {name: b.clone() for name, b in self.model.named_buffers()}
        model_fn, family = self.model_call, self.family
        try:
            grads, info = hypergradient(
                lambda w, lam: family.train_loss(model_fn, w, lam, train_batch),
                lambda w, lam: family.val_loss(model_fn, w, lam, val_batch),
                self._params(), self._detached_hparams(), solver=self.solver, state=self.solver_state,
                return_info=True,
            )
        finally:
            with torch.no_grad():
                for name, buffer in self.model.named_buffers():
                    buffer.copy_(buffers[name])
        # A failed solve hands nothing on: the next one starts cold instead of from a NaN or a bad sketch.
        self.solver_state = info.state if info.finite and not info.diverged else None
        rejected = not info.finite or (info.diverged and self.config.diverged_policy == "reject")
        stats.record(info, rejected)
        if rejected:
            logger.debug("epoch %d: rejected a hypergradient (%s, finite %s, residual %.3g, diverged %s)",
                         self.epoch + 1, info.solver, info.finite, info.residual, info.diverged)
            return
        leaves = family.hparams()
        for name, leaf in leaves.items():
            leaf.grad = grads[name].to(leaf.dtype)
        self.hyper_optimizer.step()
        self.hyper_optimizer.zero_grad(set_to_none=True)
        stats.add_norm(torch.linalg.vector_norm(torch.stack(torch._foreach_norm(list(grads.values())))))

    # --------------------------------------------------------------------------------- pictures
    def render(self, directory: str | Path) -> list[Path]:
        """Write the family's pictures of λ (e.g. the weight-decay histogram, augmentation samples,
        distilled images) as PNG files into ``directory`` and return their paths; does not change
        the training state (see :meth:`HyperFamily.render`)."""
        return self.family.render(self._params(detach=True), Path(directory), self.data)

    # ---------------------------------------------------------------------------------- metrics
    @torch.no_grad()
    def _evaluate(self) -> dict[str, float]:
        """On each evaluated split (train, val, test if present), eval mode: ``<split>_loss``, the
        mean task loss; ``<split>_<name>``, the mean of each task metric; for classification
        ``<split>_balanced_acc``, the mean per-class recall over the classes present (sequence
        targets (N, T) count per token). One host sync for all of them."""
        self.model.eval()
        params, hparams = self._params(), self._detached_hparams()  # no_grad: the live weights as they are
        model_fn = self.model_call
        functions = {"loss": self.task.example_loss, **self.metric_functions}
        classes = self.data.num_classes
        keys, values = [], []
        for prefix, split in self.data.evaluated():
            sums = torch.zeros(len(functions), dtype=torch.float64, device=self.device)
            by_class = torch.zeros((2, classes or 0), dtype=torch.float64, device=self.device)
            chunks = torch.arange(len(split), device=self.device).split(_EVAL_CHUNK)
            for x, y in split.batches(chunks):
                output = self.family.predict(model_fn, params, hparams, x)
                sums += torch.stack([function(output, y).double().sum() for function in functions.values()])
                if classes:
                    by_class += torch.stack(per_class_counts(output.argmax(dim=1), y, classes))
            keys += [f"{prefix}_{name}" for name in functions]
            values.append(sums / len(split))
            if classes:
                present = by_class[1] > 0
                keys.append(f"{prefix}_balanced_acc")
                values.append((by_class[0][present] / by_class[1][present]).mean().reshape(1))
        self.model.train()
        return dict(zip(keys, torch.cat(values).tolist()))

    def metric_names(self) -> tuple[str, ...]:
        """The keys :meth:`train_epoch` reports for the splits, e.g. ``("train_loss", "train_acc",
        "train_balanced_acc", "val_loss", ...)``, in order."""
        return metric_names(self.data, self.metric_functions)

    # ------------------------------------------------------------------------------------ state
    def state_dict(self) -> dict:
        """Everything needed to continue: weights, raw λ, both optimizers, the batch generator,
        counters, the solver's warm-start state (None unless a warm-start option is on) and the
        config (as a plain dict). Tensors are copies; the dict holds only tensors,
        numbers, strings, lists and dicts, so ``torch.load(path, weights_only=True)`` reads it."""
        return copy.deepcopy({
            "format": _STATE_FORMAT,
            "epoch": self.epoch,
            "inner_step_count": self.inner_step_count,
            "model": self.model.state_dict(),
            "hparams": self.family.state_dict(),
            "inner_optimizer": self.inner_optimizer.state_dict(),
            "hyper_optimizer": {} if self.hyper_optimizer is None else self.hyper_optimizer.state_dict(),
            "generator": self.generator.get_state(),
            "solver_state": self.solver_state,
            "config": self.config.to_dict(),
        })

    def load_state_dict(self, state: Mapping) -> None:
        """Restore a :meth:`state_dict` into a trainer built from the same config; training then
        continues exactly as the saved trainer would have (bit for bit on CPU). Built from another
        config (population-based training: the same task and family, other meta-settings), the
        weights, λ, optimizer moments and counters are the saved ones and the learning rates this
        trainer's ``inner_lr`` / ``hyper_lr``."""
        if state.get("format") != _STATE_FORMAT:
            raise ValueError(f"unsupported trainer state format {state.get('format')!r}; expected {_STATE_FORMAT}")
        self.model.load_state_dict(state["model"])
        self.family.load_state_dict(state["hparams"])
        # Copies: an optimizer keeps the tensors it is given (momentum, Adam moments) and steps them in
        # place, so two trainers restored from one state would otherwise share, and change, them.
        self.inner_optimizer.load_state_dict(copy.deepcopy(state["inner_optimizer"]))
        if self.hyper_optimizer is not None:
            self.hyper_optimizer.load_state_dict(copy.deepcopy(state["hyper_optimizer"]))
        for optimizer, lr in ((self.inner_optimizer, self.config.inner_lr), (self.hyper_optimizer, self.config.hyper_lr)):
            for group in optimizer.param_groups if optimizer is not None else ():
                group["lr"] = lr  # load_state_dict restored the saved run's
        self.generator.set_state(state["generator"].cpu())
        self.epoch = int(state["epoch"])
        self.inner_step_count = int(state["inner_step_count"])
        self.solver_state = _to_device(copy.deepcopy(state.get("solver_state")), self.device)  # absent in older states


def _to_device(value, device: torch.device):
    """``value`` (tensors inside dicts and lists, or anything else) with its tensors on ``device``."""
    if isinstance(value, Tensor):
        return value.to(device)
    if isinstance(value, dict):
        return {key: _to_device(item, device) for key, item in value.items()}
    if isinstance(value, list):
        return [_to_device(item, device) for item in value]
    return value


def per_class_counts(predicted: Tensor, y: Tensor, num_classes: int) -> tuple[Tensor, Tensor]:
    """(correct, seen): float64 (num_classes,) counts of right predictions and of examples per true
    class; recall_c = correct_c / seen_c. ``predicted`` and ``y`` are class indices of equal shape."""
    seen = torch.bincount(y.reshape(-1), minlength=num_classes).double()
    correct = torch.bincount(y[predicted == y], minlength=num_classes).double()
    return correct, seen


class _HyperStats:
    """Per-epoch hyper-step diagnostics; the norms stay on the device until :meth:`summary`."""

    def __init__(self) -> None:
        self.steps = self.rejected = self.diverged = 0
        self.residuals: list[float] = []
        self.norms: list[Tensor] = []

    def record(self, info, rejected: bool) -> None:
        self.steps += 1
        self.rejected += rejected
        self.diverged += info.diverged
        if not math.isnan(info.residual):
            self.residuals.append(info.residual)

    def add_norm(self, norm: Tensor) -> None:
        self.norms.append(norm)

    def summary(self) -> dict[str, float]:
        norm = torch.stack(self.norms).mean().item() if self.norms else math.nan
        residual = sum(self.residuals) / len(self.residuals) if self.residuals else math.nan
        return {"hypergrad_norm": norm, "solver_residual": residual, "solver_diverged_steps": self.diverged,
                "rejected_hyper_steps": self.rejected, "hyper_steps": self.steps}
