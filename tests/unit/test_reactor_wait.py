"""The manager's wait (dmp_server.waiting.Poller): one poll(2) over ZMQ_FD and plain fds,
answering as zmq_poll did. Real ZeroMQ sockets (ipc://) and real descriptors."""

from __future__ import annotations

import os
import select
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq
from dmp_server.waiting import POLLERR, POLLIN, POLLOUT, Poller
from zmq.backend import zmq_poll

from dmp.wire import protocol, transport

pytestmark = pytest.mark.timeout(60)
LONG_MS = 20_000  # a wait that must end at once when something is ready (the test's timeout is longer)


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[tuple[transport.Channel, transport.Channel]]:
    router = zmq.Context.instance().socket(zmq.ROUTER)
    dealer = zmq.Context.instance().socket(zmq.DEALER)
    address = f"ipc://{tmp_path}/r"
    router.bind(address)
    dealer.connect(address)
    try:
        yield transport.Channel(router, None), transport.Channel(dealer, None)
    finally:
        router.close(linger=0)
        dealer.close(linger=0)


def _wait_for_socket(poller: Poller, sock: Any) -> dict[Any, int]:
    ready = poller.poll(LONG_MS)
    assert sock in ready, "a message was sent, the wait did not see it"
    return ready


def test_messages_left_unread_are_seen_before_sleeping(pair: tuple[transport.Channel, transport.Channel]) -> None:
    server, client = pair
    poller = Poller(server)
    for _ in range(3):
        client.send(protocol.Heartbeat())
    _wait_for_socket(poller, server.sock)
    got = 0
    while got < 3:  # one message per wait, as the reactor takes them: ZMQ_FD may stay quiet meanwhile
        server.recv(transport.NOBLOCK)
        got += 1
        if got < 3:
            _wait_for_socket(poller, server.sock)
    assert poller.poll(0) == {}  # all read: nothing ready, and the socket is clean
    assert not server.used
    client.send(protocol.Heartbeat())  # an arrival on a clean socket wakes the wait through its fd
    _wait_for_socket(poller, server.sock)
    assert server.recv(transport.NOBLOCK)[1] == protocol.Heartbeat()


def test_a_send_does_not_hide_a_message_waiting(pair: tuple[transport.Channel, transport.Channel]) -> None:
    server, client = pair
    poller = Poller(server)
    client.send(protocol.Heartbeat())
    ident, _, _ = server.recv()  # blocking: it has come
    assert poller.poll(0) == {}
    client.send(protocol.Heartbeat())
    client.send(protocol.Heartbeat())
    server.send(protocol.Heartbeat(), to=ident)  # may take the commands that signalled the arrival
    ready = _wait_for_socket(poller, server.sock)
    assert ready[server.sock] == POLLIN


def test_a_plain_fd_and_the_socket_ready_together_are_both_reported(
    pair: tuple[transport.Channel, transport.Channel],
) -> None:
    server, client = pair
    poller = Poller(server)
    a, b = socket.socketpair()
    try:
        poller.register(a.fileno(), POLLIN)
        assert poller.poll(0) == {}
        b.send(b"x")
        client.send(protocol.Heartbeat())
        ready: dict[Any, int] = {}
        while len(ready) < 2:  # the message may still be on its way through ZeroMQ's I/O thread
            ready.update(poller.poll(LONG_MS))
        assert ready == {server.sock: POLLIN, a.fileno(): POLLIN}
    finally:
        a.close()
        b.close()


def test_plain_fds_get_the_events_zmq_poll_gives(pair: tuple[transport.Channel, transport.Channel]) -> None:
    server, _ = pair
    poller = Poller(server)
    a, b = socket.socketpair()
    r, w = os.pipe()
    r2, w2 = os.pipe()
    try:
        b.send(b"data")
        os.close(w)  # r: hung up, nothing to read (POLLHUP alone)
        os.write(w2, b"y")
        cases = [(a.fileno(), POLLIN), (b.fileno(), POLLIN | POLLOUT), (r, POLLIN), (r2, POLLIN), (w2, POLLOUT)]
        for fd, flags in cases:
            poller.register(fd, flags)
        expected = dict(zmq_poll(cases, 0))
        assert poller.poll(0) == expected
        assert expected[r] & POLLERR and expected[b.fileno()] == POLLOUT
        poller.register(b.fileno(), POLLIN)  # again: new flags, as zmq.Poller
        assert b.fileno() not in poller.poll(0)
        poller.unregister(a.fileno())
        assert a.fileno() not in poller.poll(0)
        with pytest.raises(KeyError):
            poller.unregister(a.fileno())
    finally:
        a.close()
        b.close()
        os.close(r)
        os.close(r2)
        os.close(w2)


# --- prewake: woken when the peer takes a reply, never reporting it -------------------------


def _epoll_has_events(poller: Poller) -> bool:
    fd = poller._epfd
    return fd >= 0 and bool(select.select([fd], [], [], 0)[0])


def test_prewake_wakes_but_reports_only_what_is_ready(pair: tuple[transport.Channel, transport.Channel]) -> None:
    """A reply taken by the peer (write space on our end) wakes the wait, which waits again:
    poll reports nothing for it, the edge is taken, and a real request is reported as ever."""
    server, _ = pair
    ours, theirs = socket.socketpair()
    try:
        poller = Poller(server)
        poller.register(ours.fileno(), POLLIN)
        poller.prewake(ours.fileno())
        assert poller.poll(0) == {}  # the edge of registering: taken, not reported
        assert not _epoll_has_events(poller)
        ours.sendall(b"reply")
        theirs.recv(100)  # the peer takes it: an EPOLLOUT edge on our end
        assert _epoll_has_events(poller)
        assert poller.poll(50) == {}  # woken, waited again, then timed out with nothing ready
        assert not _epoll_has_events(poller), "the edge was left in the epoll: the next wait would spin"
        ours.sendall(b"reply")
        theirs.recv(100)
        theirs.sendall(b"next call")  # an edge and a request together
        assert poller.poll(LONG_MS) == {ours.fileno(): POLLIN}
        assert not _epoll_has_events(poller)
    finally:
        ours.close()
        theirs.close()
        poller.close()


def test_prewake_ends_with_unregister(pair: tuple[transport.Channel, transport.Channel]) -> None:
    """After unregister a reply taken wakes nothing, and the fd may join again (a connection
    the door closes is unregistered first; its fd number comes back for the next one)."""
    server, _ = pair
    poller = Poller(server)
    ours, theirs = socket.socketpair()
    try:
        fd = ours.fileno()
        for _ in range(2):
            poller.register(fd, POLLIN)
            poller.prewake(fd)  # FileExistsError if unregister had left it in the epoll
            poller.poll(0)
            poller.unregister(fd)
            ours.sendall(b"reply")
            theirs.recv(100)
            assert not _epoll_has_events(poller), "an unregistered fd still wakes the wait"
    finally:
        ours.close()
        theirs.close()
        poller.close()
    assert poller._ep is None


def test_a_wake_up_that_brings_no_message_does_not_end_the_wait(
    pair: tuple[transport.Channel, transport.Channel],
) -> None:
    """A peer connecting sends the ROUTER's mailbox commands but no message: its
    descriptor fires, ZMQ_EVENTS says nothing to read, and the wait goes on (as
    zmq_poll's does) until the message comes. It returned {} at once before, and
    the one-poll waits of these tests then failed now and then under load."""
    server, client = pair
    poller = Poller(server)
    assert poller.poll(0) == {}
    late = zmq.Context.instance().socket(zmq.DEALER)
    sender = threading.Timer(0.5, lambda: client.send(protocol.Heartbeat()))
    try:
        late.connect(server.sock.getsockopt_string(zmq.LAST_ENDPOINT))  # commands, no message
        sender.start()
        ready = _wait_for_socket(poller, server.sock)
        assert ready == {server.sock: POLLIN}
        assert server.recv(transport.NOBLOCK)[1] == protocol.Heartbeat()
    finally:
        sender.cancel()
        sender.join()
        late.close(linger=0)
