"""The bound on trials that wait PENDING while nothing runs (a fake clock: no test waits on time)."""
from __future__ import annotations

from dataclasses import dataclass

from hybrid_hpo.tune.pending import PendingWatchdog
from hybrid_hpo.tune.spec import validate_spec
from hybrid_hpo.tune.plan import SweepPlan
from hybrid_hpo.tune.sweep import _run_config


@dataclass
class FakeTrial:
    trial_id: str
    status: str


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_pending_with_nothing_running_past_the_bound_stops_the_sweep_with_a_message():
    clock = FakeClock()
    watchdog = PendingWatchdog(bound_s=30, clock=clock)
    trials = [FakeTrial("a", "TERMINATED"), FakeTrial("b", "PENDING")]
    watchdog.on_step_end(1, trials)
    clock.now += 30  # exactly the bound: not yet
    watchdog.on_step_end(2, trials)
    assert watchdog.message is None and not watchdog.stopper.stop_all()
    clock.now += 1
    watchdog.on_step_end(3, trials)
    assert watchdog.stopper.stop_all()
    assert watchdog.message.startswith("trial b waited PENDING for more than 30 s with no trial running")
    assert "raise pending_timeout_s" in watchdog.message


def test_pending_while_another_trial_runs_is_normal_and_resets_the_bound():
    clock = FakeClock()
    watchdog = PendingWatchdog(bound_s=30, clock=clock)
    waiting = [FakeTrial("a", "RUNNING"), FakeTrial("b", "PENDING")]
    for _ in range(10):  # trial b waits 1000 s behind a running trial: no alarm
        watchdog.on_step_end(0, waiting)
        clock.now += 100
    assert watchdog.message is None
    idle = [FakeTrial("a", "TERMINATED"), FakeTrial("b", "PENDING")]
    watchdog.on_step_end(0, idle)  # the idle wait starts now, not when b was created
    clock.now += 20
    watchdog.on_step_end(0, idle)
    assert watchdog.message is None and not watchdog.stopper.stop_all()


def test_the_sweep_runs_tune_with_the_watchdog_and_the_specs_bound(tmp_path):
    spec = validate_spec({"search": {"inner_lr": {"type": "loguniform", "low": 0.01, "high": 0.1}},
                          "pending_timeout_s": 0.001})
    watchdog = PendingWatchdog(spec.pending_timeout_s)
    run_config = _run_config(spec, SweepPlan(tmp_path, None, "s", 2, False), 0, watchdog)
    assert run_config.callbacks == [watchdog] and run_config.stop is watchdog.stopper
    assert watchdog.bound_s == 0.001
