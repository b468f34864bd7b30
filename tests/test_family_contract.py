"""The contract every registered hyperparameter family meets, parametrized over FAMILIES.

A new family is covered by registering it, as the toy below is (one class plus one registry line,
``monkeypatch.setitem(FAMILIES, ...)``, so other tests see the shipped registry): the IFT hypergradient (Exact solver at a Newton-exact
w*(λ), one fixed draw of the family's noise) against central finite differences of λ ↦ L_V(w*(λ))
on a tiny float64 MLP (for families with λ), every setting it declares refusing a bad value in one
line that names it, a state round trip that continues bit for bit
(generator included), and ``render`` writing PNG files or nothing without touching the generator.
The toy also declares an option in its own class, which RunConfig, the ``run`` flags and the help
then know with no other file touched.
"""
from __future__ import annotations

import dataclasses

import pytest
import torch
from ift_check import directional_fd, inner, lbfgs_warm_start, newton_minimize

import torch.nn.functional as F

from hybrid_hpo.config import RunConfig
from hybrid_hpo.errors import ConfigError
from hybrid_hpo.hyper import FAMILIES, FamilyContext, HyperFamily
from hybrid_hpo.hyper.base import FamilyOptions
from hybrid_hpo.implicit import Exact, hypergradient
from hybrid_hpo.models import build_model
from hybrid_hpo.rules import Each, OneOf, Range, options_of, setting


@dataclasses.dataclass(frozen=True)
class ToyOptions(FamilyOptions):
    toy_init: float = setting(-3.0, "initial raw decay of the toy", Range(-10, 10))

class GlobalDecayToy(HyperFamily):
    """Toy family: one decay softplus(λ) on every parameter, L_T = mean CE + softplus(λ)/2·Σ‖w‖²."""

    name = "global_decay_toy"
    options = ToyOptions

    def __init__(self, like: torch.Tensor, toy_init: float = ToyOptions.toy_init, loss=None) -> None:
        super().__init__(loss)
        ToyOptions(toy_init=toy_init)
        self._register("decay", torch.full((), toy_init, dtype=like.dtype, device=like.device))

    @classmethod
    def from_config(cls, config, context):
        return cls(next(iter(context.params.values())), **config.family_options, loss=context.loss)

    def train_loss(self, model_fn, params, hparams, batch):
        x, y, _ = batch
        ridge = sum((w**2).sum() for w in params.values())
        return self.data_loss(model_fn(params, x), y) + 0.5 * F.softplus(hparams["decay"]) * ridge

    def summaries(self, params):
        return {"toy_decay": float(F.softplus(self._raw["decay"].detach()))}


ALL = {**FAMILIES, GlobalDecayToy.name: GlobalDecayToy}


@pytest.fixture(autouse=True)
def registered_toy(monkeypatch):
    monkeypatch.setitem(FAMILIES, GlobalDecayToy.name, GlobalDecayToy)  # the one registry line


TINY = {"dataset": "digits", "model": "mlp", "hidden": [8], "train_size": 64, "val_size": 64, "batch_size": 32,
        "epochs": 3, "inner_steps": 1, "device": "cpu", "solver": "cg", "solver.max_iter": 5, "solver.damping": 0.1}
"""One small run every family can take (image-shaped inputs, an MLP with dropout sites)."""
SMALL_OPTIONS = {"augment": {"augment_width": 2}}
"""Per family, options that keep the tiny run tiny."""


def tiny(name: str, **changes) -> dict:
    """TINY for family ``name``, with its small options and ``changes``."""
    return {**TINY, "family": name, **SMALL_OPTIONS.get(name, {}), **changes}
INPUT_SHAPE, CLASSES = (1, 4, 4), 3


def _problem(name: str):
    """A float64 family on a tiny tanh MLP (smooth, so Newton and finite differences apply), its L_T (fixed noise, + a ridge that keeps the inner
    problem strongly convex near w*) and L_V, and initial w and λ."""
    config = RunConfig.from_mapping(tiny(name))
    torch.manual_seed(0)
    model = build_model("mlp", input_shape=INPUT_SHAPE, num_classes=CLASSES, hidden=(3,), activation="tanh").double()
    params = {k: v.detach() for k, v in model.named_parameters()}
    buffers = dict(model.named_buffers())
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(24, *INPUT_SHAPE, generator=generator, dtype=torch.float64)
    y = torch.randint(0, CLASSES, (24,), generator=generator)
    (x_train, x_val), (y_train, y_val) = x.split(12), y.split(12)
    context = FamilyContext(params=params, num_train=12, input_shape=INPUT_SHAPE, num_classes=CLASSES, model=model)
    family = ALL[name].from_config(config, context)

    def fn(w, inputs):
        return torch.func.functional_call(model, {**buffers, **w}, (inputs,))

    draw = None if family.generator is None else family.generator.get_state()

    def train_loss(w, hp):
        if draw is not None:
            family.generator.set_state(draw)  # the same noise in every evaluation: L_T is a function of (w, λ)
        loss = family.train_loss(fn, w, hp, (x_train, y_train, torch.arange(12)))
        return loss + 0.05 * sum((t**2).sum() for t in w.values())

    def val_loss(w, hp):
        return family.val_loss(fn, w, hp, (x_val, y_val, torch.arange(12)))

    lam = {k: v.detach() + 0.3 * torch.randn(v.shape, generator=generator, dtype=torch.float64)
           for k, v in family.hparams().items()}
    return family, train_loss, val_loss, params, lam, generator


@pytest.mark.parametrize("name", [name for name, cls in ALL.items() if cls.tunable])
def test_ift_hypergradient_matches_finite_differences(name):
    family, train_loss, val_loss, params, lam, generator = _problem(name)
    w_star = newton_minimize(train_loss, lbfgs_warm_start(train_loss, params, lam), lam)
    grads = hypergradient(train_loss, val_loss, w_star, lam, solver=Exact())
    assert max(float(g.abs().max()) for g in grads.values()) > 1e-6
    for _ in range(2):
        direction = {k: torch.randn(v.shape, generator=generator, dtype=torch.float64) for k, v in lam.items()}
        fd = directional_fd(train_loss, val_loss, w_star, lam, direction, eps=1e-4)
        assert inner(grads, direction) == pytest.approx(fd, rel=1e-4, abs=1e-9)


@pytest.mark.parametrize("name", list(ALL))
def test_a_family_without_lambda_says_so_and_one_with_lambda_has_some(name):
    family, *_ = _problem(name)
    assert (family.num_hparams > 0) == ALL[name].tunable


@pytest.mark.parametrize("name", list(ALL))
def test_state_round_trip_continues_bit_for_bit(name):
    from hybrid_hpo.bilevel import BilevelTrainer

    config = RunConfig.from_mapping(tiny(name))
    trainer = BilevelTrainer(config)
    trainer.train_epoch()
    state = trainer.state_dict()
    expected = [trainer.train_epoch()["val_loss"] for _ in range(2)]
    expected_hparams = trainer.family.state_dict()
    restored = BilevelTrainer(config)
    restored.load_state_dict(state)
    assert [restored.train_epoch()["val_loss"] for _ in range(2)] == expected
    for key, value in restored.family.state_dict().items():
        assert torch.equal(value, expected_hparams[key]), key


@pytest.mark.parametrize("name", list(ALL))
def test_render_writes_pngs_or_nothing_and_leaves_the_generator_alone(name, tmp_path):
    from hybrid_hpo.bilevel import BilevelTrainer

    trainer = BilevelTrainer(RunConfig.from_mapping(tiny(name, epochs=1)))
    trainer.train_epoch()
    before = None if trainer.family.generator is None else trainer.family.generator.get_state()
    paths = trainer.render(tmp_path / "pictures")
    for path in paths:
        assert path.suffix == ".png" and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", path
    if before is not None:
        assert torch.equal(trainer.family.generator.get_state(), before)


def _bad_value(rule):
    """A value ``rule`` refuses (None: the field type itself refuses a word)."""
    if isinstance(rule, OneOf):
        return "no_such_value"
    if isinstance(rule, Range):
        return rule.low - 1 if rule.low is not None else rule.high + 1
    if isinstance(rule, Each):  # a list option: one bad item
        return [_bad_value(rule.item)]
    return "not-a-value"


DECLARED = [(name, info) for name, cls in ALL.items() for info in options_of(cls.options)]


@pytest.mark.parametrize(("name", "info"), DECLARED, ids=[f"{name}-{info.name}" for name, info in DECLARED])
def test_every_declared_option_refuses_a_bad_value_in_one_line_naming_it(name, info):
    assert info.help
    base = {**TINY, "family": name}
    for values in ({**base, info.name: _bad_value(info.rule)}, {**base, "family_options": {info.name: _bad_value(info.rule)}}):
        with pytest.raises(ConfigError) as error:
            RunConfig.from_mapping(values)
        assert str(error.value).startswith(info.name) and "\n" not in str(error.value)
    assert RunConfig.from_mapping(base).family_options[info.name] == info.default


def test_options_are_flat_names_declared_alike_wherever_shared_and_apart_from_runconfig_fields():
    from hybrid_hpo.config import field_names

    first = {}
    for name, info in DECLARED:
        assert info.name not in field_names(), f"{name}.{info.name} shadows a RunConfig field"
        seen = first.setdefault(info.name, (name, info))[1]
        assert (seen.type, seen.default, seen.help, seen.rule) == (info.type, info.default, info.help, info.rule), \
            f"{info.name}: declared differently by {first[info.name][0]} and {name}"


def test_a_registered_family_option_is_a_setting_a_run_flag_and_a_help_line(capsys):
    from hybrid_hpo.cli import build_parser, main

    config = RunConfig.from_mapping(tiny(GlobalDecayToy.name, toy_init="-2.5"))
    assert config.family_options == {"toy_init": -2.5} and config.to_dict()["toy_init"] == -2.5
    assert config_family(config).hparams()["decay"].item() == -2.5
    assert main(["run", "--family", GlobalDecayToy.name, "--toy-init", "11", "--quiet"]) == 2
    assert capsys.readouterr().err.strip() == "hybrid-hpo run: error: toy_init must be a number >= -10 and <= 10 (got 11.0)"
    run_help = build_parser()._subparsers._group_actions[0].choices["run"].format_help()
    assert "--toy-init TOY_INIT" in run_help and "global_decay_toy: initial raw decay of the toy" in run_help


def config_family(config):
    """The family ``config`` builds on the tiny problem's model."""
    model = build_model("mlp", input_shape=INPUT_SHAPE, num_classes=CLASSES, hidden=(3,))
    context = FamilyContext(params=dict(model.named_parameters()), num_train=12, input_shape=INPUT_SHAPE,
                            num_classes=CLASSES, model=model)
    return ALL[config.family].from_config(config, context)
