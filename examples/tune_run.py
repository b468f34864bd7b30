"""Our trainable and searcher in a plain ``ray.tune.run`` script, as a user's own script would use them.

Inside each trial: one weight decay per weight of a [256, 128] MLP on digits (~49k decays), tuned by
implicit differentiation. Outside: Optuna TPE over 3 meta-settings, 6 trials, 2 at a time.
About a minute on 2 CPU cores:

    python examples/tune_run.py
"""
from pathlib import Path

import ray
from ray import tune
from ray.tune.search import ConcurrencyLimiter

from hybrid_hpo.tune import IFTTrainable, IntRange, LogUniform, make_search

RESULTS = Path("results/example-tune_run").resolve()


def main() -> None:
    ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1")
    search = make_search(
        {
            "inner_lr": LogUniform(low=1e-2, high=0.3),
            "hyper_lr": tune.loguniform(1e-3, 1e-1),  # Ray Tune domains work too
            "solver.terms": IntRange(low=1, high=8),  # a solver option, by its dotted name
        },
        metric="sel_loss_best",
        mode="min",
        storage=f"sqlite:///{RESULTS}/optuna.sqlite3",
        seed=0,
        n_startup_trials=3,
        results_dir=RESULTS,
    )
    analysis = tune.run(
        IFTTrainable,
        config={  # fixed settings: RunConfig fields (the `hybrid-hpo run` flag names)
            "dataset": "digits", "model": "mlp", "hidden": [256, 128],
            "family": "weight_decay", "granularity": "per_weight",
            "solver": "neumann", "solver.alpha": 0.1, "inner_steps": 5, "epochs": 10,
        },
        search_alg=ConcurrencyLimiter(search, max_concurrent=2),
        num_samples=6,
        metric="sel_loss_best",
        mode="min",
        resources_per_trial={"cpu": 1},
        storage_path=str(RESULTS),
        name="tune",
        reuse_actors=True,  # IFTTrainable.reset_config rebuilds the trainer in the same actor
        verbose=1,
    )
    best = analysis.best_result
    ray.shutdown()
    print(f"best trial {best['trial_id']}: inner_lr {best['config']['inner_lr']:.4g}, "
          f"hyper_lr {best['config']['hyper_lr']:.4g}, solver.terms {best['config']['solver.terms']}")
    print(f"  val_loss {best['val_loss']:.4f}  val_acc {best['val_acc']:.4f}  "
          f"test_loss {best['test_loss']:.4f}  test_acc {best['test_acc']:.4f}")
    print(f"Optuna study {search.study.study_name!r}; open the dashboard:\n"
          f"  hybrid-hpo dashboard --storage sqlite:///{RESULTS}/optuna.sqlite3")


if __name__ == "__main__":
    main()
