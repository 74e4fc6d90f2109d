"""One peer's side of its manager connection: the ZeroMQ guide's Paranoid Pirate.

    Hello --> manager --> Welcome(heartbeat_s): from then on, beat as the manager says
    loop: poll until the next timer -> drain the socket -> act -> tick:
        a heartbeat every beat; silence for LIVENESS beats -> the peer decides
        (the node says Hello again, the object host exits, the client link fails)
    refused (Error UNKNOWN_PEER or REFUSED), or no answer for LIVENESS beats ->
        Hello again after a backoff, doubling from HELLO_BACKOFF_S to HELLO_BACKOFF_MAX_S,
        each wait drawn at random within +-HELLO_JITTER of it (no lockstep)

:class:`Liveness` is the timers alone (no I/O); :class:`PeerLoop` adds the
socket and serves the node daemon, its workers and the object host. The
client link, whose waiting threads poll the socket themselves, uses
:class:`Liveness` and :func:`connect`. Seconds are floats from
``time.monotonic()``; milliseconds only at ``poll()``. With
``dmp.wire.transport``, the only module of ``dmp`` that imports ``zmq``.
"""

from __future__ import annotations

import enum
import math
import random
import time
from collections.abc import Callable, Iterator
from typing import Any

import zmq
from zmq.backend import zmq_poll

from dmp import _config
from dmp.wire import protocol, transport

# Re-Hello after a refusal: soon (the manager may just have restarted, or our
# node joined a moment after us), then less and less often, so a peer the
# manager keeps refusing costs it one Hello per 5 s, like ZeroMQ's own
# reconnect (transport: 100 ms up to 5 s).
HELLO_BACKOFF_S = 0.1
HELLO_BACKOFF_MAX_S = 5.0
# Each wait is the doubling delay times a random factor in [1 - J, 1 + J]:
# thousands of workers refused together (a join storm) come back spread
# over a window instead of all at once.
HELLO_JITTER = 0.5

# poll() reports the socket as this; other sources by their fd.
SOCKET = -1
# ... and a failed CURVE handshake (see PeerLoop.watch_handshake) as this.
HANDSHAKE_FAILED = -2

_HANDSHAKE_EVENTS = int(
    zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_HANDSHAKE_FAILED_AUTH
)

Again = zmq.Again


class Tick(enum.Enum):
    """What :meth:`PeerLoop.tick` found."""

    NONE = "none"  # no beat was due
    BEAT = "beat"  # a beat passed: a Heartbeat went (or a Hello was scheduled)
    SILENT = "silent"  # a beat passed, and the manager has been silent for more than LIVENESS beats


def connect(
    address: str, key: bytes | None, *, identity: bytes | None = None, linger_ms: int | None = None
) -> transport.Channel:
    """A DEALER channel connected to ``address`` (nothing is sent yet).

    Raises:
        ValueError: the CURVE key files (``DMP_CURVE``) cannot be read.
    """
    sock = transport.make_socket(zmq.DEALER, identity=identity, server_key=transport.server_key_for(address))
    if linger_ms is not None:
        sock.setsockopt(zmq.LINGER, linger_ms)
    chan = transport.Channel(sock, key)
    sock.connect(address)
    return chan


def send_within(chan: transport.Channel, msg: protocol.Message, timeout_s: float) -> bool:
    """Send ``msg`` unless the socket takes nothing for ``timeout_s``; False then.

    A DEALER with no connection to send on (one a failed CURVE handshake
    dropped, say) would block a plain send forever.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            chan.send(msg, flags=transport.NOBLOCK)
            return True
        except zmq.Again:
            left = deadline - time.monotonic()
            if left <= 0 or not chan.sock.poll(int(left * 1000) + 1, zmq.POLLOUT):
                return False


def socket_fd(chan: transport.Channel) -> int:
    """The fd that becomes readable when ``chan`` may have messages (edge-triggered)."""
    return int(chan.sock.getsockopt(zmq.FD))


def wait_readable(chan: transport.Channel, timeout_s: float) -> bool:
    """Block until ``chan`` has a message or ``timeout_s`` seconds pass; True if it has."""
    return bool(chan.sock.poll(int(max(0.0, timeout_s) * 1000) + 1, zmq.POLLIN))


class Liveness:
    """A peer's heartbeat timers: when to beat, and whether the manager went silent."""

    __slots__ = ("beat", "last_heard", "liveness", "next_beat")

    def __init__(self, now: float, beat: float = _config.HEARTBEAT_S, liveness: int = _config.LIVENESS) -> None:
        self.beat = beat
        self.liveness = liveness
        self.last_heard = now
        self.next_beat = now + beat

    @property
    def window(self) -> float:
        """Seconds of silence after which the other side counts as gone."""
        return self.beat * self.liveness

    def heard(self, now: float) -> None:
        self.last_heard = now

    def follow(self, heartbeat_s: float, now: float) -> None:
        """Take the manager's beat (its Welcome); a nonsensical one keeps ours."""
        if isinstance(heartbeat_s, (int, float)) and math.isfinite(heartbeat_s) and heartbeat_s > 0:
            self.beat = float(heartbeat_s)
            self.next_beat = min(self.next_beat, now + self.beat)

    def due(self, now: float) -> bool:
        """True once a beat: a heartbeat is due (the next one is then scheduled)."""
        if now < self.next_beat:
            return False
        self.next_beat = now + self.beat
        return True

    def silent(self, now: float) -> bool:
        return now - self.last_heard > self.window


class Backoff:
    """Delays between repeated Hellos: doubling from ``first`` up to ``cap`` seconds
    (:attr:`delay`), each wait :meth:`next` returns drawn within ``+-jitter`` of it."""

    __slots__ = ("cap", "delay", "first", "jitter", "rng")

    def __init__(
        self, first: float = HELLO_BACKOFF_S, cap: float = HELLO_BACKOFF_MAX_S, jitter: float = HELLO_JITTER,
        rng: random.Random | None = None,
    ) -> None:
        if not 0.0 <= jitter < 1.0:
            raise ValueError(f"Backoff jitter must be in [0, 1), not {jitter!r}")
        self.first = first
        self.cap = cap
        self.jitter = jitter
        self.rng = rng if rng is not None else random.Random()
        self.delay = 0.0

    def next(self) -> float:
        """The next wait: the doubled delay, times a random factor in [1 - jitter, 1 + jitter]."""
        self.delay = self.first if not self.delay else min(self.cap, self.delay * 2)
        if not self.jitter:
            return self.delay
        return self.delay * self.rng.uniform(1.0 - self.jitter, 1.0 + self.jitter)

    def reset(self) -> None:
        self.delay = 0.0


class PeerLoop:
    """A DEALER to the manager with heartbeats, liveness and re-Hello; the owner drives it.

    ``heartbeat``: send a Heartbeat each beat once welcomed. ``rehello``: say
    Hello again (with backoff) when refused, or when our Hello went unanswered
    for more than LIVENESS beats (not sooner: a new Hello voids the handshake
    the manager may be about to answer, so a busy manager would never catch up).
    ``expects_beats``: the manager heartbeats us, so :meth:`tick` reports
    its silence (workers are not heartbeated: their node answers for them).
    ``beat_every``: beat once every this many of the manager's beats (a
    node's idle workers: ``_config.WORKER_BEATS``).
    Not thread-safe: one owner thread, as for a Channel.
    """

    def __init__(
        self, address: str, key: bytes | None, hello: protocol.Hello, *, identity: bytes | None = None,
        heartbeat: bool = True, rehello: bool = True, expects_beats: bool = True,
        on_refused: Callable[[transport.Refused], None] | None = None, beat_every: int = 1,
    ) -> None:
        self.hello = hello
        self.beat_every = max(1, beat_every)
        self.heartbeat = heartbeat
        self.rehello = rehello
        self.expects_beats = expects_beats
        self.on_refused = on_refused
        self.chan = connect(address, key, identity=identity)
        self.poller = zmq.Poller()
        self.poller.register(self.chan.sock, zmq.POLLIN)
        self.live = Liveness(time.monotonic())
        self.backoff = Backoff()
        self.hello_at: float | None = None  # a re-Hello is scheduled for then
        self.joined = False  # welcomed, and not refused since
        self._monitor: zmq.Socket[Any] | None = None

    def say_hello(self) -> None:
        """Introduce ourselves (again); silence is counted from now."""
        now = time.monotonic()
        self.hello_at = None
        self.live.heard(now)
        if not send_within(self.chan, self.hello, 0.0):  # no connection yet: ask again later
            self.hello_at = now + self.backoff.next()

    def send(self, msg: protocol.Message, frames: Any = ()) -> None:
        self.chan.send(msg, frames)

    def watch(self, fd: int) -> None:
        self.poller.register(fd, zmq.POLLIN)

    def watch_handshake(self) -> None:
        """With CURVE on, report a failed handshake from poll() as :data:`HANDSHAKE_FAILED`
        (the manager at our address does not hold the server key we pinned)."""
        if transport.curve_enabled() and self._monitor is None:
            self._monitor = self.chan.sock.get_monitor_socket(_HANDSHAKE_EVENTS)
            self.poller.register(self._monitor, zmq.POLLIN)

    def poll(self, limit: float | None = None) -> set[int]:
        """Wait until a source is ready, the next timer is due, or ``limit`` seconds.

        Returns the ready fds, the socket as :data:`SOCKET`.
        """
        wake_at = self.live.next_beat if self.hello_at is None else min(self.live.next_beat, self.hello_at)
        wait = wake_at - time.monotonic()
        if limit is not None and limit < wait:
            wait = limit
        found: set[int] = set()
        for fd, _ in zmq_poll(self.poller.sockets, int(max(0.0, wait) * 1000) + 1):  # Poller.poll wraps just this
            if fd is self.chan.sock:
                found.add(SOCKET)
            elif fd is self._monitor:
                self._monitor.recv_multipart()
                found.add(HANDSHAKE_FAILED)
            else:
                found.add(fd)
        return found

    def receive(self) -> tuple[protocol.Message, list[Any]] | None:
        """One waiting message, or None (nothing waiting, or it was refused)."""
        try:
            _, msg, frames = self.chan.recv(transport.NOBLOCK)
        except zmq.Again:
            return None
        except transport.Refused as refused:
            if self.on_refused is not None:
                self.on_refused(refused)
            return None
        now = time.monotonic()
        self.live.heard(now)
        if isinstance(msg, protocol.Welcome):
            self.live.follow(msg.heartbeat_s * self.beat_every, now)
            self.joined = True
            self.backoff.reset()
            self.hello_at = None
        elif isinstance(msg, protocol.Error) and msg.code in (protocol.ErrorCode.UNKNOWN_PEER, protocol.ErrorCode.REFUSED):
            self.joined = False
            if self.rehello and self.hello_at is None:
                self.hello_at = now + self.backoff.next()
        return msg, frames

    def messages(self) -> Iterator[tuple[protocol.Message, list[Any]]]:
        """Every message waiting now, in order (refused ones left out)."""
        while self.chan.readable():
            got = self.receive()
            if got is not None:
                yield got

    def tick(self) -> Tick:
        """Run due timers: the re-Hello, the heartbeat; say whether a beat passed.

        Silence is judged once a beat, and only with ``expects_beats``; the
        owner decides what it means (see :meth:`say_hello`).
        """
        now = time.monotonic()
        if self.hello_at is not None and now >= self.hello_at:
            self.say_hello()
        if not self.live.due(now):
            return Tick.NONE
        if self.expects_beats and self.live.silent(now):
            return Tick.SILENT
        if self.joined or not self.rehello:
            if self.heartbeat:
                self.chan.send(protocol.Heartbeat())
        elif self.hello_at is None and self.live.silent(now):
            self.hello_at = now + self.backoff.next()  # unanswered for LIVENESS beats: ask again
        return Tick.BEAT

    def close(self) -> None:
        if self._monitor is not None:
            self.chan.sock.disable_monitor()
            self._monitor.close(0)
            self._monitor = None
        self.chan.close()
