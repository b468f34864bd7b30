"""make_optimizer: Adam by torch's fused kernel where every tensor allows it, with the per-tensor
loop's results to rounding; SGD, momentum and RMSprop by torch's per-tensor loop, bit for bit; no
fused kernel for tensors of integer type or on unlike devices."""
import pytest
import torch

from hybrid_hpo.optimizers import OPTIMIZERS, make_optimizer

SHAPES = [(33, 7), (33,), (5, 33), (5,)]  # lengths that are no multiple of a SIMD width
REFERENCE = {"sgd": (torch.optim.SGD, {}), "momentum": (torch.optim.SGD, {"momentum": 0.9}),
             "adam": (torch.optim.Adam, {}), "rmsprop": (torch.optim.RMSprop, {})}


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
    cls, options = REFERENCE[name]
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
