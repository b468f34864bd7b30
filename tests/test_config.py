"""RunConfig: validation messages name the field, unknown keys are rejected, dict round trips."""
import json

import pytest

from hybrid_hpo.config import RunConfig, family_option_names, field_names
from hybrid_hpo.errors import ConfigError

BAD = [
    ("solver.terms", -1), ("solver.alpha", 0.0), ("solver.alpha", -0.5), ("solver.alpha", "fast"),
    ("solver.damping", -1e-3), ("solver.power_iters", 0), ("solver.no_such_option", 1),
    ("terms", 5), ("alpha", 0.1), ("damping", 0.1), ("rank", 4),  # moved into the solver's options
    ("inner_lr", 0.0), ("hyper_lr", -1.0), ("init_decay", 0.0),
    ("val_fraction", 0.0), ("val_fraction", 1.0), ("val_fraction", 1.5),
    ("inner_steps", 0), ("epochs", 0), ("epochs", "abc"), ("batch_size", 0), ("seed", -1),
    ("device", "gpu"), ("device", "cuda:x"), ("dataset", "imagenet"), ("model", "vit"),
    ("family", "dropout_rate"), ("solver", "lbfgs"), ("granularity", "per_neuron"),
    ("inner_optimizer", "lbfgs"), ("hyper_optimizer", "nadam"), ("activation", "swish"),
    ("hidden", [64, 0]), ("train_size", 0), ("download", "maybe"),
]


@pytest.mark.parametrize("field, value", BAD)
def test_bad_value_raises_one_line_error_naming_the_field(field, value):
    with pytest.raises(ConfigError) as caught:
        RunConfig.from_mapping({field: value})
    message = str(caught.value)
    assert field in message
    assert "\n" not in message


def test_unknown_key_lists_valid_settings_or_the_closest():
    with pytest.raises(ConfigError, match=r"^foo: unknown setting; valid settings: ") as caught:
        RunConfig.from_mapping({"epochs": 3, "foo": 1})
    assert "inner_lr" in str(caught.value) and "val_fraction" in str(caught.value)
    with pytest.raises(ConfigError, match=r"^inner_l: unknown setting; did you mean 'inner_lr'\?$"):
        RunConfig.from_mapping({"inner_l": 0.1})


def test_a_moved_solver_setting_names_its_new_spelling():
    with pytest.raises(ConfigError, match=r"^terms: is now a solver option; write solver.terms \(neumann\) or "
                                          r"solver.max_iter \(cg\)$"):
        RunConfig.from_mapping({"solver": "cg", "terms": 5})


def test_solver_options_come_dotted_or_as_a_mapping_but_not_both():
    dotted = RunConfig.from_mapping({"solver": "cg", "solver.max_iter": "20", "solver.rtol": "1e-6"})
    mapping = RunConfig.from_mapping({"solver": "cg", "solver_options": {"max_iter": 20, "rtol": 1e-6}})
    assert dotted == mapping and dotted.make_solver().max_iter == 20 and dotted.solver_options["rtol"] == 1e-6
    with pytest.raises(ConfigError, match=r"^solver.max_iter: given twice"):
        RunConfig.from_mapping({"solver": "cg", "solver_options": {"max_iter": 2}, "solver.max_iter": 3})


def test_defaults_are_valid_and_names_are_stable():
    RunConfig().validate()
    for name in ("dataset", "model", "family", "solver",
                 "inner_lr", "inner_optimizer", "hyper_lr", "hyper_optimizer", "val_fraction", "inner_steps",
                 "epochs", "batch_size", "seed", "device", "hidden", "activation", "data_root",
                 "download", "train_size", "val_size"):
        assert name in field_names()
    for name in ("granularity", "init_decay", "fixed_decay", "augment_width", "augment_shift", "augment_flip",
                 "distill_per_class", "init_dropout", "fixed_dropout"):  # the families' own options
        assert name in family_option_names() and name not in field_names()


def test_family_options_come_by_name_or_as_a_mapping_but_not_both():
    named = RunConfig.from_mapping({"family": "dropout", "init_dropout": "0.3"})
    mapping = RunConfig.from_mapping({"family": "dropout", "family_options": {"init_dropout": 0.3}})
    assert named == mapping and named.family_options == {"init_dropout": 0.3}
    assert RunConfig().family_options == {"granularity": "per_weight", "init_decay": 1e-3}  # defaults filled in
    with pytest.raises(ConfigError, match=r"^init_dropout: given twice"):
        RunConfig.from_mapping({"family": "dropout", "family_options": {"init_dropout": 0.2}, "init_dropout": 0.3})


def test_an_option_of_another_family_is_refused_naming_its_family():
    with pytest.raises(ConfigError, match=r"^init_dropout: an option of the dropout family, not of weight_decay "
                                          r"\(its options: granularity, init_decay\); remove it or set family: dropout$"):
        RunConfig.from_mapping({"init_dropout": 0.2})
    with pytest.raises(ConfigError, match=r"^fixed_decay: an option of the augment and fixed_augment and distill and "
                                          r"fixed family, not of dropout"):
        RunConfig.from_mapping({"family": "dropout", "fixed_decay": 0.1})


def test_round_trip_through_dict_and_json():
    config = RunConfig.from_mapping({"solver": "neumann", "solver.terms": 7, "solver.alpha": "auto", "hidden": [64, 32],
                                     "granularity": "per_tensor", "train_size": 100, "device": "cuda:1",
                                     "download": True, "data_root": "/tmp/data", "inner_lr": 0.05})
    assert RunConfig.from_mapping(config.to_dict()) == config and config.to_dict()["granularity"] == "per_tensor"
    assert RunConfig.from_mapping(json.loads(json.dumps(config.to_dict()))) == config
    assert config.to_dict()["hidden"] == [64, 32]


def test_strings_are_converted_to_field_types():
    config = RunConfig.from_mapping({"inner_lr": "0.5", "epochs": "3", "hidden": "64,32", "download": "true",
                                     "train_size": "none", "solver.alpha": "0.2"})
    assert config.inner_lr == 0.5 and config.epochs == 3 and config.hidden == (64, 32)
    assert config.download is True and config.train_size is None and config.solver_options["alpha"] == 0.2
