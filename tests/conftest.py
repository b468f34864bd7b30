"""Shared fixtures. Tests that start Ray must run in a loopback-only network namespace, as README's
test command does (``unshare -rn bash -c 'ip link set lo up && exec pytest -q'``); they request
``ray_session`` and share its one Ray instance."""
from __future__ import annotations

import os

import pytest

# The test run lives in its own loopback-only network namespace (README's test command), where Ray's
# default token authentication has no token to share: disable it for tests only, and send no usage stats.
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray for the whole test session: 2 CPUs, no dashboard, bound to 127.0.0.1.

    ``hybrid-hpo sweep`` run in-process sees Ray running, uses it, and leaves it running.
    """
    import ray

    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False,
                 configure_logging=False)
    yield ray
    if started:
        ray.shutdown()
