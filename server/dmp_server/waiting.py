"""The reactor's wait: one poll(2) over the ROUTER's ZMQ_FD and every other descriptor.

    Poller.poll(timeout)
        socket used since it was last seen empty (Channel.used)?
            --> ZMQ_EVENTS: a message waits --> it is ready; the others are only looked at
        poll(2) on ZMQ_FD + the wake-up fd + door listener and connections + worker pipes and sentinels
            --> ZMQ_FD readable (commands reached the socket's mailbox) --> ZMQ_EVENTS
            --> any other fd: its events, as zmq_poll reports a plain fd's

Why not zmq_poll (zmq.Poller): for a ZeroMQ socket among the items it polls every
descriptor without waiting, asks the socket for ZMQ_EVENTS (libzmq's fork check, a
getpid(2), then a poll(2) of the socket's mailbox), and only then makes the poll that
waits, and asks again when it returns. A door call (a managed Queue's put) paid those
three extra system calls each time, while the ROUTER had nothing to say.

ZMQ_FD is edge-triggered: it turns readable when commands reach the socket's mailbox,
and any operation on the socket (a send, a recv, ZMQ_EVENTS itself) may take them and
leave messages to read behind a descriptor that stays quiet. So after any such operation
(Channel.used) ZMQ_EVENTS is asked before sleeping, and only then; while the socket is
unused since it was seen empty, its descriptor alone says when to look again.

Woken early (``prewake``, the door's connections): the reactor also wakes when a client
takes a reply off its connection, and waits again at once. A thread blocked in read(2)
on a unix socket is woken that way by the kernel (the reader freeing the reply makes the
writer's socket writable, and a plain read's wait takes any wake-up), so
multiprocessing's manager thread is already awake, its CPU out of idle, when the next
call comes; a poll(2) for POLLIN only is not, and the next call paid a cold wake-up
(~25 us a round trip on the 2-core VM, docs/performance.md). Each such descriptor
also sits in an epoll set for EPOLLOUT, edge-triggered (one event per reply taken),
and the epoll's own descriptor is in the poll.
"""

from __future__ import annotations

import select
import time
from typing import Any

import zmq

from dmp.wire import transport

# Plain ints: zmq's flag enums cost an enum operation per test.
POLLIN, POLLOUT, POLLPRI, POLLERR = int(zmq.POLLIN), int(zmq.POLLOUT), int(zmq.POLLPRI), int(zmq.POLLERR)
_IN, _OUT, _PRI = select.POLLIN, select.POLLOUT, select.POLLPRI
_OTHER = ~(_IN | _OUT | _PRI)


class Poller:
    """zmq.Poller's ``register`` / ``unregister`` (zmq flags) for plain descriptors, and a
    ``poll`` that also reports ``chan``'s socket (registered here, for POLLIN). One thread."""

    __slots__ = ("_early", "_ep", "_epfd", "_poll", "_zfd", "chan", "fds", "sock")

    def __init__(self, chan: transport.Channel) -> None:
        self.chan = chan
        self.sock = chan.sock
        self._zfd = int(self.sock.getsockopt(zmq.FD))
        self._poll = select.poll()
        self._poll.register(self._zfd, _IN)
        self.fds: dict[int, int] = {}  # fd -> zmq flags
        self._ep: select.epoll | None = None  # prewake's descriptors, for EPOLLOUT; made by the first
        self._epfd = -1
        self._early: set[int] = set()

    def register(self, fd: int, flags: int) -> None:
        """Watch ``fd`` for ``flags`` (zmq.POLLIN / POLLOUT); again: change its flags."""
        self._poll.register(fd, (_IN if flags & POLLIN else 0) | (_OUT if flags & POLLOUT else 0))
        self.fds[fd] = flags

    def unregister(self, fd: int) -> None:
        """Stop watching ``fd`` (KeyError if it was not watched, as zmq.Poller)."""
        del self.fds[fd]
        self._poll.unregister(fd)
        if fd in self._early and self._ep is not None:
            self._early.discard(fd)
            self._ep.unregister(fd)

    def prewake(self, fd: int) -> None:
        """Also wake (and wait again at once) when the peer takes what was written on the
        registered socket ``fd`` (see the module's docstring); unregister ends it."""
        if self._ep is None:
            self._ep = select.epoll()
            self._epfd = self._ep.fileno()
            self._poll.register(self._epfd, _IN)
        self._ep.register(fd, select.EPOLLOUT | select.EPOLLET)
        self._early.add(fd)

    def close(self) -> None:
        """Close the epoll of ``prewake`` (the descriptors are their owners' to close)."""
        self._early.clear()
        if self._ep is not None:
            self._poll.unregister(self._epfd)
            self._ep.close()
            self._ep = None
            self._epfd = -1

    def poll(self, timeout_ms: int) -> dict[Any, int]:
        """Wait up to ``timeout_ms`` (< 0: no limit) for any of them; {the socket or fd: zmq events}.

        As zmq_poll, it waits on when the socket's descriptor fired for commands
        that brought no message (a peer's pipe activated, say), and after an
        early wake-up (``prewake``): the reactor's wait ends for something to do
        or for its timer, never for nothing."""
        ready: dict[Any, int] = {}
        sock = self.sock
        if self.chan.used and self._readable():
            ready[sock] = POLLIN
            timeout_ms = 0  # the rest are only looked at, as zmq_poll does
        zfd, epfd = self._zfd, self._epfd
        start = time.monotonic() if timeout_ms > 0 else 0.0
        wait = timeout_ms
        while True:
            got = self._poll.poll(wait)
            for fd, events in got:
                if fd == zfd:
                    if sock not in ready and self._readable():
                        ready[sock] = POLLIN
                elif fd == epfd:
                    assert self._ep is not None
                    self._ep.poll(0)  # take the edges: the epoll is quiet until the next reply is taken
                elif events == _IN:  # the usual case
                    ready[fd] = POLLIN
                else:  # as zmq_poll converts a plain fd's events
                    ready[fd] = (
                        (POLLIN if events & _IN else 0)
                        | (POLLOUT if events & _OUT else 0)
                        | (POLLPRI if events & _PRI else 0)
                        | (POLLERR if events & _OTHER else 0)
                    )
            if ready or not got or timeout_ms == 0:
                return ready
            if timeout_ms > 0:
                wait = timeout_ms - int((time.monotonic() - start) * 1000)
                if wait <= 0:
                    return ready

    def _readable(self) -> bool:
        """ZMQ_EVENTS: a message waits. Afterwards the fd signals the next arrival."""
        chan = self.chan
        got = chan.readable()
        chan.used = False
        return got
