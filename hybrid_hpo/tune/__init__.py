"""The outer loop: Ray Tune trials (one bilevel run each) searched by Optuna.

    from hybrid_hpo.tune import IFTTrainable, make_search, LogUniform, IntRange
    search = make_search({"inner_lr": LogUniform(low=1e-3, high=0.3)}, "sel_loss_best", "min",
                         storage="sqlite:////abs/optuna.sqlite3")
    tune.run(IFTTrainable, config={"epochs": 5}, search_alg=search, num_samples=8)

Names load on first use, so importing this package (the CLI does) does not import Ray.
"""
from __future__ import annotations

from hybrid_hpo.lazy import lazy_exports

_EXPORTS = {
    "IFTTrainable": "hybrid_hpo.tune.trainable",
    "make_search": "hybrid_hpo.tune.search",
    "RecordingOptunaSearch": "hybrid_hpo.tune.search",
    "LogUniform": "hybrid_hpo.tune.distributions",
    "Uniform": "hybrid_hpo.tune.distributions",
    "IntRange": "hybrid_hpo.tune.distributions",
    "Choice": "hybrid_hpo.tune.distributions",
    "SweepSpec": "hybrid_hpo.tune.spec",
    "load_spec": "hybrid_hpo.tune.spec",
}

__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)
