"""What a sweep prints while it runs: one line per finished trial and a progress bar over trials,
in place of Ray Tune's console output (its config and result boxes, status tables, checkpoint
lines and snapshot warnings), which ``hybrid-hpo sweep --verbose`` brings back.

A finished trial's line carries its place among the sweep's trials, its searched meta-settings,
the objective and the other val_*/test_* metrics of its last epoch, its epochs and its time::

    [3/8] trial 5b495960_1 done, 20 epochs in 41.2 s: inner_lr=0.0647 hyper_lr=0.0269 | val_loss=0.1234 val_acc=0.9621 test_loss=0.1357 test_acc=0.9555

On a terminal a bar under those lines (``[#####-----] 3/8 trials, 2 running, 1m05s``) is redrawn
in place; when stdout is not a terminal (a log file, CI) nothing is redrawn and the ``[k/N]``
prefix is the progress.
"""
from __future__ import annotations

import logging
import math
import os
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from ray.tune import Callback

from hybrid_hpo.tune.outcome import table_metrics, trial_status

# The loggers behind the console lines --verbose brings back: Ray Tune's experiment and snapshot
# notes and sync warnings, Ray Train's checkpoint paths (in the trial actors: IFTTrainable's
# epoch_logs), Optuna's "study created" and "trial finished" notes (the trial lines say it).
QUIETED_LOGGERS = ("ray.tune", "ray.train", "optuna")
NEW_OUTPUT_ENV = "RAY_AIR_NEW_OUTPUT"  # Ray Tune's switch between its two console reporters
BAR_WIDTH = 20
REDRAW_S = 1.0


class ConsoleProgress(Callback):
    """Ray Tune callback printing the sweep's own progress (see the module docstring).

    searched: the meta-settings the search samples (shown per trial); objective: the metric the
    search optimises (shown first); epochs: a trial's budget (fewer epochs = pruned). It is pickled
    with Ray's experiment (a resumed sweep prints the same way) and holds no stream: it writes
    to whatever ``sys.stdout`` is when it prints.
    """

    def __init__(self, searched: Sequence[str], objective: str, epochs: int) -> None:
        self.searched = tuple(searched)
        self.objective = objective
        self.epochs = epochs
        self.total = 0
        self._started = time.monotonic()
        self._drawn_at = -math.inf
        self._bar_shown = False
        self._rejected: dict[str, tuple[int, int]] = {}  # trial id -> (rejected, all) hyper steps so far

    def setup(self, stop=None, num_samples: int | None = None, total_num_samples: int | None = None,
              **info: Any) -> None:
        self.total = total_num_samples or num_samples or 0
        self._started = time.monotonic()

    def on_trial_result(self, iteration: int, trials: list, trial, result: dict, **info: Any) -> None:
        rejected, steps = self._rejected.get(trial.trial_id, (0, 0))
        self._rejected[trial.trial_id] = (rejected + int(result.get("rejected_hyper_steps", 0)),
                                          steps + int(result.get("hyper_steps", 0)))

    def on_trial_complete(self, iteration: int, trials: list, trial, **info: Any) -> None:
        self._finished(trials, trial, error=None)

    def on_trial_error(self, iteration: int, trials: list, trial, **info: Any) -> None:
        self._finished(trials, trial, error=trial.error_file or "see the trial's error.txt")

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        if _is_terminal() and time.monotonic() - self._drawn_at >= REDRAW_S:
            self._draw_bar(trials)

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        self._clear_bar()

    def _finished(self, trials: list, trial, error: str | None) -> None:
        done = {t.trial_id for t in trials if t.status in ("TERMINATED", "ERROR")} | {trial.trial_id}
        total = max(self.total, len(trials))
        line = trial_line(trial.trial_id, trial.config or {}, trial.last_result or {}, self.searched,
                          self.objective, self.epochs, error)
        rejected, steps = self._rejected.pop(trial.trial_id, (0, 0))
        if rejected:
            line += f"; {rejected} of {steps} hyper steps rejected (non-finite or diverged)"
        self._clear_bar()
        print(f"[{len(done)}/{total}] {line}", file=sys.stdout, flush=True)
        if _is_terminal():
            self._draw_bar(trials, finished=len(done))

    def _draw_bar(self, trials: list, finished: int | None = None) -> None:
        if finished is None:
            finished = sum(t.status in ("TERMINATED", "ERROR") for t in trials)
        running = sum(t.status == "RUNNING" for t in trials)
        sys.stdout.write("\r\033[K" + progress_bar(finished, max(self.total, len(trials)), running,
                                                   time.monotonic() - self._started))
        sys.stdout.flush()
        self._drawn_at, self._bar_shown = time.monotonic(), True

    def _clear_bar(self) -> None:
        if self._bar_shown:
            sys.stdout.write("\r\033[K")
            self._bar_shown = False


def trial_line(trial_id: str, config: dict[str, Any], result: dict[str, Any], searched: Sequence[str],
               objective: str, epochs: int, error: str | None = None) -> str:
    """One finished trial: id, status, epochs and seconds, its searched settings, its metrics."""
    ran = result.get("training_iteration", 0)
    status = "ERROR" if error is not None else trial_status(None, result, epochs) if result else "stopped"
    head = f"trial {trial_id} {status}, {ran} epoch{'s' if ran != 1 else ''} in {result.get('time_total_s', 0.0):.1f} s"
    settings = " ".join(f"{key}={_short(config.get(key))}" for key in searched)
    metrics = " ".join(f"{key}={_short(result[key])}" for key in table_metrics([result], objective) if key in result)
    tail = f" ({error})" if error is not None else ""
    return f"{head}: {settings} | {metrics or 'no metrics'}{tail}"


def progress_bar(finished: int, total: int, running: int, elapsed_s: float) -> str:
    """``[#####---------------] 3/8 trials, 2 running, 1m05s``."""
    filled = round(BAR_WIDTH * finished / total) if total else 0
    minutes, seconds = divmod(int(elapsed_s), 60)
    return (f"[{'#' * filled}{'-' * (BAR_WIDTH - filled)}] {finished}/{total} trials, {running} running, "
            f"{minutes}m{seconds:02d}s")


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _is_terminal() -> bool:
    return sys.stdout.isatty()


@contextmanager
def quiet_console(quiet: bool = True) -> Iterator[None]:
    """While the block runs (``quiet``), Ray Tune's, Ray Train's and Optuna's loggers in this
    process print only errors, and Tune uses its classic console reporter (``RAY_AIR_NEW_OUTPUT=0``),
    which prints nothing at ``RunConfig(verbose=0)``: the default one prints the experiment's
    configuration box and paths even then (Ray 2.60)."""
    loggers = [logging.getLogger(name) for name in QUIETED_LOGGERS] if quiet else []
    levels = [one.level for one in loggers]
    output = os.environ.get(NEW_OUTPUT_ENV)
    for one in loggers:
        one.setLevel(logging.ERROR)
    if quiet:
        os.environ[NEW_OUTPUT_ENV] = "0"
    try:
        yield
    finally:
        for one, level in zip(loggers, levels):
            one.setLevel(level)
        if quiet:
            _restore_env(NEW_OUTPUT_ENV, output)


def _restore_env(name: str, value: str | None) -> None:
    if value is None:
        os.environ.pop(name, None)
    else:
        os.environ[name] = value
