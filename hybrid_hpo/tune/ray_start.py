"""Ray for a sweep: start a local Ray on 127.0.0.1, or join a cluster at ``--address`` after
checking, with a bound, that a Ray GCS answers there (``ray.init`` alone would retry for minutes,
or hang on a listener that is not Ray)."""
from __future__ import annotations

import logging
import os
import re
import socket

from hybrid_hpo.errors import ConfigError


def init_ray(address: str | None, quiet: bool = False) -> None:
    """Join the Ray cluster at ``address`` (ConfigError when that fails) or start a local Ray on
    127.0.0.1 with every CPU of this machine and no dashboard; ``quiet``: Ray's driver logger
    prints warnings and errors only (no "Started a local Ray instance")."""
    import ray

    from hybrid_hpo.tune.ray_token import make_token_private

    level = logging.WARNING if quiet else logging.INFO
    if address:
        resolved = resolve_address(address)
        if resolved is not None:  # "auto" as found by preflight, never Ray's own "any local Ray" search
            host, port = resolved
            address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        try:
            ray.init(address=address, log_to_driver=True, logging_level=level)
        except (ConnectionError, RuntimeError, ValueError) as error:
            reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise ConfigError(f"--address: cannot join Ray at {address!r} ({reason}); check the address "
                              "and that this machine runs the cluster's Ray and Python versions") from None
    else:
        make_token_private()
        ray.init(num_cpus=os.cpu_count() or 1, include_dashboard=False, _node_ip_address="127.0.0.1",
                 logging_level=level)


_HTTP2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0])  # + empty SETTINGS


def resolve_address(address: str) -> tuple[str, int] | None:
    """(host, port) of ``--address``: HOST:PORT, [IPv6]:PORT, or ``auto`` (RAY_ADDRESS, else the
    cluster ``ray start`` last started on this machine; never "any Ray process found", which could
    be another user's). None for a Ray Client ``ray://`` address (left to ray.init)."""
    if address.startswith("ray://"):
        return None
    if address == "auto":
        from ray._private.utils import read_ray_address

        found = os.environ.get("RAY_ADDRESS") or read_ray_address(None)
        if not found or found == "auto":
            raise ConfigError("--address: auto found no Ray cluster on this machine (no RAY_ADDRESS and no cluster "
                              "started with ray start); start one (ray start --head) or pass HOST:PORT")
        address = found
    match = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\]:(\d+)|([\w.\-]+):(\d+)", address)
    if match is None:
        raise ConfigError(f"--address: {address!r} is not HOST:PORT; e.g. 10.0.0.1:6379, [::1]:6379 or auto")
    host, port = (match.group(1), match.group(2)) if match.group(1) else (match.group(3), match.group(4))
    return host, int(port)


def probe_address(address: str, timeout_s: float = 5.0) -> None:
    """Fail fast, with a bound, unless a Ray GCS answers at ``address`` (ray.init would retry for
    minutes, or hang on a listener that is not Ray): connect, send the HTTP/2 preface, and expect
    the gRPC server's SETTINGS frame back within ``timeout_s``."""
    resolved = resolve_address(address)
    if resolved is None:
        return
    host, port = resolved
    try:
        with socket.create_connection((host, port), timeout=timeout_s) as connection:
            connection.sendall(_HTTP2_PREFACE)
            reply = connection.recv(9)
    except socket.timeout:
        raise ConfigError(f"--address: {address} accepts connections but gives no Ray (gRPC) answer within "
                          f"{timeout_s:g} s; it is not a Ray head node: check the port (ray start --head "
                          "prints it)") from None
    except OSError as error:
        raise ConfigError(f"--address: nothing answers at {address} ({error.strerror or error}); "
                          "start Ray there (ray start --head) or fix the address") from None
    if len(reply) < 9 or reply[3] != 4:  # a frame header (length 3 bytes, type 1 byte = SETTINGS)
        raise ConfigError(f"--address: {address} answers, but not as a Ray GCS (gRPC); it is not a Ray head "
                          "node: check the port (ray start --head prints it)")

