"""The built-in tasks: the datasets of :mod:`hybrid_hpo.data` with the models of
:mod:`hybrid_hpo.models`, as a task factory like any user's.

``dataset``, ``model``, ``hidden``, ``activation``, ``val_fraction``, ``seed``, ``train_size``,
``val_size``, ``imbalance``, ``selection_fraction``, ``data_root`` and ``download`` of the config
choose the task. The factory splits the data itself (stratified, see
:func:`hybrid_hpo.data.load_dataset`) and hands the run explicit train / val / selection / test sets held as tensors (the loop's fast path). The loss is the
default cross-entropy (classification; sequences per token for ``text``).
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch.utils.data import TensorDataset

from hybrid_hpo.data import load_dataset
from hybrid_hpo.models import build_model
from hybrid_hpo.task.task import Task


def builtin_task(config: Mapping[str, Any]) -> Task:
    """The Task of ``config["dataset"]`` and ``config["model"]`` (module docstring); ``config`` is
    a RunConfig as a plain dict (:meth:`RunConfig.to_dict`)."""
    data = load_dataset(config["dataset"], val_fraction=config["val_fraction"], seed=config["seed"],
                        root=config["data_root"], download=config["download"], train_size=config["train_size"],
                        val_size=config["val_size"], imbalance=config["imbalance"],
                        selection_fraction=config["selection_fraction"])
    model = build_model(config["model"], input_shape=data.input_shape, num_classes=data.num_classes,
                        hidden=tuple(config["hidden"]), activation=config["activation"])
    return Task(model=model, data=TensorDataset(data.train.x, data.train.y),
                val=TensorDataset(data.val.x, data.val.y), test=TensorDataset(data.test.x, data.test.y),
                selection=None if data.selection is None else TensorDataset(data.selection.x, data.selection.y),
                num_classes=data.num_classes, name=data.name)
