"""Cluster mode's client link: one DEALER to the manager, driven by whoever waits.

    caller thread --post()--> [io lock] DEALER.send          (no hand-off)
    caller thread waiting on a result --wait()--> leads: polls the socket's
        fd itself, receives, dispatches; its own reply wakes no other thread
    no caller waiting --> the link's thread polls and dispatches instead
    every beat (the manager's Welcome.heartbeat_s) the link's thread sends a
    Heartbeat; silence for LIVENESS beats (dmp.wire.peer.Liveness), or a Bye,
    fails every waiting job with ManagerUnavailableError (never a hang)

Leader/follower: one waiting thread at a time leads (``_lead``); others
follow, blocking on their own event, and the leader wakes the link's thread
when it leaves so followers are served at once. The socket is only ever
touched under ``_io``, held for single non-blocking operations, never while
waiting. Messages are dispatched in arrival order by one thread at a time
(``_dispatch``) and outside ``_io``, so a slow callback never blocks a send.
Whoever touches the socket drains it afterwards: ZeroMQ's fd only signals
again once someone has seen the socket empty.
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
from dmp.client.sigint import critical, interruptible
from dmp.client.turns import Followers, Wakeup
from dmp.errors import AuthenticationError, ManagerUnavailableError, MessageTooLargeError
from dmp.wire import peer, protocol, transport

# While a caller leads, the link's thread checks back this often (it also
# sends heartbeats); a leader polls in slices of this, checking for failure.
STEP_BACK_S = 0.01
LEAD_SLICE_S = 0.1


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
        self.max_workers = max_workers
        self.address = address
        self.key = key
        self.welcome: protocol.Welcome | None = None
        self._io = threading.Lock()  # the socket and channel
        self._lead = threading.Lock()  # a caller polling the socket
        self._dispatch = threading.RLock()  # callbacks may wait on other results
        self._inbox: collections.deque[tuple[protocol.Message, list[Any]]] = collections.deque()
        self._followers = Followers()
        self._wake = Wakeup(self)  # the link's thread
        self._nudge = Wakeup(self)  # the leader
        self._leader = 0  # thread ident of the leader
        self._dispatcher = 0  # thread ident of the one dispatching
        self._stop = False
        self._dead = False  # the socket is closed or about to be: nobody may lead
        self._clean = False  # the socket was seen empty since anyone last used it
        self._failure: BaseException | None = None
        self._ready = threading.Event()
        self._live = peer.Liveness(time.monotonic())  # the beat is the manager's, from its Welcome
        transport.curve_enabled()  # bad DMP_CURVE keys: ValueError here, not in our thread
        self._chan = peer.connect(address, key)
        self._fd = peer.socket_fd(self._chan)
        hello = protocol.Hello(protocol.Role.CLIENT, f"client-{os.getpid()}", socket.gethostname(), os.getpid(), max_workers)
        with self._io:
            self._chan.send(hello)
        self._thread = threading.Thread(target=self._run, name="dmp-link", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            self._stop = True
            self._wake.poke()
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
                self._clean = False
                self._chan.send(msg, frames)
                got = self._receive()
            if got:
                self._delivered()

    def wait(self, done: Callable[[], bool], block: Callable[[float | None], Any], timeout: float | None) -> None:
        """Return once ``done()`` or after ``timeout`` seconds, serving the socket meanwhile.

        ``block(timeout)`` is how this caller waits when another thread
        leads: on the event that the dispatch of its result sets.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        me = threading.get_ident()
        if me in (self._leader, self._dispatcher):
            # A callback waiting on another result: nobody else can dispatch
            # while it runs, so it serves the socket itself (no deadlock).
            self._lead_until(done, deadline)
            return
        while not done():
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return
            with critical:  # Ctrl-C only while polling: never with _lead taken and not given back
                if self._dead or not self._lead.acquire(blocking=False):
                    self._followers.wait(block, remaining)
                    return
                self._leader = me
                try:
                    self._lead_until(done, deadline)
                finally:
                    self._leader = 0
                    self._lead.release()
                    if self._followers.count:
                        self._wake.poke()  # the link's thread takes over for them now

    def close(self) -> None:
        if not self._stop:
            self.post(protocol.Bye("client closing"), [])
            self._stop = True
            self._wake.poke()
            if threading.current_thread() is not self._thread:
                self._thread.join(5.0)

    # --- the socket ------------------------------------------------------------------------

    def _receive(self) -> bool:
        """Under ``_io``: move everything readable into the inbox; True if anything came.

        Afterwards the socket was seen empty (``_clean``), so its fd will
        signal the next arrival: a leader may poll it without looking first.
        """
        chan = self._chan
        got = False
        while chan.readable():
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
        self._clean = True
        if got:
            self._live.heard(time.monotonic())
        return got

    def _pump(self) -> None:
        with critical:  # a Ctrl-C waits until what was received is delivered
            with self._io:
                if self._dead:
                    return
                got = self._receive()
            if got:
                self._delivered()

    def _delivered(self) -> None:
        """Dispatch what was received; a leader asleep on the socket learns it may be done."""
        self._dispatch_inbox()
        if self._leader and self._leader != threading.get_ident():
            self._nudge.poke()  # we may have taken its reply: the socket will not wake it

    def _dispatch_inbox(self) -> None:
        """Hand inbox messages on in arrival order, one dispatching thread at a time."""
        inbox = self._inbox
        while inbox:
            if not self._dispatch.acquire(blocking=False):
                return  # the holder re-checks the inbox after letting go
            outer, self._dispatcher = self._dispatcher, threading.get_ident()
            try:
                while inbox:
                    msg, frames = inbox.popleft()
                    try:
                        failure = self._handle(msg, frames)
                    except Exception:  # a user callback raised: report it, keep serving
                        traceback.print_exc()
                        failure = None
                    if failure is not None:
                        self._fail(failure)
            finally:
                self._dispatcher = outer
                self._dispatch.release()

    def _fail(self, failure: BaseException) -> None:
        if self._failure is None:
            self._failure = failure
        self._wake.poke()

    def _lead_until(self, done: Callable[[], bool], deadline: float | None) -> None:
        poller = select.poll()
        poller.register(self._fd, select.POLLIN)
        poller.register(self._nudge.fd, select.POLLIN)
        look = not self._clean  # a caller that just sent has looked already
        while True:
            if look:
                self._pump()
            look = True
            if done() or self._dead or self._failure is not None:
                return
            wait = LEAD_SLICE_S if deadline is None else min(LEAD_SLICE_S, deadline - time.monotonic())
            if wait <= 0:
                return
            with interruptible:
                ready = poller.poll(wait * 1000)
            if any(fd == self._nudge.fd for fd, _ in ready):
                self._nudge.clear()

    # --- the link's thread -------------------------------------------------------------------

    def _run(self) -> None:
        serving = select.poll()
        serving.register(self._fd, select.POLLIN)
        serving.register(self._wake.fd, select.POLLIN)
        stepped_back = select.poll()
        stepped_back.register(self._wake.fd, select.POLLIN)
        live = self._live
        try:
            while not self._stop and self._failure is None:
                now = time.monotonic()
                if self._lead.locked():
                    ready = stepped_back.poll(min(STEP_BACK_S, max(0.0, live.next_beat - now)) * 1000)
                else:
                    ready = serving.poll(max(0.0, live.next_beat - now) * 1000 + 1)
                if any(fd == self._wake.fd for fd, _ in ready):
                    self._wake.clear()
                if ready:
                    self._pump()
                now = time.monotonic()
                if live.due(now):
                    self.post(protocol.Heartbeat(), [])
                    if live.silent(now):
                        self._fail(ManagerUnavailableError(f"the dmp manager at {self.address} stopped answering"))
        finally:
            self._dead = True
            with self._io:
                self._chan.close()
            failure = self._failure
            if failure is not None and not self._ready.is_set():
                self._ready.set()
            self.session.fail_all(failure or ManagerUnavailableError("the session was closed"))

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
