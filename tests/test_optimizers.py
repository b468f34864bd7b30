"""The run's optimizers (hybrid_hpo.optimizers): torch.optim's math and state, without importing
torch._dynamo; Adam by torch's fused kernel where every tensor allows it, with the per-tensor loop's
results to rounding; SGD, momentum and RMSprop by torch's per-tensor loop, bit for bit; no fused
kernel for tensors of integer type or on unlike devices."""
from __future__ import annotations

import copy
import subprocess
import sys

import pytest
import torch

from hybrid_hpo.optimizers import OPTIMIZERS, make_optimizer

TORCH_OPTIM = {"sgd": (torch.optim.SGD, {}), "momentum": (torch.optim.SGD, {"momentum": 0.9}),
               "adam": (torch.optim.Adam, {"fused": True}), "rmsprop": (torch.optim.RMSprop, {})}


def _params() -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return [torch.randn(5, 3, generator=generator, dtype=torch.float64, requires_grad=True),
            torch.randn(3, generator=generator, dtype=torch.float64, requires_grad=True)]


def _run(optimizer: torch.optim.Optimizer, params: list[torch.Tensor], steps: int) -> None:
    for step in range(steps):  # a loss whose gradient changes with the weights and the step
        loss = sum(((p - 0.1 * step) ** 2).sum() + p.sin().sum() for p in params)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_same_steps_and_state_dict_as_torch_optim(name):
    ours, theirs = _params(), _params()
    optimizer = make_optimizer(name, ours, lr=0.05)
    cls, options = TORCH_OPTIM[name]
    reference = cls(theirs, lr=0.05, **options)
    assert isinstance(optimizer, cls)
    _run(optimizer, ours, 7)
    _run(reference, theirs, 7)
    for mine, expected in zip(ours, theirs):
        assert torch.equal(mine, expected) and mine.is_leaf and mine.grad_fn is None
    state, expected = optimizer.state_dict(), reference.state_dict()
    assert state["param_groups"] == expected["param_groups"]
    assert state["state"].keys() == expected["state"].keys()
    for index, buffers in expected["state"].items():
        assert buffers.keys() == state["state"][index].keys()
        assert all(torch.equal(state["state"][index][key], value) for key, value in buffers.items())


@pytest.mark.parametrize("name", ["momentum", "adam"])
def test_a_torch_optim_state_dict_loads_and_continues_the_same(name):
    """Checkpoints written with torch.optim's classes (earlier versions) resume exactly."""
    cls, options = TORCH_OPTIM[name]
    theirs = _params()
    reference = cls(theirs, lr=0.05, **options)
    _run(reference, theirs, 3)
    ours = [p.detach().clone().requires_grad_() for p in theirs]
    optimizer = make_optimizer(name, ours, lr=0.05)
    optimizer.load_state_dict(copy.deepcopy(reference.state_dict()))  # torch keeps the buffers it is given
    _run(reference, theirs, 4)
    _run(optimizer, ours, 4)
    assert all(torch.equal(mine, expected) for mine, expected in zip(ours, theirs))


def test_a_trainer_does_not_import_torch_dynamo():
    """Building a trainer, training an epoch and a state round trip leave torch._dynamo unloaded
    (a sweep's trial actor would otherwise pay its import, more than torch's own)."""
    probe = """
import sys
from hybrid_hpo.bilevel import BilevelTrainer
from hybrid_hpo.config import RunConfig
config = RunConfig.from_mapping({"epochs": 1, "hidden": [16], "train_size": 64, "val_size": 64, "batch_size": 32,
                                 "inner_optimizer": "momentum", "hyper_optimizer": "adam"})
trainer = BilevelTrainer(config, device="cpu")
trainer.train_epoch()
trainer.load_state_dict(trainer.state_dict())
print("torch._dynamo" in sys.modules, trainer.epoch)
"""
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "1"]


def test_an_optimizer_pickles_and_keeps_its_state():
    """As torch.optim's optimizers do (e.g. a trainer copied with pickle); the class is found by name."""
    import pickle

    params = _params()
    optimizer = make_optimizer("adam", params, lr=0.05)
    _run(optimizer, params, 2)
    copy_ = pickle.loads(pickle.dumps(optimizer))
    assert type(copy_) is type(optimizer)
    state, copied = optimizer.state_dict(), copy_.state_dict()
    assert copied["param_groups"] == state["param_groups"]
    assert all(torch.equal(copied["state"][0][key], value) for key, value in state["state"][0].items())
    probe = "import pickle, sys; print(type(pickle.loads(sys.stdin.buffer.read())).__name__)"
    out = subprocess.run([sys.executable, "-c", probe], input=pickle.dumps(optimizer), capture_output=True, check=True)
    assert out.stdout.decode().strip() == "AdamWithoutDynamo"  # a fresh process that never made one


SHAPES = [(33, 7), (33,), (5, 33), (5,)]  # lengths that are no multiple of a SIMD width
PER_TENSOR = {name: (cls, {k: v for k, v in options.items() if k != "fused"}) for name, (cls, options) in TORCH_OPTIM.items()}


def trajectory(make, dtype=torch.float64, steps=40):
    generator = torch.Generator().manual_seed(0)
    params = [torch.randn(s, generator=generator, dtype=dtype).requires_grad_(True) for s in SHAPES]
    optimizer = make(params)
    for _ in range(steps):
        for p in params:
            p.grad = torch.randn(p.shape, generator=generator, dtype=dtype)
        optimizer.step()
    return optimizer, [p.detach() for p in params]


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_fused_where_possible_with_the_per_tensor_results(name):
    cls, options = PER_TENSOR[name]
    optimizer, got = trajectory(lambda ps: make_optimizer(name, ps, 0.03))
    _, expected = trajectory(lambda ps: cls(ps, lr=0.03, foreach=False, **options))
    assert bool(optimizer.defaults.get("fused")) == (name == "adam")
    for g, e in zip(got, expected):
        if name == "adam":  # the fused kernel orders Adam's update otherwise: rounding only
            torch.testing.assert_close(g, e, rtol=1e-13, atol=1e-15)
        else:
            assert torch.equal(g, e)


def test_no_fused_kernel_for_tensors_it_cannot_take():
    ints = [torch.zeros(3, dtype=torch.int64)]
    mixed = [torch.zeros(3, requires_grad=True), torch.zeros(3, device="meta", requires_grad=True)]
    for params in (ints, mixed):
        assert not make_optimizer("adam", params, 0.1).defaults.get("fused")
