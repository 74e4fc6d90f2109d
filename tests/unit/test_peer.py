"""dmp.wire.peer: the heartbeat timers and the re-Hello backoff alone, then a
PeerLoop against a real ROUTER (in-process) that refuses it and then welcomes it."""

from __future__ import annotations

import math
import random
import time
import uuid
from collections.abc import Iterator

import pytest
import zmq

from dmp import _config
from dmp.wire import peer, protocol, transport

pytestmark = pytest.mark.timeout(30)


# --- Liveness ----------------------------------------------------------------------


def test_liveness_starts_with_the_default_beat_and_count() -> None:
    live = peer.Liveness(100.0)
    assert (live.beat, live.liveness) == (_config.HEARTBEAT_S, _config.LIVENESS)
    assert live.window == _config.HEARTBEAT_S * _config.LIVENESS
    assert not live.due(100.0 + _config.HEARTBEAT_S / 2)
    assert live.due(100.0 + _config.HEARTBEAT_S)
    assert not live.due(100.0 + _config.HEARTBEAT_S)  # once a beat


def test_liveness_follows_the_managers_beat() -> None:
    live = peer.Liveness(0.0)
    live.follow(10.0, 0.5)
    assert live.beat == 10.0 and live.window == 10.0 * _config.LIVENESS
    assert live.due(1.0)  # the beat already scheduled stays
    assert not live.due(5.0) and live.due(11.0)
    live.follow(0.2, 11.05)
    assert live.next_beat == pytest.approx(11.25)  # a shorter beat takes effect at once


@pytest.mark.parametrize("bad", [0.0, -1.0, math.inf, math.nan, "1", None])
def test_liveness_ignores_a_nonsensical_beat(bad: object) -> None:
    live = peer.Liveness(0.0)
    live.follow(bad, 0.0)  # type: ignore[arg-type]
    assert live.beat == _config.HEARTBEAT_S


def test_liveness_silence_is_more_than_liveness_beats() -> None:
    live = peer.Liveness(0.0, beat=0.5)
    live.heard(3.0)
    assert not live.silent(3.0 + 0.5 * _config.LIVENESS)
    assert live.silent(3.0 + 0.5 * _config.LIVENESS + 0.01)


# --- Backoff -----------------------------------------------------------------------


def test_backoff_doubles_up_to_its_cap_and_resets() -> None:
    backoff = peer.Backoff(0.1, 1.0)
    delays = []
    for _ in range(6):
        backoff.next()
        delays.append(backoff.delay)
    assert delays == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.0, 1.0])
    backoff.reset()
    backoff.next()
    assert backoff.delay == pytest.approx(0.1)


def test_backoff_waits_are_jittered_around_the_doubling_delay() -> None:
    backoff = peer.Backoff(0.1, 1.0, jitter=0.5, rng=random.Random(7))
    for expected in [0.1, 0.2, 0.4, 0.8, 1.0, 1.0, 1.0]:
        wait = backoff.next()
        assert backoff.delay == pytest.approx(expected)
        assert 0.5 * expected <= wait <= 1.5 * expected


def test_backoffs_refused_together_do_not_come_back_in_lockstep() -> None:
    """A thousand peers refused at the same moment: their next Hellos spread over the window."""
    rng = random.Random(11)
    waits = [peer.Backoff(1.0, 5.0, rng=rng).next() for _ in range(1000)]
    assert min(waits) >= 0.5 and max(waits) <= 1.5
    buckets = [0] * 10  # tenths of [0.5, 1.5)
    for w in waits:
        buckets[min(9, int((w - 0.5) * 10))] += 1
    assert max(buckets) < 200  # never more than a fifth of them in one tenth of the window


def test_backoff_without_jitter_is_exact_and_bad_jitter_is_refused() -> None:
    backoff = peer.Backoff(0.1, 1.0, jitter=0.0)
    assert [backoff.next() for _ in range(3)] == pytest.approx([0.1, 0.2, 0.4])
    for bad in (-0.1, 1.0, 2.0):
        with pytest.raises(ValueError, match="jitter"):
            peer.Backoff(jitter=bad)


def test_default_backoff_is_capped() -> None:
    backoff = peer.Backoff()
    waits = [backoff.next() for _ in range(20)]
    assert backoff.delay == peer.HELLO_BACKOFF_MAX_S
    assert max(waits) <= peer.HELLO_BACKOFF_MAX_S * (1 + peer.HELLO_JITTER)
    assert waits[0] >= peer.HELLO_BACKOFF_S * (1 - peer.HELLO_JITTER)


# --- PeerLoop against a real socket -----------------------------------------------------------


@pytest.fixture
def manager_socket() -> Iterator[tuple[str, transport.Channel]]:
    address = f"inproc://peer-test-{uuid.uuid4().hex}"
    chan = transport.Channel(transport.make_socket(zmq.ROUTER), None)
    chan.sock.bind(address)
    try:
        yield address, chan
    finally:
        chan.close()


def _next_hello(router: transport.Channel, loop: peer.PeerLoop, deadline: float) -> bytes:
    """Run ``loop`` (poll, drain, tick) until ``router`` receives a Hello; its sender's id."""
    while time.monotonic() < deadline:
        if router.sock.poll(0):
            ident, msg, _ = router.recv()
            if isinstance(msg, protocol.Hello):
                assert ident is not None
                return ident
            continue
        if peer.SOCKET in loop.poll(0.05):
            list(loop.messages())
        loop.tick()
    raise AssertionError("no Hello arrived")


def test_refused_hellos_back_off_and_a_welcome_resets(manager_socket: tuple[str, transport.Channel]) -> None:
    address, router = manager_socket
    hello = protocol.Hello(protocol.Role.WORKER, "w", "host", 1, node="node")
    loop = peer.PeerLoop(address, None, hello, expects_beats=False)
    try:
        loop.say_hello()
        deadline = time.monotonic() + 20
        ident = _next_hello(router, loop, deadline)
        delays = []
        for _ in range(3):
            router.send(protocol.Error(protocol.ErrorCode.REFUSED, "node not joined"), to=ident)
            assert router.sock.poll(0) == 0  # never re-sent at once
            while loop.hello_at is None:
                loop.poll(0.05)
                list(loop.messages())
            assert not loop.joined
            delays.append(loop.backoff.delay)
            ident = _next_hello(router, loop, deadline)
        assert delays == pytest.approx([peer.HELLO_BACKOFF_S, 2 * peer.HELLO_BACKOFF_S, 4 * peer.HELLO_BACKOFF_S])
        router.send(protocol.Welcome("p", 0.5), to=ident)
        while not loop.joined:
            loop.poll(0.05)
            list(loop.messages())
        assert loop.live.beat == 0.5 and loop.backoff.delay == 0 and loop.hello_at is None
    finally:
        loop.close()


def test_an_unanswered_hello_is_said_again_only_after_liveness_beats(
    manager_socket: tuple[str, transport.Channel],
) -> None:
    """A busy manager answers late: a new Hello at every beat would void the handshake it is
    about to answer. The Hello is said again only once unanswered for LIVENESS beats."""
    address, _router = manager_socket
    hello = protocol.Hello(protocol.Role.WORKER, "w", "host", 1, node="node")
    loop = peer.PeerLoop(address, None, hello, expects_beats=False)
    try:
        loop.say_hello()
        for _ in range(_config.LIVENESS):  # beats within the window: no new Hello planned
            loop.live.next_beat = time.monotonic()
            assert loop.tick() is peer.Tick.BEAT
            assert loop.hello_at is None
        loop.live.heard(time.monotonic() - loop.live.window - 0.01)  # silent past the window
        loop.live.next_beat = time.monotonic()
        assert loop.tick() is peer.Tick.BEAT
        assert loop.hello_at is not None and loop.backoff.delay == peer.HELLO_BACKOFF_S
    finally:
        loop.close()


def test_tick_beats_once_a_beat_and_reports_silence(manager_socket: tuple[str, transport.Channel]) -> None:
    address, router = manager_socket
    loop = peer.PeerLoop(address, None, protocol.Hello(protocol.Role.NODE, "n", "host", 1), rehello=False)
    try:
        assert loop.tick() is peer.Tick.NONE  # no beat due yet
        loop.live.next_beat = time.monotonic()
        assert loop.tick() is peer.Tick.BEAT
        deadline = time.monotonic() + 10
        while not router.sock.poll(50) and time.monotonic() < deadline:
            pass
        assert isinstance(router.recv()[1], protocol.Heartbeat)
        loop.live.heard(time.monotonic() - loop.live.window - 1)
        loop.live.next_beat = time.monotonic()
        assert loop.tick() is peer.Tick.SILENT
    finally:
        loop.close()


def test_a_worker_beats_once_every_beat_every_of_the_managers_beats(manager_socket: tuple[str, transport.Channel]) -> None:
    address, router = manager_socket
    hello = protocol.Hello(protocol.Role.WORKER, "w", "host", 1, node="node")
    loop = peer.PeerLoop(address, None, hello, expects_beats=False, beat_every=4)
    try:
        loop.say_hello()
        deadline = time.monotonic() + 20
        ident = _next_hello(router, loop, deadline)
        router.send(protocol.Welcome("p", 0.5), to=ident)
        while not loop.joined and time.monotonic() < deadline:
            loop.poll(0.05)
            list(loop.messages())
        assert loop.live.beat == 2.0
    finally:
        loop.close()


# --- a ROUTER channel reads the sender's routing id as bytes -----------------------------------


@pytest.mark.parametrize("parts", [[b""], [b"garbage"], [b"", b"\x01", b"\x02"]])
def test_router_channel_names_the_sender_of_good_and_malformed_messages(
    manager_socket: tuple[str, transport.Channel], parts: list[bytes]
) -> None:
    address, router = manager_socket
    raw = transport.context().socket(zmq.DEALER)
    raw.setsockopt(zmq.ROUTING_ID, b"peer-7")
    raw.setsockopt(zmq.LINGER, 0)
    raw.connect(address)
    try:
        raw.send_multipart(parts)  # too few frames, or a header that is not one
        assert router.sock.poll(5000)
        with pytest.raises(transport.Refused) as refused:
            router.recv(transport.NOBLOCK)
        assert refused.value.ident == b"peer-7"
        raw.send_multipart([b"", protocol.encode(protocol.Heartbeat(), [])])  # then a good one
        assert router.sock.poll(5000)
        ident, msg, frames = router.recv(transport.NOBLOCK)
        assert (ident, msg, frames) == (b"peer-7", protocol.Heartbeat(), [])
        assert not router.readable()
    finally:
        raw.close()
