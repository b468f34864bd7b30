"""The public Task API: a model, dataset, loss and metric defined here (not in the library) through
BilevelTrainer, the CLI's --task and (in test_task_ray.py) Ray Tune; the built-in tasks unchanged;
the DataLoader path equal to the tensor path; the regression hypergradient against finite
differences; one-line errors for bad factories and tasks."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import Dataset, TensorDataset

from hybrid_hpo import Exact, Task, hypergradient
from hybrid_hpo.bilevel import BilevelTrainer
from hybrid_hpo.cli import main as cli
from hybrid_hpo.config import RunConfig
from hybrid_hpo.errors import ConfigError
from hybrid_hpo.hyper import WeightDecay
from hybrid_hpo.nn import HyperDropout
from hybrid_hpo.task.builtin import builtin_task

GOLDEN = Path(__file__).parent / "data" / "builtin_metrics_before_task_api.json"
FEATURES = 4


class Regressor(nn.Module):
    """A user's model: Linear -> tanh -> HyperDropout -> Linear, output (B,)."""

    def __init__(self, width: int, dropout_site: bool = True) -> None:
        super().__init__()
        self.hidden = nn.Linear(FEATURES, width)
        self.drop = HyperDropout(width) if dropout_site else nn.Identity()
        self.out = nn.Linear(width, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.drop(torch.tanh(self.hidden(x)))).squeeze(1)


class PairDataset(Dataset):
    """A user's map-style dataset that is not a TensorDataset (read through a DataLoader)."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x[i], self.y[i]


def regression_data(n: int, seed: int) -> PairDataset:
    """y = x·β + 0.1·noise, β fixed, x ~ N(0, I): (n, 4) and (n,)."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, FEATURES, generator=generator)
    beta = torch.tensor([1.0, -2.0, 0.5, 0.0])
    return PairDataset(x, x @ beta + 0.1 * torch.randn(n, generator=generator))


def squared_error(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return (output - target).square()


def absolute_error(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return (output - target).abs()


def make_task(config: dict) -> Task:
    """The factory: width from the trial's config."""
    return Task(model=Regressor(config["hidden"][0]), data=regression_data(160, 0), test=regression_data(80, 1),
                loss=squared_error, metrics={"mae": absolute_error}, name="synthetic")


SMALL = {"hidden": [16], "epochs": 6, "batch_size": 32, "inner_lr": 0.05, "inner_steps": 2, "solver.terms": 3,
         "device": "cpu", "val_fraction": 0.25}


def test_user_model_data_loss_and_metric_train_through_bilevel_trainer():
    trainer = BilevelTrainer(RunConfig.from_mapping(SMALL), task=make_task)
    history = trainer.fit(progress=False)
    assert trainer.metric_names() == ("train_loss", "train_mae", "val_loss", "val_mae", "sel_loss", "sel_mae",
                                      "test_loss", "test_mae")
    assert not any(key.endswith("acc") for key in history[-1])
    # 160 = 32 selection (20 %, set aside first) + 32 val (25 % of the other 128) + 96 train
    assert [len(s) for s in (trainer.data.train, trainer.data.val, trainer.data.selection, trainer.data.test)] \
        == [96, 32, 32, 80]
    assert trainer.family.num_hparams == FEATURES * 16 + 16  # one decay per weight of both Linear layers
    assert history[-1]["val_loss"] < 0.5 * history[0]["val_loss"]
    assert history[-1]["hyper_steps"] > 0 and history[-1]["rejected_hyper_steps"] == 0
    # the reported loss is the task's mean per-example loss, measured independently here
    trainer.model.eval()
    with torch.no_grad():
        x, y = trainer.data.test.fetch(torch.arange(80))
        mse = squared_error(trainer.model(x), y).mean().item()
        mae = absolute_error(trainer.model(x), y).mean().item()
    assert history[-1]["test_loss"] == pytest.approx(mse, rel=1e-6)
    assert history[-1]["test_mae"] == pytest.approx(mae, rel=1e-6)


def test_a_task_object_and_a_factory_give_the_same_run():
    config = RunConfig.from_mapping({**SMALL, "epochs": 2})
    torch.manual_seed(config.seed)  # the trainer calls a factory under this seed; do the same for the object
    task = make_task(config.to_dict())
    by_object = BilevelTrainer(config, task=task).fit(progress=False)
    by_factory = BilevelTrainer(config, task=make_task).fit(progress=False)
    assert [_metrics(m) for m in by_object] == [_metrics(m) for m in by_factory]


def _metrics(row: dict) -> dict:
    return {k: v for k, v in row.items() if k != "epoch_time_s"}


def _as_dataset_task(config: dict) -> Task:
    """The built-in digits task with its splits re-wrapped as plain Datasets (the DataLoader path)."""
    task = builtin_task(config)
    wrap = lambda d: PairDataset(*d.tensors)  # noqa: E731
    return Task(model=task.model, data=wrap(task.data), val=wrap(task.val), test=wrap(task.test),
                selection=wrap(task.selection), num_classes=task.num_classes, name="digits-as-dataset")


@pytest.mark.parametrize("workers", [0, 2])
def test_dataloader_path_gives_the_metrics_of_the_tensor_path(workers):
    settings = {"hidden": [32], "epochs": 2, "train_size": 300, "val_size": 200, "device": "cpu", "seed": 5,
                "family": "reweight", "num_workers": workers}
    tensors = BilevelTrainer(RunConfig.from_mapping(settings))
    loader = BilevelTrainer(RunConfig.from_mapping(settings), task=_as_dataset_task)
    assert type(tensors.data.train).__name__ == "Split" and type(loader.data.train).__name__ == "DatasetSplit"
    assert [_metrics(m) for m in tensors.fit(progress=False)] == [_metrics(m) for m in loader.fit(progress=False)]


def _builtin_history(overrides: dict) -> list[dict]:
    # diverged_policy "apply": what every run did when these numbers were recorded (today's default
    # rejects the hyper steps of a diverged solve, a later and separate change); selection_fraction 0:
    # no selection split, so train / val hold the examples they held then
    base = {"epochs": 2, "train_size": 200, "val_size": 200, "hidden": [32, 16], "device": "cpu", "seed": 3,
            "diverged_policy": "apply", "selection_fraction": 0}
    return BilevelTrainer(RunConfig.from_mapping({**base, **overrides})).fit(progress=False)


@pytest.mark.parametrize("case, overrides", [
    ("wd", {}),
    ("reweight", {"family": "reweight", "imbalance": 10, "hidden": [32]}),
    ("dropout", {"family": "dropout"}),
    ("text", {"dataset": "text", "model": "lstm_lm", "hidden": [16], "family": "dropout", "train_size": 200,
              "val_size": 100}),
])
def test_builtin_tasks_report_the_metrics_they_reported_before_the_task_api(case, overrides):
    torch.set_num_threads(1)
    before = json.loads(GOLDEN.read_text())["cases"][case]
    after = _builtin_history(overrides)
    for old, new in zip(before, after, strict=True):
        for key, value in old.items():
            assert new[key] == pytest.approx(value, rel=1e-6, abs=1e-12), (case, old["epoch"], key)


def test_regression_hypergradient_with_per_example_mse_matches_finite_differences():
    """Ridge regression, one decay per weight: w*(λ) in closed form, L_V(w*(λ)) by central differences."""
    torch.manual_seed(0)
    n_train, n_val = 30, 20
    x_t, x_v = torch.randn(n_train, FEATURES, dtype=torch.float64), torch.randn(n_val, FEATURES, dtype=torch.float64)
    beta = torch.tensor([1.0, -2.0, 0.5, 0.0], dtype=torch.float64)
    y_t, y_v = x_t @ beta + 0.3 * torch.randn(n_train, dtype=torch.float64), x_v @ beta
    model = nn.Linear(FEATURES, 1).double()
    model_fn = lambda p, x: torch.func.functional_call(model, p, (x,)).squeeze(1)  # noqa: E731
    shapes = {name: p.detach() for name, p in model.named_parameters()}
    family = WeightDecay(shapes, granularity="per_weight", init_decay=0.3, loss=squared_error)
    raw = {name: t.detach() + 0.2 * torch.randn_like(t) for name, t in family.hparams().items()}

    def solve(raw_decay: torch.Tensor) -> dict[str, torch.Tensor]:
        """argmin_w mean (x·w + b - y)² + 1/2 Σ decay_j w_j² (bias not decayed): normal equations."""
        a = torch.cat([x_t, torch.ones(n_train, 1, dtype=torch.float64)], dim=1)
        damping = torch.diag(torch.cat([torch.nn.functional.softplus(raw_decay).reshape(-1),
                                        torch.zeros(1, dtype=torch.float64)]))
        theta = torch.linalg.solve(2.0 / n_train * a.T @ a + damping, 2.0 / n_train * a.T @ y_t)
        return {"weight": theta[:FEATURES].reshape(1, FEATURES), "bias": theta[FEATURES:]}

    def val_loss(raw_decay: torch.Tensor) -> float:
        w = solve(raw_decay)
        return squared_error(model_fn(w, x_v), y_v).mean().item()

    index = torch.arange(n_train)
    grads = hypergradient(lambda w, lam: family.train_loss(model_fn, w, lam, (x_t, y_t, index)),
                          lambda w, lam: family.val_loss(model_fn, w, lam, (x_v, y_v, torch.arange(n_val))),
                          solve(raw["weight"]), raw, solver=Exact())
    eps = 1e-6
    finite = torch.zeros(FEATURES, dtype=torch.float64)
    for j in range(FEATURES):
        step = torch.zeros_like(raw["weight"])
        step[0, j] = eps
        finite[j] = (val_loss(raw["weight"] + step) - val_loss(raw["weight"] - step)) / (2 * eps)
    assert finite.abs().max() > 1e-3  # the decays matter
    torch.testing.assert_close(grads["weight"].reshape(-1), finite, rtol=1e-6, atol=1e-9)


# ------------------------------------------------------------------------------ families on a user task
def test_reweight_and_dropout_work_on_a_user_regression_task():
    reweight = BilevelTrainer(RunConfig.from_mapping({**SMALL, "epochs": 2, "family": "reweight"}), task=make_task)
    assert reweight.family.num_hparams == 96  # one weight per training example
    assert all(math.isfinite(m["val_loss"]) for m in reweight.fit(progress=False))
    dropout = BilevelTrainer(RunConfig.from_mapping({**SMALL, "epochs": 2, "family": "dropout"}), task=make_task)
    assert dropout.family.sites == {"drop.scale": (16,)} and dropout.family.num_hparams == 16
    before = dropout.family.state_dict()["drop.scale"].clone()
    dropout.fit(progress=False)
    assert not torch.equal(before, dropout.family.state_dict()["drop.scale"])  # the rates were tuned


def _without_site(config: dict) -> Task:
    return Task(model=Regressor(8, dropout_site=False), data=regression_data(40, 0), loss=squared_error)


def _flat_classification(config: dict) -> Task:
    x = torch.randn(40, FEATURES)
    return Task(model=nn.Linear(FEATURES, 3), data=TensorDataset(x, torch.arange(40) % 3))


@pytest.mark.parametrize("settings, task, message", [
    ({"family": "dropout"}, _without_site, "model: the dropout family needs dropout sites"),
    ({"family": "fixed", "fixed_dropout": 0.2}, _without_site, "fixed_dropout: the fixed family needs dropout sites"),
    ({"family": "distill"}, make_task, "family: distill learns images per class and needs a classification task"),
    ({"family": "augment"}, _flat_classification, "family: augment needs task inputs shaped (channels, H, W)"),
    ({"imbalance": 10}, make_task, "imbalance: thins the built-in datasets only"),
    ({"val_fraction": 0.999}, make_task, "val_fraction: 0.999 leaves no training example of the task's 128"),
    ({"train_size": 500}, make_task, "train_size: 500 exceeds the 96 examples"),
    ({"selection_fraction": 0.999}, make_task, "selection_fraction: 0.999 leaves nothing else of the task's 160"),
])
def test_families_and_options_that_cannot_use_a_task_refuse_it_in_one_line(settings, task, message):
    with pytest.raises(ConfigError) as error:
        BilevelTrainer(RunConfig.from_mapping({**SMALL, **settings}), task=task)
    assert str(error.value).startswith(message) and "\n" not in str(error.value)


def test_a_classification_task_defaults_to_cross_entropy_accuracy_and_balanced_accuracy():
    trainer = BilevelTrainer(RunConfig.from_mapping({**SMALL, "epochs": 1}), task=_flat_classification)
    assert trainer.data.num_classes == 3
    assert trainer.metric_names()[:3] == ("train_loss", "train_acc", "train_balanced_acc")
    assert trainer.data.test is None and not any(k.startswith("test_") for k in trainer.train_epoch())


# --------------------------------------------------------------------------------- the CLI's --task
FACTORIES = """
import torch
from torch import nn
from torch.utils.data import TensorDataset
from hybrid_hpo import Task

def good(config):
    x = torch.randn(48, 3)
    return Task(model=nn.Linear(3, 1), data=TensorDataset(x, x.sum(1, keepdim=True)), test=TensorDataset(x, x.sum(1, keepdim=True)),
                loss=lambda out, y: (out - y).square().mean(1), metrics={"mae": lambda out, y: (out - y).abs().mean(1)})

def raising(config):
    raise RuntimeError("no such data on this machine")

def not_a_task(config):
    return {"model": nn.Linear(3, 1)}

def scalar_loss(config):
    x = torch.randn(48, 3)
    return Task(model=nn.Linear(3, 1), data=TensorDataset(x, x.sum(1, keepdim=True)), loss=lambda out, y: (out - y).square().mean())

not_callable = 3
"""


@pytest.fixture
def factory_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "my_tasks.py").write_text(FACTORIES)
    return tmp_path


def test_cli_run_task_trains_the_users_task(factory_file, capsys):
    out = factory_file / "metrics.json"
    assert cli(["run", "--task", "my_tasks.py:good", "--epochs", "2", "--device", "cpu", "--quiet",
                "--json", str(out)]) == 0
    history = json.loads(out.read_text())
    assert [m["epoch"] for m in history] == [1, 2] and "test_mae" in history[-1] and "test_acc" not in history[-1]
    assert capsys.readouterr().out.startswith(f"final: test_loss {history[-1]['test_loss']:.4f}  test_mae ")


@pytest.mark.parametrize("factory, message", [
    ("missing_module_xyz.tasks:make", "task: cannot import module 'missing_module_xyz' of factory"),
    ("absent.py:make", "task: no file 'absent.py' for factory 'absent.py:make'"),
    ("my_tasks.py:absent", "task: my_tasks.py has no function 'absent'"),
    ("my_tasks.py:not_callable", "task: 'my_tasks.py:not_callable' is a int, not a function"),
    ("my_tasks.py:raising", "task: factory my_tasks.py:raising raised RuntimeError: no such data on this machine"),
    ("my_tasks.py:not_a_task", "task: factory my_tasks.py:not_a_task returned dict, not a hybrid_hpo.Task"),
    ("my_tasks.py:scalar_loss", "task.loss: returned () for a batch of 2; return one value per example"),
    ("my_tasks", "task: 'my_tasks' is not a factory name; use FILE.py:FUNCTION or MODULE:FUNCTION"),
])
def test_cli_run_bad_factory_is_one_line_exit_2_and_writes_nothing(factory_file, capsys, factory, message):
    out = factory_file / "metrics.json"
    assert cli(["run", "--task", factory, "--epochs", "1", "--device", "cpu", "--json", str(out)]) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith(f"hybrid-hpo run: error: {message}"), captured.err
    assert captured.err.count("\n") == 1 and captured.out == ""
    assert not out.exists()


SWEEP = """
task: {{factory: "{factory}", hidden: [8]}}
inner: {{epochs: 2, device: cpu}}
search:
  inner_lr: {{type: loguniform, low: 1.0e-2, high: 0.1}}
num_trials: 2
metric: {metric}
mode: min
"""


@pytest.mark.parametrize("factory, metric, message", [
    ("my_tasks.py:raising", "val_loss", "task: factory "),
    ("my_tasks.py:good", "val_rmse", "metric: the task reports no 'val_rmse'; choose one of train_loss, train_mae, "
                                     "val_loss, val_mae"),
])
def test_cli_sweep_checks_the_factory_before_ray_and_writes_nothing(factory_file, capsys, factory, metric, message):
    (factory_file / "sweep.yaml").write_text(SWEEP.format(factory=factory, metric=metric))
    results = factory_file / "results"
    assert cli(["sweep", "sweep.yaml", "--results-dir", str(results)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"hybrid-hpo sweep: error: {message}") and err.count("\n") == 1, err
    assert not results.exists()


def test_shipped_own_task_spec_builds_its_task_and_reports_its_objective(monkeypatch):
    from hybrid_hpo.tune.spec import load_spec
    from hybrid_hpo.tune.preflight import check_trials_can_run

    root = Path(__file__).parents[1]
    monkeypatch.chdir(root)
    spec = load_spec(root / "searches" / "own_task.yaml")
    assert spec.fixed_settings()["task"] == f"{root / 'examples' / 'own_task.py'}:make_task"  # made absolute
    check_trials_can_run(spec)  # imports the example, builds the diabetes task, checks val_mae is reported
    trainer = BilevelTrainer(RunConfig.from_mapping({**spec.sample_configs()[0][1], "epochs": 1}))
    assert trainer.data.name == "diabetes" and len(trainer.data.test) == 88
    assert trainer.metric_names()[-2:] == ("test_loss", "test_mae")


def test_a_comparison_file_takes_a_task_factory_and_its_metric():
    from hybrid_hpo.compare.spec import validate_compare_spec

    raw = {"task": {"factory": "examples/own_task.py:make_task", "hidden": [16]}, "budget_s": 10,
           "metric": "val_mae", "report": "test_mae",
           "strategies": {"bo_only": {"settings": {"family": "fixed"},
                                      "search": {"inner_lr": {"type": "loguniform", "low": 0.01, "high": 0.3}}},
                          "ift_defaults": {"settings": {"family": "weight_decay"}},
                          "hybrid": {"settings": {"family": "weight_decay"},
                                     "search": {"hyper_lr": {"type": "loguniform", "low": 0.001, "high": 0.1}}}}}
    with pytest.raises(ConfigError, match="mode: val_mae is your task's metric; say whether to minimise or maximise"):
        validate_compare_spec(raw)
    spec = validate_compare_spec({**raw, "mode": "min"})
    settings = spec.run_settings("hybrid", seed=4)
    assert settings["task"].endswith("examples/own_task.py:make_task") and "factory" not in settings
    sweep = spec.sweep_spec("bo_only", seed=4)
    assert (sweep.metric, sweep.mode, sweep.fixed_settings()["task"]) == ("val_mae", "min", settings["task"])
    with pytest.raises(ConfigError, match="strategies.hybrid.settings.task: task decides the data split"):
        validate_compare_spec({**raw, "mode": "min", "strategies": {
            **raw["strategies"], "hybrid": {**raw["strategies"]["hybrid"], "settings": {"task": "x.py:f"}}}})


def test_learning_curves_show_the_tasks_own_metrics(tmp_path):
    import matplotlib.image

    from hybrid_hpo.tune.pictures import curve_kinds, render_curves

    trainer = BilevelTrainer(RunConfig.from_mapping({**SMALL, "epochs": 2}), task=make_task)
    history = [{"epoch": m["epoch"], **{k: m[k] for k in trainer.metric_names()}} for m in trainer.fit(progress=False)]
    assert curve_kinds(list(history[0])) == ["loss", "mae"]
    assert curve_kinds(["epoch", "train_loss", "train_acc", "train_balanced_acc", "val_loss"]) == ["loss", "acc"]
    height, width = matplotlib.image.imread(render_curves(history, tmp_path / "curves.png")).shape[:2]
    assert (width, height) == (640, 256)  # two panels of 4 x 3.2 inches at 80 dpi
