"""The outer loop's overhead above its floor (issue 16 item 5), on the quickstart sweep.

In one run, on one local Ray (started once, so neither side pays Ray's start), ``--repeats``
times in turn:
  1. **ours**: ``hybrid-hpo sweep searches/quickstart.yaml`` in-process (:func:`run_sweep`: SQLite
     study, recording searcher, checkpoints, pictures, signed experiment state), wall time from
     the call to its return;
  2. **floor**: a bare Ray Tune + ``OptunaSearch`` sweep (in-memory study, same space, trial
     count, concurrency, resources and ``reuse_actors``; no checkpoints) whose trials *sleep*, epoch
     by epoch, for as long as the same-numbered trial of the run of ours just before trained
     (Ray's ``time_this_iter_s`` per epoch, trials in the order they started).
Overhead above the floor = (ours - floor) / ours, in % of our sweep's wall time; the goal is
<= 10 %. ``--profile`` then times, in a fresh process (as a trial actor starts), what an actor of
ours does besides training (imports, the first and a second trainer, final checkpoints with
pictures), and one more sweep of ours under cProfile shows the driver's own parts (Optuna on
SQLite, experiment snapshots and their signing). Each run of ours also prints, summed over its
trial actors, the time before the first epoch, between epochs, after checkpointed epochs, between
trials and after the last epoch, next to the same for the floor.

    unshare -rn bash -c 'ip link set lo up && RAY_AUTH_MODE=disabled RAY_USAGE_STATS_ENABLED=0 \
        python bench/outer_overhead.py [--repeats 2] [--profile]'
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SPEC = REPO / "searches" / "quickstart.yaml"


def _sleep_trainable(slots_dir: str, epochs_s: list[list[float]], metric: str):
    """A Trainable whose k-th trial (in the order trials start) sleeps ``epochs_s[k]`` epoch by epoch,
    reporting ``metric``."""
    from ray import tune

    class SleepTrainable(tune.Trainable):
        def setup(self, config):
            self._take_slot()

        def reset_config(self, new_config):
            self._take_slot()
            return True

        def _take_slot(self) -> None:
            for index in range(len(epochs_s)):  # the first free slot file, taken atomically across actors
                try:
                    os.close(os.open(os.path.join(slots_dir, f"slot-{index}"), os.O_CREAT | os.O_EXCL))
                except FileExistsError:
                    continue
                self.sleeps, self.epoch = epochs_s[index], 0
                return
            raise RuntimeError("more floor trials than trials of ours")

        def step(self):
            time.sleep(self.sleeps[self.epoch])
            self.epoch += 1
            return {metric: 1.0 / self.epoch, "done": self.epoch >= len(self.sleeps), "reported_at": time.time()}

    return SleepTrainable


def run_ours(results_dir: Path) -> tuple[float, list[list[float]], dict[str, float]]:
    """Our quickstart sweep: its wall time, each trial's epoch times (trials in start order) and
    where the rest of each actor's time went (:func:`where_time_went`)."""
    from hybrid_hpo.tune.plan import plan_sweep
    from hybrid_hpo.tune.spec import load_spec
    from hybrid_hpo.tune.sweep import run_sweep

    spec = load_spec(SPEC)
    started, clock = time.perf_counter(), time.time()
    outcome = run_sweep(spec, plan_sweep(spec, results_dir=results_dir), spec_path=str(SPEC), progress=False)
    wall = time.perf_counter() - started
    if outcome.errors or outcome.interrupted:
        raise SystemExit(f"our sweep did not finish cleanly ({outcome.errors} errors)")
    histories = sorted(outcome.histories.values(), key=_start)
    parts = where_time_went(histories, clock, clock + wall, spec.checkpoint_every)
    return wall, [[float(r["time_this_iter_s"]) for r in history] for history in histories], parts


def _start(history: list[dict]) -> float:
    return history[0]["reported_at"] - history[0]["time_this_iter_s"]


def where_time_went(histories: list[list[dict]], begin: float, end: float, checkpoint_every: int) -> dict[str, float]:
    """Seconds summed over the trial actors (one per Ray ``pid``), from the epochs' wall-clock ends
    (``reported_at``) and durations: before an actor's first epoch (from the sweep's start, or for
    an actor started later from the last trial end before it: Ray's actor start, imports, the first
    trainer: data and model), between epochs (result round trip through the driver), the
    same after a checkpointed epoch (checkpoint written, persisted, experiment snapshot), between
    trials in one actor (final checkpoint with pictures, Optuna tell and suggest, the next trainer),
    and after an actor's last epoch until the sweep returned."""
    parts = dict.fromkeys(("actors", "actor start to first epoch", "between epochs", "after a checkpointed epoch",
                           "between trials in an actor", "after the last epoch", "training"), 0.0)
    by_actor: dict[int, list[list[dict]]] = {}
    for history in histories:
        by_actor.setdefault(history[0]["pid"], []).append(history)
    parts["actors"] = len(by_actor)
    ends = [history[-1]["reported_at"] for history in histories]
    for trials in by_actor.values():  # an actor started later (not reused) counts from the slot freed before it
        freed = max([end for end in ends if end < _start(trials[0])], default=begin)
        parts["actor start to first epoch"] += _start(trials[0]) - freed
        for index, history in enumerate(trials):
            if index:
                parts["between trials in an actor"] += _start(history) - trials[index - 1][-1]["reported_at"]
            for previous, result in zip(history, history[1:]):
                gap = result["reported_at"] - result["time_this_iter_s"] - previous["reported_at"]
                checkpointed = checkpoint_every and previous["training_iteration"] % checkpoint_every == 0
                parts["after a checkpointed epoch" if checkpointed else "between epochs"] += gap
            parts["training"] += sum(r["time_this_iter_s"] for r in history)
        parts["after the last epoch"] += end - trials[-1][-1]["reported_at"]
    return parts


def run_floor(workdir: Path, epochs_s: list[list[float]]) -> tuple[float, dict[str, float]]:
    """The bare Ray Tune + OptunaSearch sweep of sleeping trials: its wall time and where its
    actors' time went (:func:`where_time_went`)."""
    from ray import tune
    from ray.tune.search import ConcurrencyLimiter
    from ray.tune.search.optuna import OptunaSearch

    from hybrid_hpo.tune.console import quiet_console
    from hybrid_hpo.tune.distributions import to_optuna_distribution
    from hybrid_hpo.tune.plan import trial_resources
    from hybrid_hpo.tune.spec import load_spec

    spec = load_spec(SPEC)
    os.environ.pop("TUNE_GLOBAL_CHECKPOINT_S", None)  # our sweep sets 2 s; the floor keeps Ray's default
    slots = workdir / "slots"
    slots.mkdir(parents=True)
    started, clock = time.perf_counter(), time.time()
    space = {name: to_optuna_distribution(name, value) for name, value in spec.search.items()}
    searcher = ConcurrencyLimiter(OptunaSearch(space=space, metric=spec.metric, mode=spec.mode, seed=spec.seed),
                                  max_concurrent=spec.max_concurrent)
    trainable = tune.with_resources(_sleep_trainable(str(slots), epochs_s, spec.metric), trial_resources(spec))
    tuner = tune.Tuner(trainable, tune_config=tune.TuneConfig(search_alg=searcher, num_samples=len(epochs_s),
                                                             reuse_actors=True),
                      run_config=tune.RunConfig(storage_path=str(workdir), name="floor", verbose=0,
                                                checkpoint_config=tune.CheckpointConfig(checkpoint_at_end=False)))
    with quiet_console():
        grid = tuner.fit()
    wall = time.perf_counter() - started
    if grid.num_errors or len(grid) != len(epochs_s):
        raise SystemExit("the floor sweep did not finish cleanly")
    histories = sorted((result.metrics_dataframe.to_dict("records") for result in grid), key=_start)
    return wall, where_time_went(histories, clock, clock + wall, 0)


ACTOR_PROFILE = r"""
import sys, tempfile, time
marks, start = [], time.perf_counter()
def mark(label):
    global start
    marks.append((label, time.perf_counter() - start))
    start = time.perf_counter()
import torch
torch.set_num_threads(1)
mark("import torch")
import ray.tune
mark("import ray.tune (the floor's actors do this too)")
from hybrid_hpo.tune.trainable import IFTTrainable
from hybrid_hpo.tune.plan import base_config
from hybrid_hpo.tune.spec import load_spec
mark("import the rest of the trainable (hybrid_hpo)")
from hybrid_hpo.data import _digits
_digits()
mark("import sklearn, load digits (first trainer's data)")
config = dict(base_config(load_spec(sys.argv[1])), inner_lr=0.1, hyper_lr=0.01, val_fraction=0.3, inner_steps=1,
              epochs=1, **{"solver.terms": 1, "solver.alpha": 0.1})
actor = IFTTrainable.__new__(IFTTrainable)  # what setup() and reset_config() do, without an actor
actor.task_source, actor.run_config, actor.metric, actor.mode = None, None, "sel_loss", "min"
actor.digests, actor.restored = False, {}
for name in ("first", "second"):
    mark("-")
    actor._build(config)
    mark(f"build the {name} trial's trainer (split, model, optimizers)")
    actor.step()
    mark("-")
    actor.save_checkpoint(tempfile.mkdtemp())
    mark(f"final checkpoint of the {name} trial (weights, pictures)")
for label, seconds in marks:
    if label != "-":
        print(f"  {label:<58} {seconds:6.2f} s")
print(f"  torch._dynamo imported by then: {'torch._dynamo' in sys.modules} (torch.optim's own classes import it)")
"""

DRIVER_PARTS = {  # pstats function name -> what it is
    "make_storage": "open the SQLite storage (tables, alembic)",
    "sync_up_experiment_state": "experiment snapshots (Ray's, every 2 s, with our signing)",
    "save_to_dir": "  of which our signing of Ray's pickles",
    "on_trial_result": "Optuna: one intermediate value per epoch (SQLite)",
    "on_trial_complete": "Optuna: user attributes, pictures, tell per trial (SQLite)",
    "set_user_attrs": "  of which the user attributes (one transaction each call)",
    "_attach_pictures": "  of which uploading the trial's pictures",
    "suggest": "Optuna: TPE suggest per trial (SQLite)",
}


def profile_driver(workdir: Path) -> None:
    """One more sweep of ours under cProfile: where the driver's own time goes (cProfile slows it)."""
    import cProfile
    import pstats

    profiler = cProfile.Profile()
    profiler.enable()
    wall, _, _ = run_ours(workdir)
    profiler.disable()
    stats = pstats.Stats(profiler).stats
    print(f"driver profile (one sweep of ours under cProfile, {wall:.1f} s):")
    for name, label in DRIVER_PARTS.items():
        rows = [(calls, cumulative) for (path, _, function), (calls, _, _, cumulative, _) in stats.items()
                if function == name and ("hybrid_hpo" in path or name == "sync_up_experiment_state")]
        calls, seconds = max(rows, key=lambda row: row[1], default=(0, 0.0))
        print(f"  {label:<58} {seconds:6.2f} s in {calls} calls")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2, help="pairs (ours, floor), interleaved (default 2)")
    parser.add_argument("--profile", action="store_true", help="also time an actor's own work in a fresh process")
    args = parser.parse_args()

    import ray

    from hybrid_hpo.tune.ray_start import init_ray

    print("# outer overhead above the floor: quickstart (8 trials, 2 at a time) vs a bare Ray Tune + OptunaSearch "
          "sweep of sleeping trials")
    print(f"# {os.cpu_count()} cores, ray {ray.__version__}, load average at start "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    init_ray(None, quiet=True)
    rows = []
    try:
        with tempfile.TemporaryDirectory(prefix="outer-overhead-") as tmp:
            for repeat in range(args.repeats):
                ours, epochs_s, parts = run_ours(Path(tmp) / f"ours-{repeat}")
                floor, floor_parts = run_floor(Path(tmp) / f"floor-{repeat}", epochs_s)
                trained = sum(map(sum, epochs_s))
                rows.append((ours, floor, trained))
                print(f"repeat {repeat}: ours {ours:.1f} s, floor {floor:.1f} s, trials trained {trained:.1f} s "
                      f"in total; overhead above the floor {ours - floor:.1f} s = {100 * (ours - floor) / ours:.0f} % "
                      "of our wall time", flush=True)
                for name, split in (("ours", parts), ("floor", floor_parts)):
                    actors = split.pop("actors")
                    print(f"  {name:>5}, summed over its {actors:.0f} actors: "
                          + "; ".join(f"{k} {v:.1f} s" for k, v in split.items()))
            if args.profile:
                profile_driver(Path(tmp) / "profiled")
    finally:
        ray.shutdown()
    if rows:  # --repeats 0 --profile: the profiles only
        share = statistics.median(100 * (ours - floor) / ours for ours, floor, _ in rows)
        print(f"median overhead above the floor: {share:.0f} % of our sweep's wall time (goal <= 10 %)")
    print(f"# load average at end {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    if args.profile:
        print("actor profile (a fresh process, as a trial actor starts; its work besides training):", flush=True)
        subprocess.run([sys.executable, "-c", ACTOR_PROFILE, str(SPEC)], check=True, cwd=REPO)


if __name__ == "__main__":
    main()
