"""Cluster mode's client link: one I/O thread owns a DEALER to the manager.

    caller threads --post()--> outbox deque + eventfd --> I/O thread --> DEALER
    manager --> DEALER --> I/O thread --> session.on_message (sinks)
    every HEARTBEAT_S: Heartbeat out; silence for LIVENESS beats, or a Bye,
    fails every waiting job with ManagerUnavailableError (never a hang)
"""

from __future__ import annotations

import collections
import os
import socket
import threading
import time
from typing import Any

import zmq

from dmp import _config, protocol, transport
from dmp.errors import AuthenticationError, ManagerUnavailableError, MessageTooLargeError

HEARTBEAT_S = 1.0
LIVENESS = 5


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
        self.outbox: collections.deque[tuple[protocol.Message, list[Any]]] = collections.deque()
        self._wake = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._stop = False
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self.welcome: protocol.Welcome | None = None
        transport.curve_enabled()  # bad DMP_CURVE keys: ValueError here, not in our thread
        self._thread = threading.Thread(target=self._run, name="dmp-link", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            self._stop = True
            self._poke()
            raise ManagerUnavailableError(f"no dmp manager answered at {address} within {timeout:g} s")
        if self._error is not None:
            raise self._error

    def post(self, msg: protocol.Message, frames: list[Any]) -> None:
        """Queue a message for the I/O thread.

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
        self.outbox.append((msg, frames))
        self._poke()

    def close(self) -> None:
        if not self._stop:
            self.post(protocol.Bye("client closing"), [])
            self._stop = True
            self._poke()
            if threading.current_thread() is not self._thread:
                self._thread.join(5.0)

    def _poke(self) -> None:
        try:
            os.eventfd_write(self._wake, 1)
        except OSError:
            pass

    def _run(self) -> None:
        sock = transport.make_socket(zmq.DEALER)
        chan = transport.Channel(sock, self.key)
        sock.connect(self.address)
        poller = zmq.Poller()
        poller.register(sock, zmq.POLLIN)
        poller.register(self._wake, zmq.POLLIN)
        hello = protocol.Hello(
            protocol.Role.CLIENT, f"client-{os.getpid()}", socket.gethostname(), os.getpid(), self.max_workers
        )
        chan.send(hello)
        last_heard = time.monotonic()
        next_beat = last_heard + HEARTBEAT_S
        self.beat = HEARTBEAT_S
        failure: BaseException | None = None
        try:
            while True:
                while self.outbox:
                    msg, frames = self.outbox.popleft()
                    chan.send(msg, frames)
                if self._stop:
                    break
                ready = dict(poller.poll(int(max(0.0, next_beat - time.monotonic()) * 1000) + 1))
                if self._wake in ready:
                    try:
                        os.eventfd_read(self._wake)
                    except BlockingIOError:
                        pass
                if sock in ready:
                    while int(sock.getsockopt(zmq.EVENTS)) & zmq.POLLIN:
                        try:
                            _, msg, frames = chan.recv(zmq.NOBLOCK)
                        except transport.Refused as refused:
                            failure = AuthenticationError(str(refused.error)) if isinstance(refused.error, AuthenticationError) else refused.error
                            break
                        last_heard = time.monotonic()
                        failure = self._handle(msg, frames)
                        if failure is not None:
                            break
                    if failure is not None:
                        break
                now = time.monotonic()
                if now >= next_beat:
                    next_beat = now + self.beat
                    chan.send(protocol.Heartbeat())
                    if now - last_heard > self.beat * LIVENESS:
                        failure = ManagerUnavailableError(f"the dmp manager at {self.address} stopped answering")
                        break
        finally:
            chan.close()
            os.close(self._wake)
            self._stop = True
            if failure is not None and not self._ready.is_set():
                self._error = failure
                self._ready.set()
            self.session.fail_all(failure or ManagerUnavailableError("the session was closed"))

    def _handle(self, msg: protocol.Message, frames: list[Any]) -> BaseException | None:
        if isinstance(msg, protocol.Welcome):
            self.welcome = msg
            if msg.heartbeat_s > 0:
                self.beat = msg.heartbeat_s
            self._ready.set()
        elif isinstance(msg, protocol.Bye):
            return ManagerUnavailableError(f"the dmp manager at {self.address} went away: {msg.reason}")
        elif isinstance(msg, protocol.Error) and msg.code == protocol.ErrorCode.AUTH:
            return AuthenticationError(f"the dmp manager at {self.address} refused our authkey")
        elif isinstance(msg, protocol.Error) and msg.code == protocol.ErrorCode.REFUSED and not self._ready.is_set():
            return ManagerUnavailableError(f"the dmp manager at {self.address} refused this client: {msg.text}")
        elif isinstance(msg, protocol.Error) and msg.code == protocol.ErrorCode.VERSION:
            return ManagerUnavailableError(f"the dmp manager at {self.address}: {msg.text}")
        elif not isinstance(msg, protocol.Heartbeat):
            self.session.on_message(msg, frames)
        return None
