"""BilevelTrainer (Algorithm 2) on digits, CPU: the hypergradient helps, rejection, exact restore."""
import copy
import dataclasses
import io
import math

import pytest
import torch

import hybrid_hpo.bilevel as bilevel
from hybrid_hpo.bilevel import BilevelTrainer, resolve_device
from hybrid_hpo.config import RunConfig

SMALL = {"hidden": [64], "batch_size": 64, "inner_steps": 3, "device": "cpu", "solver.terms": 3}


def make(**overrides):
    values = {**SMALL, **overrides}
    if values.get("solver", "neumann") != "neumann":
        del values["solver.terms"]  # SMALL's option of the default solver
    return BilevelTrainer(RunConfig.from_mapping(values))


def weights_and_lambdas(trainer):
    return [p.detach().clone() for p in trainer.model.parameters()] + \
           [t.detach().clone() for t in trainer.family.hparams().values()]


def without_time(metrics):
    return {k: v for k, v in metrics.items() if k != "epoch_time_s"}


def test_hypergradient_lowers_validation_loss():
    """Over-regularised start (decay 0.1 on every weight): tuning λ by hypergradient must beat the same
    run with a negligible hyper learning rate by a wide margin, and val loss must fall over the run."""
    run = dict(init_decay=0.1, epochs=5, inner_steps=2, hidden=[32])
    tuned = make(hyper_lr=0.1, **run).fit(progress=False)
    fixed = make(hyper_lr=1e-9, **run).fit(progress=False)
    assert tuned[-1]["val_loss"] < tuned[0]["val_loss"] - 1.0
    assert tuned[-1]["val_loss"] < fixed[-1]["val_loss"] - 0.4
    assert tuned[-1]["val_acc"] > fixed[-1]["val_acc"]
    assert fixed[-1]["decay_mean"] == pytest.approx(0.1, rel=1e-4)


def test_hyper_steps_change_lambda_and_metrics_are_complete():
    trainer = make(epochs=1)
    before = {k: t.detach().clone() for k, t in trainer.family.hparams().items()}
    metrics = trainer.train_epoch()
    steps = math.ceil(len(trainer.data.train) / 64)
    assert metrics["hyper_steps"] == steps // 3 > 0
    assert metrics["rejected_hyper_steps"] == 0
    assert metrics["num_hparams"] == 64 * 64 + 64 * 10
    assert metrics["hypergrad_norm"] > 0 and math.isfinite(metrics["solver_residual"])
    for name, value in trainer.family.hparams().items():
        assert not torch.equal(value, before[name])
    for key in ("epoch", "train_loss", "train_acc", "val_loss", "val_acc", "test_loss", "test_acc",
                "solver_diverged_steps", "epoch_time_s", "decay_mean", "decay_min", "decay_max"):
        assert key in metrics
    assert metrics["epoch"] == trainer.epoch == 1
    assert metrics["decay_min"] < 1e-3 < metrics["decay_max"]


def test_non_finite_hypergradient_is_rejected(monkeypatch, caplog):
    real = bilevel.hypergradient

    def poisoned(*args, **kwargs):
        grads, info = real(*args, **kwargs)
        return ({k: torch.full_like(g, math.nan) for k, g in grads.items()},
                dataclasses.replace(info, finite=False))

    monkeypatch.setattr(bilevel, "hypergradient", poisoned)
    trainer = make(epochs=1)
    lambdas = {k: t.detach().clone() for k, t in trainer.family.hparams().items()}
    first_weight = next(trainer.model.parameters()).detach().clone()
    metrics = trainer.train_epoch()
    assert metrics["hyper_steps"] > 0
    assert metrics["rejected_hyper_steps"] == metrics["hyper_steps"]
    assert math.isnan(metrics["hypergrad_norm"])
    for name, value in trainer.family.hparams().items():
        assert torch.equal(value, lambdas[name])
    assert not torch.equal(next(trainer.model.parameters()), first_weight)  # weights still train
    assert math.isfinite(metrics["val_loss"])
    assert "rejected" in caplog.text


@pytest.mark.parametrize("policy", ["reject", "apply", None])  # None: the default, reject
def test_diverged_but_finite_steps_follow_the_policy_and_are_counted(monkeypatch, policy):
    real = bilevel.hypergradient

    def diverged(*args, **kwargs):
        grads, info = real(*args, **kwargs)
        return grads, dataclasses.replace(info, diverged=True)

    monkeypatch.setattr(bilevel, "hypergradient", diverged)
    trainer = make(epochs=1, **({} if policy is None else {"diverged_policy": policy}))
    lambdas = {k: t.detach().clone() for k, t in trainer.family.hparams().items()}
    metrics = trainer.train_epoch()
    assert metrics["solver_diverged_steps"] == metrics["hyper_steps"] > 0
    changed = any(not torch.equal(t, lambdas[k]) for k, t in trainer.family.hparams().items())
    if policy == "apply":
        assert metrics["rejected_hyper_steps"] == 0 and changed
    else:
        assert metrics["rejected_hyper_steps"] == metrics["hyper_steps"] and not changed
        assert math.isnan(metrics["hypergrad_norm"])


FULL_BATCH = {"batch_size": 4096, "inner_steps": 1}  # consecutive systems close: a warm x₀ beats 0
WARM_SOLVERS = {  # solvers that carry a state from one hyper step to the next
    "cg": {"solver": "cg", "solver.warm_start": True, "solver.max_iter": 4, "solver.rtol": 1e-3,
           "solver.damping": 1.0, **FULL_BATCH},
    "neumann": {"solver": "neumann", "solver.warm_start": True, "solver.terms": 3, **FULL_BATCH},
    "nystrom": {"solver": "nystrom", "solver.refresh_every": 4, "solver.rank": 5},
}


def saved_and_loaded(trainer):
    buffer = io.BytesIO()
    torch.save(trainer.state_dict(), buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


@pytest.mark.parametrize("solver", [None, *WARM_SOLVERS])
def test_state_dict_restore_continues_bit_for_bit(solver):
    """Also with a warm-started solver: its state (previous solution, Nyström sketch) is saved and
    restored, so the resumed run continues exactly; without it the run would differ."""
    config = {"epochs": 3, "inner_steps": 4, **WARM_SOLVERS.get(solver, {})}  # 12 steps/epoch: hyper steps straddle epochs
    original = make(**config)
    original.train_epoch()
    state = saved_and_loaded(original)
    assert (state["solver_state"] is None) == (solver is None)

    restored = make(**config)
    assert not torch.equal(weights_and_lambdas(restored)[-1], weights_and_lambdas(original)[-1])
    restored.load_state_dict(state)
    if solver is not None:
        cold = make(**config)
        cold.load_state_dict({**saved_and_loaded(original), "solver_state": None})  # shares no tensor with state
        cold.fit(progress=False)
    assert restored.epoch == 1
    expected = [without_time(m) for m in original.fit(progress=False)]
    continued = [without_time(m) for m in restored.fit(progress=False)]
    assert [m["epoch"] for m in continued] == [2, 3]
    assert continued == expected
    for a, b in zip(weights_and_lambdas(restored), weights_and_lambdas(original)):
        assert torch.equal(a, b)
    if solver is not None:  # the state mattered: restarting the solver cold changes λ
        assert not all(torch.equal(a, b) for a, b in zip(weights_and_lambdas(cold), weights_and_lambdas(original)))


def test_two_trainers_restored_from_one_state_share_nothing():
    """Optimizer moments and the solver state are copied on load: training one restored trainer
    leaves the state and the other trainer untouched, so both continue alike."""
    config = {"epochs": 2, "inner_steps": 4, **WARM_SOLVERS["cg"]}
    original = make(**config)
    original.train_epoch()
    state = original.state_dict()
    snapshot = copy.deepcopy(state)
    first, second = make(**config), make(**config)
    first.load_state_dict(state)
    second.load_state_dict(state)
    metrics = without_time(first.train_epoch())
    assert torch.equal(state["inner_optimizer"]["state"][0]["momentum_buffer"],
                       snapshot["inner_optimizer"]["state"][0]["momentum_buffer"])
    assert without_time(second.train_epoch()) == metrics


def test_same_seed_same_metrics_other_seed_differs():
    first = [without_time(m) for m in make(epochs=1).fit(progress=False)]
    second = [without_time(m) for m in make(epochs=1).fit(progress=False)]
    other = [without_time(m) for m in make(epochs=1, seed=1).fit(progress=False)]
    assert first == second
    assert first != other


def test_device_auto():
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected
    assert resolve_device("cpu").type == "cpu"


def _float64_task(config):
    """A float64 classifier on generated data; hidden width 17 puts a BatchNorm (buffers) in it."""
    from torch import nn
    from torch.utils.data import TensorDataset

    from hybrid_hpo import Task

    generator = torch.Generator().manual_seed(3)
    x = torch.randn(300, 6, generator=generator, dtype=torch.float64)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0.5).long()
    width = config["hidden"][0]
    norm = [nn.BatchNorm1d(width)] if width == 17 else []
    model = nn.Sequential(nn.Linear(6, width), *norm, nn.Tanh(), nn.Linear(width, 3)).double()
    return Task(model=model, data=TensorDataset(x, y), test=TensorDataset(x[:50], y[:50]))


@pytest.mark.parametrize("hidden", [[16], [17]], ids=["no buffers", "batchnorm"])
def test_direct_model_calls_give_the_functional_call_results_bit_for_bit(monkeypatch, hidden):
    """The plain model call (weights that are the model's own) and torch.func.functional_call give the
    same weights, buffers (BatchNorm's running statistics, which the hyper steps must leave as they
    were), λ and metrics bit for bit in float64; the plain call is the only one taken."""
    settings = {"hidden": hidden, "epochs": 2, "batch_size": 32, "inner_steps": 2, "solver.terms": 2,
                "inner_optimizer": "momentum", "hyper_optimizer": "adam", "device": "cpu", "val_fraction": 0.3}
    real = torch.func.functional_call
    calls = []

    def counted(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(torch.func, "functional_call", counted)
    results = {}
    for path in ("direct", "functional"):
        if path == "functional":
            monkeypatch.setattr(bilevel._ModelCall, "direct", lambda self, params: False)
        calls.clear()
        trainer = BilevelTrainer(RunConfig.from_mapping(settings), task=_float64_task)
        history = [without_time(m) for m in trainer.fit(progress=False)]
        results[path] = (weights_and_lambdas(trainer) + list(trainer.model.buffers()), history, len(calls), trainer)
    (direct, direct_history, direct_calls, trainer), (functional, functional_history, all_calls, _) = \
        results["direct"], results["functional"]
    assert direct[0].dtype == torch.float64
    assert all(torch.equal(a, b) for a, b in zip(direct, functional))
    assert direct_history == functional_history and direct_history[-1]["hyper_steps"] > 0
    assert direct_calls == 0 < all_calls
    assert [name for name, _ in trainer.model.named_buffers()] == ([] if hidden == [16] else
        ["1.running_mean", "1.running_var", "1.num_batches_tracked"])


def test_hyper_steps_leave_batchnorm_running_statistics_as_they_were():
    settings = {"hidden": [17], "batch_size": 32, "solver.terms": 2, "device": "cpu", "val_fraction": 0.3}
    trainer = BilevelTrainer(RunConfig.from_mapping(settings), task=_float64_task)
    trainer.train_epoch()  # running statistics away from their initial values
    before = {name: b.clone() for name, b in trainer.model.named_buffers()}
    lambdas = weights_and_lambdas(trainer)[-1].clone()
    trainer._hyper_step(bilevel._HyperStats())
    assert not torch.equal(weights_and_lambdas(trainer)[-1], lambdas)  # the step did run forward passes
    assert before["1.num_batches_tracked"] > 0
    assert all(torch.equal(b, before[name]) for name, b in trainer.model.named_buffers())
