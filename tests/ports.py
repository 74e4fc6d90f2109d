"""A free loopback port for the transport-floor script (tests/bench/floor.py) only.

Tests never use it: picking a port and binding it later races under pytest-xdist.
Daemons bind port 0 and report the port (tests/daemons.py); sockets a test binds
itself bind ``tcp://127.0.0.1:0`` and read ``zmq.LAST_ENDPOINT``.
"""

from __future__ import annotations

import socket


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
