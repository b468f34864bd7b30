"""``import hybrid_hpo`` and building the CLI's parser (what ``hybrid-hpo --help`` does) load no
heavy library; the package's names still resolve on first use."""
from __future__ import annotations

import subprocess
import sys

HEAVY = ("torch", "ray", "optuna", "sqlalchemy", "sklearn", "matplotlib")


def _loaded_after(code: str) -> list[str]:
    """The heavy top-level modules a fresh interpreter holds after running ``code``."""
    probe = f"{code}\nimport sys\nprint(' '.join(m for m in {HEAVY!r} if m in sys.modules))"
    return subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout.split()


def test_import_hybrid_hpo_and_the_cli_parser_load_no_heavy_library():
    assert _loaded_after("import hybrid_hpo") == []
    assert _loaded_after("from hybrid_hpo import cli\ncli.build_parser()") == []


def test_the_package_names_load_on_first_use():
    loaded = _loaded_after("from hybrid_hpo import hypergradient, Neumann, Task")
    assert "torch" in loaded and not {"ray", "optuna"} & set(loaded)  # the math API needs torch only
    import hybrid_hpo
    from hybrid_hpo.implicit import Neumann, hypergradient
    from hybrid_hpo.task import Task

    assert (hybrid_hpo.hypergradient, hybrid_hpo.Neumann, hybrid_hpo.Task) == (hypergradient, Neumann, Task)
    assert all(getattr(hybrid_hpo, name) is not None for name in hybrid_hpo.__all__)
