"""IFTTrainable: one Ray Tune trial = one bilevel run; one ``step()`` = one epoch.

The trial config holds ``RunConfig`` settings (the ``hybrid-hpo run`` flag names, and a solver's
options as ``solver.<option>``): the fixed settings of a sweep plus the meta-settings the outer
search samples (inner_lr, hyper_lr, solver.terms, solver.alpha, val_fraction, inner_steps, ...). Inside, :class:`~hybrid_hpo.bilevel.BilevelTrainer` tunes the
many inner hyperparameters (e.g. one weight decay per weight) by implicit differentiation.

    tune.run(IFTTrainable, config={"epochs": 5, ...}, search_alg=make_search(...))

Your own model and data: pass a :class:`hybrid_hpo.Task` or a factory ``config dict -> Task``
through ``tune.with_parameters`` (Ray ships it to the trials through its object store)::

    tune.run(tune.with_parameters(IFTTrainable, task=make_task), config={...}, search_alg=...)

A factory is called in each trial with that trial's config (so a search may vary e.g. the model
width); a Task's model is copied for each trial, so every trial starts from the same weights.
Without ``task`` the trial's ``task`` setting (a factory's name) or the built-in task is used.

Each result carries the outer objective (:mod:`hybrid_hpo.objective`): ``metric`` (default
``sel_loss``; on a run without a selection split, the ``val_*`` value under that name) and
``<metric>_best``, its best value over the trial's epochs so far — what the searcher is told and what
the pick uses. Sweeps set ``metric`` / ``mode`` with ``tune.with_parameters(IFTTrainable,
metric=..., mode=...)``. The best-so-far value is rebuilt from the history on restore, so a trial
that PBT restarts from another trial's checkpoint carries that trial's lineage. With ``digests=True``
(PBT sweeps) each result also carries ``hparams_digest`` (:func:`hparams_digest` of λ after the
epoch) and ``lineage``: the exploits its weights and λ went through, as JSON (:class:`Exploit`; kept in
every checkpoint as ``lineage.json``, so it survives Ray restarting a trial on a new actor, which starts
``result.json`` afresh).

The trial ends by itself after ``epochs`` steps (``done``); a checkpoint holds the trainer's
``state_dict()`` — weights, hyperparameters, both optimizers, RNG state, the solver's warm-start
state — as ``trainer.pt``, the metrics history as ``history.json`` and, in the final checkpoint, pictures for people under
``pictures/*.png`` (:mod:`hybrid_hpo.tune.pictures`; a trial stopped early by ASHA has none). Each result also carries ``node_id``, the Ray node the trial
ran on (on a cluster, node IPs and host names need not be distinct).
"""
from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import logging
import os
import time
from typing import Any

import ray
import torch
from ray import tune

from hybrid_hpo.bilevel import BilevelTrainer
from hybrid_hpo.config import RunConfig
from hybrid_hpo.objective import DEFAULT_METRIC, BestSoFar, best_key, metric_value
from hybrid_hpo.task import Task, TaskSource
from hybrid_hpo.tune.pictures import render_trial

CHECKPOINT_FILE = "trainer.pt"
HISTORY_FILE = "history.json"
LINEAGE_FILE = "lineage.json"  # PBT: who wrote this checkpoint, at which epoch, with which λ; its lineage


def trial_device(requested: str) -> str:
    """``requested`` unless "auto": a GPU when Ray gave this trial one (or, outside Ray, when torch
    sees one), else the CPU."""
    if requested != "auto":
        return requested
    if not torch.cuda.is_available():
        return "cpu"
    if ray.is_initialized():
        return "cuda" if ray.get_gpu_ids() else "cpu"
    return "cuda"


def hparams_digest(hparams: dict[str, torch.Tensor]) -> str:
    """SHA-256 (first 16 hex digits) of the raw λ tensors' bytes, by name: equal digests, equal λ."""
    digest = hashlib.sha256()
    for name in sorted(hparams):
        digest.update(name.encode())
        digest.update(hparams[name].detach().reshape(-1).cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


@dataclasses.dataclass(frozen=True)
class Exploit:
    """One PBT exploit: trial ``into`` restored the checkpoint trial ``source`` wrote after ``epoch``.

    ``source_digest`` is :func:`hparams_digest` of λ as the source saved them, ``restored_digest`` of λ
    as ``into`` loaded them (equal: λ inherited exactly); ``source_settings`` / ``settings`` are the
    mutable meta-settings (:data:`hybrid_hpo.tune.pbt.MUTABLE`, ``solver.*``) of the source at the save
    and of ``into`` after PBT's explore step.
    """

    epoch: int
    source: str
    into: str
    source_digest: str
    restored_digest: str
    source_settings: dict[str, Any]
    settings: dict[str, Any]


def mutable_settings(config: dict[str, Any]) -> dict[str, Any]:
    """The settings of ``config`` that PBT may change mid-run."""
    from hybrid_hpo.tune.pbt import check_mutable

    return {key: value for key, value in config.items() if check_mutable([key]) is None}


class IFTTrainable(tune.Trainable):
    """Ray Tune class trainable around :class:`BilevelTrainer` (see the module docstring).

    ``step()`` returns the trainer's epoch metrics (epoch, train/val/sel/test loss and accuracy,
    hypergrad_norm, solver_residual, solver_diverged_steps, rejected_hyper_steps, ...) plus the
    objective ``metric`` and ``<metric>_best``, ``torch_threads`` (the intra-op threads the epoch
    ran with: one per CPU the trial reserved), ``done`` and ``reported_at`` (``time.time()`` when
    the epoch ended).
    ``reset_config`` rebuilds the trainer, so Tune may reuse the actor (``reuse_actors=True``) and
    skip process start and imports between trials.
    """

    def setup(self, config: dict[str, Any], task: TaskSource = None, metric: str = DEFAULT_METRIC,
              mode: str = "min", digests: bool = False, epoch_logs: bool = True) -> None:
        """``epoch_logs=False`` (``hybrid-hpo sweep`` without ``--verbose``) keeps this actor's
        per-epoch lines off the console: Ray Train's note with the path of every checkpoint and the
        trainer's warning per epoch with rejected hyper steps (the sweep's line per trial counts them),
        and Ray Tune's note on a slow ``setup``."""
        self.task_source, self.metric, self.mode, self.digests = task, metric, mode, digests
        if not epoch_logs:
            for name in ("ray.train", "ray.tune"):
                logging.getLogger(name).setLevel(logging.ERROR)
            logging.getLogger("hybrid_hpo.bilevel").setLevel(logging.ERROR)
        resources = self.trial_resources
        cpus = resources.required_resources.get("CPU", 0) if resources is not None else 0
        if cpus >= 1:  # one intra-op thread per CPU Ray reserved for this trial
            torch.set_num_threads(int(cpus))
        self._build(config)

    def _build(self, config: dict[str, Any]) -> None:
        run_config = RunConfig.from_mapping(config)
        self.run_config = run_config
        task = self.task_source
        if isinstance(task, Task):  # every trial (also in a reused actor) starts from the task's initial weights
            task = dataclasses.replace(task, model=copy.deepcopy(task.model))
        self.trainer = BilevelTrainer(run_config, device=trial_device(run_config.device), task=task)
        self.history: list[dict[str, float]] = []  # epoch and the split metrics per epoch (pictures, best so far)
        self.best = BestSoFar(self.metric, self.mode)
        self.lineage: list[dict[str, Any]] = []  # PBT: the Exploits behind this trial's weights and λ

    def step(self) -> dict[str, Any]:
        metrics = dict(self.trainer.train_epoch())
        self.history.append({key: metrics[key] for key in ("epoch", *self.trainer.metric_names())})
        metrics.setdefault(self.metric, metric_value(metrics, self.metric))  # sel_* without a selection split
        metrics[best_key(self.metric)] = self.best.update(metrics)
        if self.digests:
            metrics["hparams_digest"] = hparams_digest(self.trainer.family.hparams())
            metrics["lineage"] = json.dumps(self.lineage)
        metrics["torch_threads"] = torch.get_num_threads()  # equal for every trial of equal resources
        metrics["done"] = self.trainer.epoch >= self.run_config.epochs
        metrics["reported_at"] = time.time()  # wall clock (s since the epoch), finer than Ray's integer timestamp
        if ray.is_initialized():
            metrics["node_id"] = ray.get_runtime_context().get_node_id()
        return metrics

    def save_checkpoint(self, checkpoint_dir: str) -> None:
        torch.save(self.trainer.state_dict(), os.path.join(checkpoint_dir, CHECKPOINT_FILE))
        with open(os.path.join(checkpoint_dir, HISTORY_FILE), "w") as file:
            json.dump(self.history, file)
        if self.digests:
            with open(os.path.join(checkpoint_dir, LINEAGE_FILE), "w") as file:
                json.dump({"trial": self.trial_id, "epoch": self.trainer.epoch, "lineage": self.lineage,
                           "hparams_digest": hparams_digest(self.trainer.family.hparams()),
                           "settings": mutable_settings(self.config)}, file)
        if self.trainer.epoch >= self.run_config.epochs:  # drawing costs ~1 s: only the final checkpoint
            render_trial(self.trainer, self.history, checkpoint_dir)

    def load_checkpoint(self, checkpoint: str | dict) -> None:
        """Only tensors, numbers and strings are unpickled (``weights_only=True``): a tampered
        checkpoint cannot run code."""
        state = torch.load(os.path.join(checkpoint, CHECKPOINT_FILE), map_location="cpu", weights_only=True)
        self.trainer.load_state_dict(state)
        if self.digests:
            self._trace(checkpoint)
        history = os.path.join(checkpoint, HISTORY_FILE)
        if os.path.isfile(history):
            with open(history) as file:
                self.history = json.load(file)
        self.best = BestSoFar(self.metric, self.mode)
        for metrics in self.history:
            self.best.update(metrics)

    def _trace(self, checkpoint: str) -> None:
        """The lineage after restoring ``checkpoint``: the writer's, plus an :class:`Exploit` when
        another trial wrote it (Ray restarting this trial from its own checkpoint is none)."""
        with open(os.path.join(checkpoint, LINEAGE_FILE)) as file:
            origin = json.load(file)
        self.lineage = list(origin["lineage"])
        if origin["trial"] != self.trial_id:
            self.lineage.append(dataclasses.asdict(Exploit(
                epoch=int(origin["epoch"]), source=origin["trial"], into=self.trial_id,
                source_digest=origin["hparams_digest"],
                restored_digest=hparams_digest(self.trainer.family.hparams()),
                source_settings=origin["settings"], settings=mutable_settings(self.config))))

    def reset_config(self, new_config: dict[str, Any]) -> bool:
        self._build(new_config)
        return True
