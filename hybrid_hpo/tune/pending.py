"""A bound on waiting: stop a sweep whose trials wait PENDING while nothing runs.

A trial stays PENDING while the cluster lacks the resources it asks for. While other trials run
that is normal (they free resources when they end); while *no* trial runs it means the cluster
cannot place it at all (a node gone, resources taken by other jobs, a custom resource nobody
has), and Ray would wait forever without a word. :class:`PendingWatchdog` watches Tune's
controller steps; once trials have waited PENDING with none RUNNING for longer than ``bound_s``,
it logs one line naming the trial and what it asks for, and its :attr:`stopper` ends the sweep
(which then counts as interrupted: ``--resume`` continues it once resources are there).
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

from ray import tune
from ray.tune.stopper import Stopper

logger = logging.getLogger(__name__)


class _StopAll(Stopper):
    """Tune's experiment-level stop, raised by the watchdog."""

    def __init__(self) -> None:
        self.stop = False

    def __call__(self, trial_id: str, result: dict) -> bool:
        return False

    def stop_all(self) -> bool:
        return self.stop


class PendingWatchdog(tune.Callback):
    """Stops the sweep after ``bound_s`` seconds of trials PENDING with none RUNNING.

    Pass ``watchdog`` in ``RunConfig.callbacks`` and ``watchdog.stopper`` as ``RunConfig.stop``.
    ``clock`` (seconds, monotonic) is injectable for tests. :attr:`message` holds the one line once
    it fired (None before).
    """

    def __init__(self, bound_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.bound_s = bound_s
        self.clock = clock
        self.stopper = _StopAll()
        self.message: str | None = None
        self._idle_since: float | None = None

    def on_step_end(self, iteration: int, trials: Sequence[Any], **info: Any) -> None:
        pending = [t for t in trials if t.status == "PENDING"]
        if not pending or any(t.status == "RUNNING" for t in trials):
            self._idle_since = None
            return
        now = self.clock()
        if self._idle_since is None:
            self._idle_since = now
        if self.message is None and now - self._idle_since > self.bound_s:
            trial = pending[0]
            asks = getattr(trial, "placement_group_factory", None)
            asks = getattr(asks, "required_resources", None) or "its resources"
            self.message = (f"trial {trial.trial_id} waited PENDING for more than {self.bound_s:g} s with no trial "
                            f"running: the cluster cannot place {asks}; check resources (and the cluster's "
                            "free CPUs/GPUs), or raise pending_timeout_s")
            logger.error(self.message)
            self.stopper.stop = True
