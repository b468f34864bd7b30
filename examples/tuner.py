"""The same search as examples/tune_run.py with the ``tune.Tuner`` API.

    python examples/tuner.py
"""
from pathlib import Path

import ray
from ray import tune

from hybrid_hpo.tune import Choice, IFTTrainable, LogUniform, Uniform, make_search

RESULTS = Path("results/example-tuner").resolve()


def main() -> None:
    ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1")
    search = make_search(
        {
            "inner_lr": LogUniform(low=1e-2, high=0.3),
            "val_fraction": Uniform(low=0.2, high=0.6),
            "inner_optimizer": Choice(values=["momentum", "adam"]),
        },
        metric="sel_loss_best",
        mode="min",
        sampler="gp",
        seed=0,
        n_startup_trials=3,
        results_dir=RESULTS,  # storage=None: a SQLite file in RESULTS
    )
    tuner = tune.Tuner(
        tune.with_resources(IFTTrainable, {"cpu": 1}),
        param_space={
            "dataset": "digits", "model": "mlp", "hidden": [256, 128],
            "solver": "neumann", "hyper_lr": 0.03, "inner_steps": 5, "epochs": 10,
        },
        tune_config=tune.TuneConfig(search_alg=search, num_samples=6, max_concurrent_trials=2,
                                    metric="sel_loss_best", mode="min", reuse_actors=True),
        run_config=tune.RunConfig(storage_path=str(RESULTS), name="tune", verbose=1),
    )
    best = tuner.fit().get_best_result()
    ray.shutdown()
    config, metrics = best.config, best.metrics
    print(f"best: inner_lr {config['inner_lr']:.4g}, val_fraction {config['val_fraction']:.3f}, "
          f"inner_optimizer {config['inner_optimizer']}")
    print(f"  val_loss {metrics['val_loss']:.4f}  val_acc {metrics['val_acc']:.4f}  "
          f"test_loss {metrics['test_loss']:.4f}  test_acc {metrics['test_acc']:.4f}")
    print(f"Optuna study {search.study.study_name!r}; open the dashboard:\n"
          f"  hybrid-hpo dashboard --storage sqlite:///{RESULTS}/optuna.sqlite3")


if __name__ == "__main__":
    main()
