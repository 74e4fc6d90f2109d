"""Starts the daemon's object host: ``python -m dmp.node.hostmain ENDPOINT PUBLIC`` beside the reactor.

    ObjectServer --launcher.start()--> Popen(dmp.node.hostmain, stdin=pipe)
        ENDPOINT: the daemon's private ipc:// endpoint for its host (or its
        own address); PUBLIC: its address as clients know it
        the key goes down the pipe (never argv or environ); the pipe stays open
        as the host's lifeline: EOF means the daemon is gone, so the host exits
    host --Hello, HostReady--> reactor; ObjectServer polls exitcode() for a crash

The host runs user code and unpickles; the daemon only launches it.
"""

from __future__ import annotations

import subprocess
import sys


def _reachable(endpoint: str) -> str:
    """A wildcard bind is reached on loopback."""
    return endpoint.replace("://0.0.0.0:", "://127.0.0.1:").replace("://[::]:", "://[::1]:")


class SubprocessLauncher:
    """``endpoint``: where the host connects; ``public``: the daemon's address as clients know it
    (proxies nested in host objects carry it)."""

    def __init__(self, endpoint: str, key: bytes | None, public: str = "") -> None:
        self.endpoint = _reachable(endpoint)
        self.public = _reachable(public or endpoint)
        self.key = key
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "dmp.node.hostmain", self.endpoint, self.public],
            stdin=subprocess.PIPE,
            close_fds=True,
        )
        assert self.proc.stdin is not None
        self.proc.stdin.write((self.key or b"").hex().encode() + b"\n")
        self.proc.stdin.flush()

    def exitcode(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.stdin is not None:
            proc.stdin.close()  # the lifeline: the host exits by itself
        try:
            proc.wait(2.0)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(2.0)
