"""Shared objects hosted by the manager (Queue, Lock, dict, ...): the ObjectServer.

The reactor hands it every shared-object message and carries out the
commands it returns; blocking calls are parked requests with deadlines,
woken by the change they wait for. (Placeholder: the real server is being
built; today it refuses every object message.)
"""

from __future__ import annotations

from typing import Any

from dmp import protocol
from dmp_server.scheduler import Command, Send


class ObjectServer:
    def handle(self, peer: str, msg: protocol.Message, frames: list[Any], now: float) -> list[Command]:
        """A shared-object message from client ``peer``."""
        return [Send(peer, protocol.Error(protocol.ErrorCode.REFUSED, "shared objects are not available yet"))]

    def tick(self, now: float) -> list[Command]:
        """Expire parked requests whose deadline passed."""
        return []

    def next_deadline(self) -> float | None:
        """The earliest parked deadline (monotonic seconds), if any."""
        return None

    def peer_gone(self, peer: str) -> list[Command]:
        """Client ``peer`` left or died: release its locks and references."""
        return []


# Message types the reactor routes here (filled as they are defined).
MESSAGES: tuple[type[protocol.Message], ...] = ()
