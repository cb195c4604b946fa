"""A free TCP port on loopback, for the local servers sleepsound starts (a Prefect API, a monitor
under benchmark) and for the tests' own."""

from __future__ import annotations

import socket


def free_port(host: str = "127.0.0.1") -> int:
    """A port the system just handed out on ``host``; another process may still take it before the
    caller binds it, so callers that can should retry on a bind error."""
    with socket.socket() as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])
