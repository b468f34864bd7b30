"""The one check of storage URLs and the one list of samplers, as every caller sees them."""
from __future__ import annotations

from pathlib import Path

import optuna
import pytest

from hybrid_hpo.compare.spec import Strategy
from hybrid_hpo.errors import ConfigError
from hybrid_hpo.tune.samplers import SAMPLERS, make_sampler
from hybrid_hpo.tune.search import make_storage
from hybrid_hpo.tune.spec import validate_spec
from hybrid_hpo.tune.urls import check_rdb_url, is_sqlite_in_memory, results_dir_storage, sqlite_file

SPEC = {"search": {"inner_lr": {"type": "loguniform", "low": 1e-3, "high": 0.3}}}


@pytest.mark.parametrize("url, file, in_memory", [
    ("sqlite:////abs/optuna.sqlite3", Path("/abs/optuna.sqlite3"), False),
    ("sqlite:///rel/optuna.sqlite3?timeout=5", Path("rel/optuna.sqlite3"), False),
    ("sqlite://", None, True),
    ("sqlite:///:memory:", None, True),
    ("postgresql://user@host:5432/db", None, False),
])
def test_sqlite_file_and_in_memory(url, file, in_memory):
    assert sqlite_file(url) == file and is_sqlite_in_memory(url) is in_memory


def test_not_a_url_is_refused_in_one_line_without_its_password():
    with pytest.raises(ConfigError, match=r"^--storage: 'optuna.db' is not an RDB URL; use e.g. sqlite:////"):
        check_rdb_url("optuna.db", "--storage")
    with pytest.raises(ConfigError, match="^storage: 'optuna.db' is not an RDB URL"):
        make_storage("optuna.db")  # the Python API gives the same message for its own argument
    assert check_rdb_url("postgresql://u@h/db", "--storage") == "postgresql://u@h/db"


def test_a_results_dirs_default_storage_is_its_sqlite_file(tmp_path):
    url = results_dir_storage(tmp_path / "sweep")
    assert url == f"sqlite:///{tmp_path}/sweep/optuna.sqlite3" and sqlite_file(url) == tmp_path / "sweep" / "optuna.sqlite3"


def test_every_listed_sampler_builds_and_both_spec_files_accept_exactly_the_list():
    assert {type(make_sampler(name, seed=0, n_startup_trials=2)) for name in SAMPLERS} == \
        {optuna.samplers.TPESampler, optuna.samplers.GPSampler}
    for name in SAMPLERS:
        assert validate_spec({**SPEC, "sampler": name}).sampler == name
        assert Strategy(sampler=name).sampler == name
    with pytest.raises(ConfigError, match="sampler: Input should be 'tpe' or 'gp'"):
        validate_spec({**SPEC, "sampler": "random"})
    with pytest.raises(ConfigError, match="sampler: unknown sampler 'random'; choose one of tpe, gp"):
        make_sampler("random", seed=0, n_startup_trials=None)
