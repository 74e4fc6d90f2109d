"""What a scheduler's commands say, as comparable data (the twin-scheduler tests)."""

from __future__ import annotations

from typing import Any

from dmp_server.scheduler import Command, Kill, Send


def shape(cmds: list[Command]) -> list[Any]:
    """Each command as a tuple: a Kill's worker, spared tasks and signal; a Send's
    peer, message type, fields and frames' bytes."""
    out: list[Any] = []
    for c in cmds:
        if isinstance(c, Kill):
            out.append(("kill", c.worker, list(c.spare), c.signum))
        else:
            assert isinstance(c, Send)
            out.append(("send", c.to, type(c.msg).__name__, repr(c.msg), [bytes(f) for f in c.frames]))
    return out
