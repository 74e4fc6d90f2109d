"""Cluster mode's client link: one DEALER to the manager, driven by whoever waits.

    caller thread --post()--> [io lock] DEALER.send, then receive into the inbox
    caller thread waiting on a result --wait()--> Turns: leads (polls the
        socket's fd itself, receives, dispatches; its own reply wakes no
        other thread) or follows (blocks on its own event)
    no caller waiting --> the link's thread takes the steps instead
    every beat (the manager's Welcome.heartbeat_s) the link's thread sends a
    Heartbeat; silence for LIVENESS beats (dmp.wire.peer.Liveness), or a Bye,
    fails every waiting job with ManagerUnavailableError (never a hang)

Turn-taking is dmp.client.turns.Turns, the same as local mode's: a step is
``_poll`` (the socket's fd and a wake-up fd) then ``_pump`` (receive,
dispatch). Messages are dispatched in arrival order on the turn only, and
outside ``_io``, so a slow callback never blocks a send; a post() that
received messages while another thread holds the turn wakes that thread to
dispatch them. The socket is only ever touched under ``_io``, held for
single non-blocking operations, never while waiting. Whoever touches the
socket drains it afterwards: ZeroMQ's fd only signals again once someone has
seen the socket empty.
"""

from __future__ import annotations

import collections
import os
import select
import socket
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any

from dmp import _config
from dmp.client.sigint import critical
from dmp.client.turns import Turns, Wakeup
from dmp.errors import AuthenticationError, ManagerUnavailableError, MessageTooLargeError
from dmp.wire import peer, protocol, transport

# What a step's poll saw (``_poll`` -> ``_pump``): something to look at, and
# whether the socket's own fd was ready (then a message has most likely come).
LOOK = 1
SIGNALLED = 2


class RemoteLink:
    """Connects, says Hello, and waits for Welcome before returning.

    Raises:
        ManagerUnavailableError: no Welcome within ``timeout`` seconds.
        AuthenticationError: the manager refused our signature.
    """

    def __init__(
        self, session: Any, address: str, key: bytes | None, timeout: float = _config.CONNECT_TIMEOUT_S,
        *, max_workers: int = 0,
    ) -> None:
        self.session = session
        # Its count of outcomes due (a pool's Session); None (a proxy's Connection): always due.
        self._credit = getattr(session, "credit", None)
        self.max_workers = max_workers
        self.address = address
        self.key = key
        self.welcome: protocol.Welcome | None = None
        self._io = threading.Lock()  # the socket and channel
        self._inbox: collections.deque[tuple[protocol.Message, list[Any]]] = collections.deque()
        self._wake = Wakeup(self)  # whoever holds the turn
        self._spin_s = _config.spin_seconds()
        self._turns = Turns(self._poll, self._pump, self._wake.poke, reenter=True, first_poll=self._lead_poll)
        self._stop = False
        self._dead = False  # the socket is closed or about to be: nobody may use it
        self._failure: BaseException | None = None
        self._ready = threading.Event()
        self._live = peer.Liveness(time.monotonic())  # the beat is the manager's, from its Welcome
        transport.curve_enabled()  # bad DMP_CURVE keys: ValueError here, not in our thread
        self._chan = peer.connect(address, key)
        self._fd = peer.socket_fd(self._chan)
        self._poller = select.poll()  # polled by the turn's holder only
        self._poller.register(self._fd, select.POLLIN)
        self._poller.register(self._wake.fd, select.POLLIN)
        hello = protocol.Hello(protocol.Role.CLIENT, f"client-{os.getpid()}", socket.gethostname(), os.getpid(), max_workers=max_workers)
        deadline = time.monotonic() + timeout
        with self._io:
            sent = peer.send_within(self._chan, hello, timeout)
        if not sent:
            self._chan.sock.close(linger=0)
            raise ManagerUnavailableError(f"no dmp manager took a connection at {address} within {timeout:g} s")
        self._thread = threading.Thread(target=self._run, name="dmp-link", daemon=True)
        self._thread.start()
        if not self._ready.wait(max(0.0, deadline - time.monotonic())):
            self._stop = True
            self._turns.stop()
            # Let the thread close the socket: a socket left open at exit can block the
            # interpreter's teardown of the ZeroMQ context forever.
            self._thread.join(5.0)
            raise ManagerUnavailableError(f"no dmp manager answered at {address} within {timeout:g} s")
        if self._failure is not None:
            raise self._failure

    # --- any thread ----------------------------------------------------------------------

    def post(self, msg: protocol.Message, frames: list[Any]) -> None:
        """Send a message now, from the calling thread.

        Raises:
            MessageTooLargeError: its payload exceeds the manager's limit.
        """
        limit = self.welcome.max_message if self.welcome is not None else 0
        if limit and frames:
            if len(frames) == 1 and type(frames[0]) is bytes:  # an apply's task: no generator
                size = len(frames[0])
            else:
                size = sum(f.nbytes if isinstance(f, memoryview) else len(f) for f in frames)
            if size > limit:
                raise MessageTooLargeError(
                    f"a {type(msg).__name__} of {size} bytes exceeds the manager's limit of {limit} "
                    "bytes (dmp manager --max-message-mb)"
                )
        with critical:  # a Ctrl-C waits until what was received is delivered
            with self._io:
                if self._dead:
                    return  # the session fails every job; nothing to send it on
                self._chan.send(msg, frames)  # (it marks the channel used: see _poll)
                got = self._receive()
            if got and not self._turns.run_now(self._dispatch_inbox):
                self._wake.poke()  # the turn's holder dispatches it (it may be a leader's reply)

    def wait(self, done: Callable[[], bool], block: Callable[[float | None], Any], timeout: float | None) -> None:
        """Return once ``done()`` or after ``timeout`` seconds, serving the socket meanwhile.

        ``block(timeout)`` is how this caller waits when another thread
        leads: on the event that the dispatch of its result sets. A callback
        waiting on another result serves the socket itself (no deadlock).
        """
        self._turns.wait(done, block, timeout)

    def close(self) -> None:
        if not self._stop:
            self.post(protocol.Bye("client closing"), [])
            self._stop = True
            self._turns.stop()
            # A callback on the turn cannot wait for the link's thread: it closes once the callback returns.
            if threading.current_thread() is not self._thread and not self._turns.runs_here():
                self._thread.join(5.0)

    # --- the socket ------------------------------------------------------------------------

    def _receive(self, signalled: bool = False, one: bool = False) -> bool:
        """Under ``_io``: move everything readable into the inbox; True if anything came.

        ``signalled``: the poll just saw the socket's fd, so a message has
        most likely come: the first is received without asking readable()
        first (an option read costs ~9k instructions; a recv that finds
        nothing raises Again and is the same look at the socket).
        Afterwards the socket was seen empty (``Channel.used`` cleared), so its
        fd will signal the next arrival: a leader may poll it without looking first.
        ``one``: stop after the first message, the socket not seen empty
        (``Channel.used`` stays set: whoever polls next looks first).
        """
        chan = self._chan
        got = False
        while signalled or chan.readable():
            signalled = False
            try:
                _, msg, frames = chan.recv(transport.NOBLOCK)
            except peer.Again:
                break
            except transport.Refused as refused:
                error = refused.error
                self._fail(AuthenticationError(str(error)) if isinstance(error, AuthenticationError) else error)
                break
            got = True
            self._inbox.append((msg, frames))
            if one:
                self._live.heard(time.monotonic())
                return True
        chan.used = False
        if got:
            self._live.heard(time.monotonic())
        return got

    def _poll(self, limit: float | None) -> int:
        """On the turn: wait up to ``limit`` for the socket or a wake-up; 0 if nothing came,
        else LOOK, with SIGNALLED if the socket's fd was among the ready."""
        if self._chan.used:
            return LOOK  # someone used the socket since it was seen empty: look before sleeping
        return self._seen(self._poller.poll(None if limit is None else limit * 1000))

    def _lead_poll(self, limit: float | None) -> int:
        """A waiting caller's first poll: when it waits on the one outcome due (an
        apply's ``get()``), it looks without sleeping for up to ``DMP_SPIN_US``
        first. Its core then does not go idle before the reply: on a VM, waking
        an idle core costs tens of µs, and a round trip crosses four of them
        (docs/performance.md). Any other wait sleeps at once."""
        credit = self._credit
        if not self._spin_s or self._chan.used or credit is None or credit.outstanding != 1:
            return self._poll(limit)
        clock = time.perf_counter
        start = clock()
        end = start + (self._spin_s if limit is None else min(self._spin_s, limit))
        poll, yield_cpu = self._poller.poll, os.sched_yield
        while not (ready := poll(0)):
            if clock() >= end:
                return self._poll(None if limit is None else max(0.0, limit - (clock() - start)))
            yield_cpu()  # anything else runnable on this core goes first
        return self._seen(ready)

    def _seen(self, ready: list[tuple[int, int]]) -> int:
        seen = 0
        wake_fd = self._wake.fd
        for fd, _ in ready:
            if fd == wake_fd:
                self._wake.clear()
                seen |= LOOK
            else:
                seen |= LOOK | SIGNALLED
        return seen

    def _pump(self, ready: int = LOOK) -> None:
        """On the turn: receive what is readable and dispatch the inbox (a signalled
        socket's first message first)."""
        if not ready:
            return
        signalled = bool(ready & SIGNALLED)
        with self._io:
            if self._dead:
                return
            took_one = self._receive(signalled, one=signalled) and signalled
        self._dispatch_inbox()
        if took_one and (self._credit is None or self._credit.outstanding):
            # More outcomes are due: look for the rest now, as always. With none due (an
            # apply's result just delivered) the look waits: the caller returns first, and
            # the next post() or poll looks (the socket stays marked used).
            with self._io:
                if self._dead:
                    return
                self._receive()
            self._dispatch_inbox()

    def _dispatch_inbox(self) -> None:
        """On the turn: hand inbox messages on in arrival order (a callback's own wait may go on)."""
        inbox = self._inbox
        while inbox:
            msg, frames = inbox.popleft()
            try:
                failure = self._handle(msg, frames)
            except Exception:  # a user callback raised: report it, keep serving
                traceback.print_exc()
                failure = None
            if failure is not None:
                self._fail(failure)

    def _fail(self, failure: BaseException) -> None:
        if self._failure is None:
            self._failure = failure
        self._turns.stop()  # leaders let go; the link's thread ends the session

    # --- the link's thread -------------------------------------------------------------------

    def _run(self) -> None:
        live = self._live
        try:
            while not self._stop and self._failure is None:
                self._turns.serve(max(0.0, live.next_beat - time.monotonic()))  # a step, unless a caller leads
                now = time.monotonic()
                if live.due(now):
                    self.post(protocol.Heartbeat(), [])
                    if live.silent(now):
                        self._fail(ManagerUnavailableError(f"the dmp manager at {self.address} stopped answering"))
        finally:
            self._turns.close(self._close_socket)
            failure = self._failure
            if failure is not None and not self._ready.is_set():
                self._ready.set()
            self.session.fail_all(failure or ManagerUnavailableError("the session was closed"))

    def _close_socket(self) -> None:
        self._dead = True
        with self._io:
            self._chan.close()

    def _handle(self, msg: protocol.Message, frames: list[Any]) -> BaseException | None:
        if isinstance(msg, protocol.Welcome):
            self.welcome = msg
            self._live.follow(msg.heartbeat_s, time.monotonic())
            self._ready.set()
        elif isinstance(msg, protocol.Bye):
            return ManagerUnavailableError(f"the dmp manager at {self.address} went away: {msg.reason}")
        elif isinstance(msg, protocol.Error) and msg.code == protocol.ErrorCode.AUTH:
            return AuthenticationError(f"the dmp manager at {self.address} refused us: {msg.text}")
        elif isinstance(msg, protocol.Error) and msg.code == protocol.ErrorCode.REFUSED and not self._ready.is_set():
            return ManagerUnavailableError(f"the dmp manager at {self.address} refused this client: {msg.text}")
        elif isinstance(msg, protocol.Error) and msg.code == protocol.ErrorCode.VERSION:
            return ManagerUnavailableError(f"the dmp manager at {self.address}: {msg.text}")
        elif not isinstance(msg, protocol.Heartbeat):
            self.session.on_message(msg, frames)
        return None
