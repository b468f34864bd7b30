"""The selection split: held out from weights and λ, the same examples for every val_fraction of a
seed, and the outer objective (best-so-far selection metric) the trainable reports."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from hybrid_hpo.bilevel import BilevelTrainer
from hybrid_hpo.config import RunConfig
from hybrid_hpo.data import load_dataset
from hybrid_hpo.objective import BestSoFar, best_key, metric_value, reported_metric
from hybrid_hpo.task import Task, check_task

POOL = 200


def _ids_task(config: dict) -> Task:
    """x = the example's id (so a split's examples can be named), y = id mod 2."""
    ids = torch.arange(POOL, dtype=torch.float32).unsqueeze(1)
    return Task(model=nn.Linear(1, 2), data=TensorDataset(ids, torch.arange(POOL) % 2))


def _ids(split) -> set[int]:
    return {int(v) for v in split.x[:, 0]}


def _splits(task=_ids_task, **settings):
    config = RunConfig.from_mapping({"device": "cpu", "epochs": 1, "hidden": [8], **settings})
    return BilevelTrainer(config, task=task).data


def test_two_val_fractions_are_judged_on_the_identical_selection_examples():
    small, large = _splits(val_fraction=0.2, seed=4), _splits(val_fraction=0.7, seed=4, train_size=10)
    assert len(small.val) != len(large.val)
    assert _ids(small.selection) == _ids(large.selection) and len(small.selection) == math.ceil(0.2 * POOL)
    for data in (small, large):  # neither the weights nor λ see a selection example
        assert not _ids(data.selection) & (_ids(data.train) | _ids(data.val))
    assert _ids(small.selection) | _ids(small.train) | _ids(small.val) == set(range(POOL))
    assert _ids(_splits(seed=5).selection) != _ids(small.selection)  # fixed per seed, not for all seeds


def test_the_builtin_selection_split_ignores_val_fraction_sizes_and_imbalance():
    a = load_dataset("digits", val_fraction=0.3, seed=2, selection_fraction=0.2)
    b = load_dataset("digits", val_fraction=0.6, seed=2, train_size=100, imbalance=5, selection_fraction=0.2)
    assert torch.equal(a.selection.x, b.selection.x) and torch.equal(a.selection.y, b.selection.y)
    assert len(a.selection) == math.ceil(0.2 * 1437) and len(a.val) != len(b.val)
    assert torch.bincount(a.selection.y).min() >= 28  # stratified: every class about 20 % of its ~144
    off = load_dataset("digits", val_fraction=0.3, seed=2)  # selection_fraction 0: the old train / val
    assert off.selection is None and len(off.train) + len(off.val) == 1437


def test_with_an_explicit_val_the_selection_comes_from_val_and_a_given_selection_is_used_as_is():
    ids = torch.arange(POOL, dtype=torch.float32).unsqueeze(1)
    labels = torch.arange(POOL) % 2

    def with_val(config):
        return Task(model=nn.Linear(1, 2), data=TensorDataset(ids[:120], labels[:120]),
                    val=TensorDataset(ids[120:], labels[120:]))

    data = _splits(task=with_val, selection_fraction=0.25)
    assert _ids(data.train) == set(range(120))  # the training data stay whole
    assert len(data.selection) == 20 and _ids(data.selection) | _ids(data.val) == set(range(120, POOL))
    assert not _ids(data.selection) & _ids(data.val)

    def with_selection(config):
        return Task(model=nn.Linear(1, 2), data=TensorDataset(ids[:150], labels[:150]),
                    selection=TensorDataset(ids[150:], labels[150:]))

    given = _splits(task=with_selection, selection_fraction=0.5)
    assert _ids(given.selection) == set(range(150, POOL)) and _ids(given.train) | _ids(given.val) == set(range(150))


def test_without_a_selection_split_the_sel_objective_reads_val():
    trainer = BilevelTrainer(RunConfig.from_mapping({"device": "cpu", "epochs": 1, "selection_fraction": 0}),
                             task=_ids_task)
    assert trainer.data.selection is None and not any(k.startswith("sel_") for k in trainer.metric_names())
    assert reported_metric("sel_loss", trainer.metric_names()) == "val_loss"
    assert reported_metric("sel_mae", trainer.metric_names()) is None
    assert metric_value({"val_loss": 0.5}, "sel_loss") == 0.5 and metric_value({"sel_loss": 0.2, "val_loss": 0.5},
                                                                               "sel_loss") == 0.2
    config = RunConfig.from_mapping({"task": f"{__name__}:_ids_task", "selection_fraction": 0})
    assert "val_loss" in check_task(config, "sel_loss")  # preflight accepts the fallback


def test_best_so_far_ignores_non_finite_values_and_follows_the_mode():
    low = BestSoFar("sel_loss", "min")
    assert [low.update({"sel_loss": v}) for v in (0.9, math.nan, 0.5, 0.7, math.inf)] == [0.9, 0.9, 0.5, 0.5, 0.5]
    high = BestSoFar("sel_acc", "max")
    assert math.isnan(high.update({"sel_acc": math.nan})) and high.update({"sel_acc": 0.3}) == 0.3
    assert best_key("sel_acc") == "sel_acc_best"


def test_the_trainable_reports_the_running_best_selection_metric_and_keeps_it_over_a_restore(tmp_path, monkeypatch):
    from hybrid_hpo.tune import IFTTrainable

    monkeypatch.setattr("ray.tune.trainable.trainable.DEFAULT_STORAGE_PATH", str(tmp_path / "logs"))
    config = {"hidden": [16], "epochs": 4, "inner_lr": 0.3, "device": "cpu", "train_size": 64, "solver.terms": 2}
    trainable = IFTTrainable(dict(config))
    results = [trainable.train() for _ in range(3)]
    assert [r["sel_loss_best"] for r in results] == [min(r["sel_loss"] for r in results[: i + 1]) for i in range(3)]
    saved = trainable.save(str(tmp_path / "ckpt"))
    again = IFTTrainable(dict(config))
    again.restore(saved)
    last = again.train()
    assert last["sel_loss_best"] == min(results[-1]["sel_loss_best"], last["sel_loss"])
    trainable.stop(), again.stop()


@pytest.mark.parametrize("fraction", [0.0, 0.2])
def test_the_old_train_and_val_examples_stay_when_the_selection_split_is_off(fraction):
    """With selection_fraction 0, make_splits gives the positions it always gave (the carve is skipped)."""
    data = _splits(seed=1, selection_fraction=fraction, val_fraction=0.5)
    order = torch.randperm(POOL, generator=torch.Generator().manual_seed(1))
    if fraction == 0:
        assert _ids(data.val) == {int(i) for i in order[:100]} and data.selection is None
    else:
        assert len(data.val) == math.ceil(0.5 * (POOL - 40)) and len(data.selection) == 40


def test_a_sweep_cannot_search_the_selection_split_that_judges_it():
    from hybrid_hpo.errors import ConfigError
    from hybrid_hpo.tune.spec import validate_spec

    with pytest.raises(ConfigError, match="search: selection_fraction cannot be searched: the selection split judges"):
        validate_spec({"search": {"selection_fraction": {"type": "uniform", "low": 0.1, "high": 0.3}}})
    assert validate_spec({"task": {"selection_fraction": 0.3}, "search": {"inner_lr": {
        "type": "loguniform", "low": 0.01, "high": 0.1}}}).metric == "sel_loss"
