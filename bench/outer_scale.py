"""Cluster-scale outer loop (issue 16 item 6): does the outer loop's cost per trial stay flat as a
sweep grows to hundreds of trials?

A sweep of many short trials (digits MLP hidden [16], 200 training examples, 2 epochs), 8 at a
time, through hybrid_hpo's own sweep path (:func:`hybrid_hpo.tune.sweep.run_sweep`, what
``hybrid-hpo sweep --address ... --storage postgresql://...`` runs) on a 4-node Ray cluster of
``ray start`` processes on 127.0.0.1, with the Optuna study in a throwaway PostgreSQL server
(tests/services.py starts and stops both, as for the cluster test). One sweep per sampler (TPE,
GP), each its own study. Measured in the driver (this process), per trial, in the order trials
finish:

- overhead: the trial's wall time in Ray — from the searcher's ``suggest`` returning its settings
  to the end of ``on_trial_complete`` (the study told) — minus its own training time, the sum of
  its epochs' ``epoch_time_s``. It holds actor start or reuse (``reset_config`` rebuilds trainer
  and data), result handling, the final checkpoint and its pictures, the study writes, and waits
  for the driver's loop. A trial whose Ray worker (pid) ran no trial before is "cold" (process
  start and imports); the overhead column is the median of the warm trials.
- suggest: wall time of ``RecordingOptunaSearch.suggest`` (Optuna's ask: sampler plus storage
  round trips); "sampler": the part spent in the sampler's own methods.
- storage writes: INSERT/UPDATE/DELETE statements sent by the driver's SQLAlchemy engines (every
  study write goes through the driver), per second of sweep wall time and per trial, and their
  mean latency.
- driver RSS: this process's resident memory when the trial finished.
- driver CPU per trial: this process's CPU time (all its threads: Tune's loop, the searcher, the
  storage client, Ray's core worker) spent per finished trial. Everything the driver does grows
  with the trial count if anything does, and CPU time is barely inflated by other processes on
  the cores, unlike the wall-time overhead, so this is the column that separates growth from load;
  "load" is the 1-minute load average when the window's trials finished.

A checkpoint row "trial N" summarises the 10 trials that finished up to the N-th (medians;
rates over the window's wall time). Run inside a loopback-only network namespace (from the repo root)::

    unshare -rn bash -c 'ip link set lo up && RAY_USAGE_STATS_ENABLED=0 nice -n 5 python bench/outer_scale.py'

The default is the issue's full size, 500 trials per sampler; ``--trials 150`` is the reduced run of
BENCHMARKS.md (2 shared cores).
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))  # the throwaway cluster and PostgreSQL of the cluster test

from services import postgres_bin, postgres_server, ray_cluster  # noqa: E402

RESULTS = HERE / "results"
WINDOW = 10
CHECKPOINTS = (10, 50, 100, 200, 500)
WRITE_VERBS = ("INSERT", "UPDATE", "DELETE")


@dataclass
class Finished:
    """One trial as the driver saw it end (times in seconds, ``at`` on the perf_counter clock)."""

    overhead_s: float
    train_s: float
    suggest_s: float
    sampler_s: float
    cold: bool
    node: str
    at: float
    writes: int  # storage writes so far in this sweep
    write_s: float  # their total latency so far
    rss_mb: float
    cpu_s: float  # this driver's CPU time so far (time.process_time: all its threads)
    load: float  # the machine's 1-minute load average


@dataclass
class Probe:
    """What the instrumented searcher, samplers and engines record during one sweep."""

    started: float = 0.0
    started_cpu: float = 0.0
    sampler_s: float = 0.0  # time inside sampler methods so far
    sampler_depth: int = 0
    writes: int = 0
    write_s: float = 0.0
    pending: dict[str, dict] = field(default_factory=dict)  # trial id -> suggest times, epoch times
    pids: set[int] = field(default_factory=set)
    finished: list[Finished] = field(default_factory=list)
    errors: int = 0


PROBE = Probe()


def driver_rss_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _timed_sampler_method(method):
    def timed(self, *args, **kwargs):
        PROBE.sampler_depth += 1
        start = time.perf_counter()
        try:
            return method(self, *args, **kwargs)
        finally:
            PROBE.sampler_depth -= 1
            if PROBE.sampler_depth == 0:  # a sampler method calling another counts once
                PROBE.sampler_s += time.perf_counter() - start
    return timed


def instrument() -> None:
    """Wrap (at class level, so Ray's pickled searcher stays picklable) the searcher's suggest and
    result hooks, the samplers' sample methods, and count every SQL write of the driver."""
    import optuna
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    from hybrid_hpo.tune.search import RecordingOptunaSearch

    for sampler in (optuna.samplers.TPESampler, optuna.samplers.GPSampler):
        for name in ("infer_relative_search_space", "sample_relative", "sample_independent",
                     "before_trial", "after_trial"):
            setattr(sampler, name, _timed_sampler_method(getattr(sampler, name)))

    @event.listens_for(Engine, "before_cursor_execute")
    def _before(conn, cursor, statement, parameters, context, executemany):
        conn.info["bench_started"] = time.perf_counter()

    @event.listens_for(Engine, "after_cursor_execute")
    def _after(conn, cursor, statement, parameters, context, executemany):
        if statement.lstrip()[:6].upper() in WRITE_VERBS:
            PROBE.writes += 1
            PROBE.write_s += time.perf_counter() - conn.info.pop("bench_started", time.perf_counter())

    suggest, on_result, on_complete = (RecordingOptunaSearch.suggest, RecordingOptunaSearch.on_trial_result,
                                       RecordingOptunaSearch.on_trial_complete)

    def timed_suggest(self, trial_id):
        sampler_before, start = PROBE.sampler_s, time.perf_counter()
        config = suggest(self, trial_id)
        end = time.perf_counter()
        PROBE.pending[trial_id] = {"suggest_s": end - start, "sampler_s": PROBE.sampler_s - sampler_before,
                                   "returned": end, "epochs": {}}
        return config

    def recorded_result(self, trial_id, result):
        _note_epoch(trial_id, result)
        return on_result(self, trial_id, result)

    def recorded_complete(self, trial_id, result=None, error=False):
        _note_epoch(trial_id, result)
        on_complete(self, trial_id, result, error)
        end = time.perf_counter()
        trial = PROBE.pending.pop(trial_id, None)
        if trial is None or error or not result:
            PROBE.errors += 1
            return
        pid = result.get("pid")
        cold = pid not in PROBE.pids
        PROBE.pids.add(pid)
        train = sum(trial["epochs"].values())
        PROBE.finished.append(Finished(end - trial["returned"] - train, train, trial["suggest_s"], trial["sampler_s"],
                                       cold, str(result.get("node_id", "?")), end, PROBE.writes, PROBE.write_s,
                                       driver_rss_mb(), time.process_time(), os.getloadavg()[0]))

    RecordingOptunaSearch.suggest = timed_suggest
    RecordingOptunaSearch.on_trial_result = recorded_result
    RecordingOptunaSearch.on_trial_complete = recorded_complete


def _note_epoch(trial_id: str, result: dict | None) -> None:
    if result and trial_id in PROBE.pending and "epoch" in result:
        PROBE.pending[trial_id]["epochs"][result["epoch"]] = float(result.get("epoch_time_s", 0.0))


def sweep_spec(sampler: str, args: argparse.Namespace):
    from hybrid_hpo.tune.spec import SweepSpec

    return SweepSpec.model_validate({
        "name": f"outer-scale-{sampler}",
        "task": {"dataset": "digits", "model": "mlp", "hidden": [16], "train_size": 200},
        "inner": {"epochs": args.epochs, "inner_steps": 2, "batch_size": 32},
        "solver": {"name": "neumann", "terms": 2},
        "search": {"inner_lr": {"type": "loguniform", "low": 1e-2, "high": 0.3},
                   "hyper_lr": {"type": "loguniform", "low": 1e-3, "high": 0.1}},
        "sampler": sampler, "num_trials": args.trials, "max_concurrent": args.concurrency,
        "resources": {"cpu": args.cpu, "gpu": 0}, "checkpoint_every": 0, "time_budget_s": args.budget_s,
    })


def run_one(sampler: str, args: argparse.Namespace, address: str, storage: str, workdir: Path) -> Probe:
    from hybrid_hpo.tune.plan import plan_sweep
    from hybrid_hpo.tune.sweep import run_sweep

    global PROBE
    spec = sweep_spec(sampler, args)
    plan = plan_sweep(spec, storage=storage, results_dir=workdir / sampler)
    PROBE = Probe(started=time.perf_counter(), started_cpu=time.process_time())
    outcome = run_sweep(spec, plan, address=address, verbose=0)
    PROBE.errors += outcome.errors
    return PROBE


def checkpoint_rows(probe: Probe, checkpoints: list[int]) -> list[dict]:
    rows = []
    for n in checkpoints:
        window = probe.finished[max(0, n - WINDOW):n]
        before = probe.finished[n - WINDOW - 1] if n > WINDOW else None
        since, writes0, write_s0, cpu0 = ((before.at, before.writes, before.write_s, before.cpu_s) if before
                                          else (probe.started, 0, 0.0, probe.started_cpu))
        last = window[-1]
        warm = [t.overhead_s for t in window if not t.cold]
        writes = last.writes - writes0
        rows.append({
            "trial": n, "overhead_s": statistics.median(warm) if warm else float("nan"), "warm": len(warm),
            "overhead_all_s": statistics.median(t.overhead_s for t in window),
            "train_s": statistics.median(t.train_s for t in window),
            "suggest_ms": 1e3 * statistics.median(t.suggest_s for t in window),
            "sampler_ms": 1e3 * statistics.median(t.sampler_s for t in window),
            "writes_per_s": writes / (last.at - since), "writes_per_trial": writes / len(window),
            "write_ms": 1e3 * (last.write_s - write_s0) / max(writes, 1),
            "trials_per_min": 60 * len(window) / (last.at - since), "rss_mb": last.rss_mb,
            "driver_cpu_ms": 1e3 * (last.cpu_s - cpu0) / len(window), "load": statistics.median(t.load for t in window),
        })
    return rows


def table(sampler: str, probe: Probe, rows: list[dict]) -> list[str]:
    nodes = sorted({t.node for t in probe.finished})
    per_node = [sum(t.node == node for t in probe.finished) for node in nodes]
    lines = [f"## {sampler.upper()}: {len(probe.finished)} trials finished, {probe.errors} errors, "
             f"{sum(t.cold for t in probe.finished)} cold (new worker), trials per node {per_node}",
             f"{'trial':>5} {'overhead s':>10} {'(warm n)':>8} {'all s':>6} {'train s':>7} {'suggest ms':>10} "
             f"{'sampler ms':>10} {'writes/s':>8} {'writes/trial':>12} {'write ms':>8} {'trials/min':>10} "
             f"{'driver RSS MB':>13} {'driver CPU ms/trial':>19} {'load':>5}"]
    for r in rows:
        lines.append(f"{r['trial']:>5} {r['overhead_s']:>10.2f} {r['warm']:>8} {r['overhead_all_s']:>6.2f} "
                     f"{r['train_s']:>7.2f} {r['suggest_ms']:>10.1f} {r['sampler_ms']:>10.1f} "
                     f"{r['writes_per_s']:>8.1f} {r['writes_per_trial']:>12.1f} {r['write_ms']:>8.2f} "
                     f"{r['trials_per_min']:>10.1f} {r['rss_mb']:>13.0f} {r['driver_cpu_ms']:>19.0f} {r['load']:>5.1f}")
    first, last = rows[0], rows[-1]
    steady = next((r for r in rows if r["warm"] == WINDOW), first)  # the first window without cold starts
    ratios = [f"trial {last['trial']} / trial {first['trial']} ({first['warm']} warm): "
              f"{last['overhead_s'] / first['overhead_s']:.2f}x"]
    if steady is not first:
        ratios.insert(0, f"trial {last['trial']} / trial {steady['trial']} (first window without cold starts): "
                         f"{last['overhead_s'] / steady['overhead_s']:.2f}x")
    lines.append(f"# overhead (warm) {'; '.join(ratios)} (goal: within 1.5x); suggest "
                 f"{last['suggest_ms'] / steady['suggest_ms']:.2f}x, sampler "
                 f"{last['sampler_ms'] / max(steady['sampler_ms'], 1e-9):.2f}x, driver CPU per trial "
                 f"{last['driver_cpu_ms'] / max(steady['driver_cpu_ms'], 1e-9):.2f}x (against trial {steady['trial']}), "
                 f"driver RSS {last['rss_mb'] - first['rss_mb']:+.0f} MB")
    return lines


def rolling(values: list[float], width: int = WINDOW) -> list[float]:
    return [statistics.median(values[max(0, i - width + 1):i + 1]) for i in range(len(values))]


def plot(probes: dict[str, Probe], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(11, 7.5))
    for sampler, probe in probes.items():
        n = list(range(1, len(probe.finished) + 1))
        warm = [(i, t.overhead_s) for i, t in zip(n, probe.finished) if not t.cold]
        line, = axes[0, 0].plot([i for i, _ in warm], rolling([o for _, o in warm]), label=f"{sampler} (rolling median)")
        axes[0, 0].scatter([i for i, _ in warm], [o for _, o in warm], s=4, alpha=0.3, color=line.get_color())
        axes[0, 1].plot(n, [1e3 * t.suggest_s for t in probe.finished], ".", ms=3, alpha=0.5, color=line.get_color(),
                        label=f"{sampler} suggest")
        axes[0, 1].plot(n, rolling([1e3 * t.sampler_s for t in probe.finished]), color=line.get_color(),
                        label=f"{sampler} sampler (rolling median)")
        rate = [(i, (b.writes - a.writes) / (b.at - a.at)) for i, a, b in
                zip(n[WINDOW:], probe.finished, probe.finished[WINDOW:]) if b.at > a.at]
        axes[1, 0].plot([i for i, _ in rate], [r for _, r in rate], color=line.get_color(), label=sampler)
        axes[1, 1].plot(n, [t.rss_mb for t in probe.finished], color=line.get_color(), label=sampler)
    for ax, (title, unit) in zip(axes.flat, [("per-trial overhead (warm trials)", "s"), ("suggest latency", "ms"),
                                              (f"storage writes per second (last {WINDOW} trials)", "writes/s"),
                                              ("driver RSS", "MB")]):
        ax.set_title(title)
        ax.set_xlabel("trials finished")
        ax.set_ylabel(unit)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    axes[0, 1].set_yscale("log")
    fig.suptitle("Outer loop at scale: 4-node Ray cluster on loopback, PostgreSQL study, 8 concurrent trials")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=500, help="trials per sampler (default 500, the issue's size)")
    parser.add_argument("--samplers", default="tpe,gp", help="comma-separated samplers (default tpe,gp)")
    parser.add_argument("--concurrency", type=int, default=8, help="trials at a time (default 8)")
    parser.add_argument("--nodes", type=int, default=4, help="Ray nodes, head included (default 4)")
    parser.add_argument("--cpus-per-node", type=int, default=1, help="logical CPUs each node offers (default 1)")
    parser.add_argument("--cpu", type=float, default=0.25, help="CPUs each trial reserves (default 0.25)")
    parser.add_argument("--epochs", type=int, default=2, help="epochs per trial (default 2)")
    parser.add_argument("--budget-s", type=float, default=None,
                        help="stop each sweep after this many seconds (the sweep's time_budget_s; default none)")
    args = parser.parse_args()
    if args.trials < WINDOW:
        raise SystemExit(f"--trials: at least {WINDOW}")
    bindir = postgres_bin()
    if bindir is None:
        raise SystemExit("no PostgreSQL server installed (Debian package postgresql)")
    checkpoints = [c for c in CHECKPOINTS if c <= args.trials]
    lines = [f"# Outer loop at scale: {args.trials} trials per sampler, {args.concurrency} at a time, "
             f"{args.nodes}-node Ray cluster on 127.0.0.1 ({args.cpus_per_node} CPU each, {args.cpu} per trial), "
             f"PostgreSQL storage, digits MLP [16], train_size 200, {args.epochs} epochs",
             f"# machine: {platform.node()}, {os.cpu_count()} cores, load average at start "
             f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}",
             f"# row 'trial N': the {WINDOW} trials that finished up to the N-th; overhead = wall time in Ray "
             "(suggest returned -> study told) minus the trial's epoch_time_s; medians"]
    print("\n".join(lines), flush=True)
    probes: dict[str, Probe] = {}
    with tempfile.TemporaryDirectory(prefix="outer-scale-") as workdir, postgres_server(bindir) as storage, \
            ray_cluster(nodes=args.nodes, cpus_per_node=args.cpus_per_node) as (address, env):
        for key in ("RAY_TMPDIR", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN"):  # this driver joins with the cluster's token
            os.environ[key] = env[key]
        instrument()  # imports Ray, which reads the token from the environment once
        for sampler in args.samplers.split(","):
            started = time.perf_counter()
            probe = probes[sampler] = run_one(sampler, args, address, storage, Path(workdir))
            done = len(probe.finished)
            rows = checkpoint_rows(probe, [c for c in checkpoints if c <= done] + ([done] if done not in checkpoints else []))
            block = table(sampler, probe, rows) if done else [f"## {sampler.upper()}: no trial finished"]
            block.append(f"# sweep wall time {time.perf_counter() - started:.0f} s; load average "
                         f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}")
            print("\n".join(block), flush=True)
            lines += block
            RESULTS.mkdir(exist_ok=True)  # after each sampler, so a run stopped later keeps what it measured
            (RESULTS / "outer_scale.txt").write_text("\n".join(lines) + "\n")
            plot(probes, RESULTS / "outer_scale.png")
    print(f"wrote {RESULTS / 'outer_scale.txt'} and {RESULTS / 'outer_scale.png'}")


if __name__ == "__main__":
    main()
