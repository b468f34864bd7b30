"""`hybrid-hpo run`: flags map to RunConfig, the table matches the JSON, bad values exit 2."""
import json

import pytest

from hybrid_hpo.cli import build_parser, main

SMALL = ["--epochs", "2", "--hidden", "32", "--train-size", "300", "--val_size", "200", "--device", "cpu"]


def test_run_prints_table_and_writes_json(tmp_path, capsys):
    path = tmp_path / "metrics.json"
    assert main(["run", *SMALL, "--json", str(path)]) == 0
    out = capsys.readouterr().out
    history = json.loads(path.read_text())
    assert [m["epoch"] for m in history] == [1, 2]
    assert history[0]["hyper_steps"] > 0 and history[0]["num_hparams"] == 64 * 32 + 32 * 10
    lines = out.splitlines()
    header = next(line for line in lines if line.split()[:1] == ["epoch"])
    assert "test_acc" in header and "|hypergrad|" in header
    column = header.split().index("test_acc")
    rows = {int(line.split()[0]): line.split() for line in lines if line.split()[:1] in (["1"], ["2"])}
    for metrics in history:
        assert rows[metrics["epoch"]][column] == f"{metrics['test_acc']:.4f}"
    assert f"test_acc {history[-1]['test_acc']:.4f}" in lines[-1]
    assert "300 train / 200 val / 360 test" in out


def test_flag_spellings_and_types():
    args = build_parser().parse_args(["run", "--inner_lr", "0.05", "--hyper-lr", "1e-3", "--hidden", "8", "4",
                                      "--download", "--train-size", "none"])
    assert (args.inner_lr, args.hyper_lr, args.hidden, args.download, args.train_size) == \
        ("0.05", "1e-3", ["8", "4"], True, "none")
    assert not hasattr(args, "epochs")  # unset flags keep RunConfig's defaults
    assert build_parser().parse_args(["run", "--no-download"]).download is False


@pytest.mark.parametrize("flag, value, field", [("--solver-option", "alpha=-1", "solver.alpha"),
                                                ("--solver-option", "terms=-2", "solver.terms"),
                                                ("--solver-option", "terms", "--solver-option"),
                                                ("--terms", "3", "terms: is now a solver option"),
                                                ("--epochs", "abc", "epochs"), ("--val-fraction", "1.5", "val_fraction"),
                                                ("--dataset", "imagenet", "dataset")])
def test_bad_value_exits_2_with_one_line(flag, value, field, capsys):
    assert main(["run", flag, value, "--quiet"]) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and field in lines[0] and lines[0].startswith("hybrid-hpo run: error:")
    assert captured.out == ""


@pytest.mark.parametrize("flags, expected", [
    (["--json", "{tmp}/missing/metrics.json"], "--json: the folder {tmp}/missing does not exist"),
    (["--json", "{tmp}"], "--json: {tmp} is a folder"),
    (["--pictures", "{tmp}/a-file/pictures"], "--pictures: {tmp}/a-file/pictures cannot be created: {tmp}/a-file is a file"),
    (["--device", "cuda:99"], "device: cuda:99 requested but"),
])
def test_bad_output_paths_and_device_are_refused_before_training(flags, expected, tmp_path, capsys, monkeypatch):
    """These used to train to the end and then lose the result (or trace back at the first tensor)."""
    import hybrid_hpo.bilevel

    def never(*args, **kwargs):
        raise AssertionError("training started")

    monkeypatch.setattr(hybrid_hpo.bilevel.BilevelTrainer, "__init__", never)
    (tmp_path / "a-file").write_text("not a folder")
    tmp = str(tmp_path.resolve())
    assert main(["run", *SMALL[:-2], *(f.replace("{tmp}", tmp) for f in flags)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and expected.replace("{tmp}", tmp) in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file"]


def test_run_help_describes_every_option_with_its_allowed_values_in_one_spelling(capsys):
    import dataclasses

    from hybrid_hpo.config import RunConfig, field_names
    from hybrid_hpo.hyper import FAMILIES
    from hybrid_hpo.implicit import SOLVERS
    from hybrid_hpo.rules import options_of

    with pytest.raises(SystemExit):
        main(["run", "--help"])
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    declared = [(f.name, f.metadata["help"], f.metadata["rule"]) for f in dataclasses.fields(RunConfig)
                if f.name in field_names()]
    declared += [(o.name, o.help, o.rule) for family in FAMILIES.values() for o in options_of(family.options)]
    for name, meaning, rule in declared:
        assert meaning in text, name
        assert rule is None or rule.describe() in text, name  # the rule validation checks
        if "_" in name:
            assert f"--{name} " not in text, name  # only the dash spelling is shown
    assert all(f"{name}:" in text for name in SOLVERS) and "max_iter=10" in text
    assert "augment, fixed_augment, distill, fixed: fixed L2" in text  # a shared option names its families
    assert build_parser().parse_args(["run", "--inner_lr", "0.5"]).inner_lr == "0.5"  # still accepted
    args, extra = build_parser().parse_known_args(["run", "--init_decay", "0.5", "--no-augment-flip", "--epochs", "2"])
    args.parse_extra(extra, args)
    assert args.family_values == {"init_decay": "0.5", "augment_flip": False} and args.epochs == "2"
