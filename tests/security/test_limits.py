"""Keys, values and sizes (issue 11, items 5 to 9 and 12): an empty key is no
key, an authenticated peer's poison values cost only their message, the size
limit is per message, key files are their owner's, strangers get nothing
signed, and a peer of another version is told so at Hello."""

from __future__ import annotations

import math
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq

import dmp
from dmp import _config
from dmp.managers import BaseManager
from dmp.wire import protocol, transport
from tests.faults import tasks
from tests.faults.harness import FaultCluster
from tests.ports import free_port

from .attacker import decode, raw_dealer
from .conftest import KEY, start

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def ctx() -> Iterator[zmq.Context[Any]]:
    c: zmq.Context[Any] = zmq.Context()
    try:
        yield c
    finally:
        c.destroy(linger=0)


def _keyed(ctx: zmq.Context[Any], address: str, key: bytes = KEY) -> transport.Channel:
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(address)
    return transport.Channel(sock, key)


def _next(chan: transport.Channel, timeout_ms: int = 10_000) -> protocol.Message:
    while True:
        assert chan.sock.poll(timeout_ms), "no reply"
        _, msg, _ = chan.recv()
        if not isinstance(msg, protocol.Heartbeat):
            return msg


def _join(chan: transport.Channel, role: str = "client", **fields: Any) -> protocol.Welcome:
    chan.send(protocol.Hello(role, "attacker", "h", os.getpid(), **fields))
    welcome = _next(chan)
    assert isinstance(welcome, protocol.Welcome), welcome
    return welcome


def test_5_an_empty_authkey_is_no_key_anywhere(monkeypatch: pytest.MonkeyPatch) -> None:
    assert _config.authkey_from(b"") is None and _config.authkey_from("") is None
    monkeypatch.setenv("DMP_AUTHKEY", "")
    assert _config.authkey_from(None) is None
    manager = BaseManager(("0.0.0.0", free_port()), authkey=b"")
    with pytest.raises(ValueError, match="without an authkey"):
        manager.get_server().serve_forever()  # refused before it binds
    assert transport.Channel(zmq.Context.instance().socket(zmq.DEALER), b"").signer.key is None


def test_6_a_poison_result_costs_only_its_message(cluster: FaultCluster, ctx: zmq.Context[Any]) -> None:
    fake = _keyed(ctx, cluster.address)
    _join(fake, "worker", node="node1")
    for run_s in (math.nan, math.inf, -1.0, "soon"):
        fake.send(protocol.TaskDone([[123456, 0, 0, 0, run_s, ""]]))
    replies = [_next(fake) for _ in range(1)]  # refusals are answered once an interval
    assert isinstance(replies[0], protocol.Error) and replies[0].code == protocol.ErrorCode.BAD_MESSAGE
    assert "run time" in replies[0].text
    fake.send(protocol.Bye("done"))
    with dmp.Pool(address=cluster.address, authkey=KEY) as pool:
        assert pool.map(tasks.square, range(30)) == [i * i for i in range(30)]
        assert pool.map(tasks.square, range(30)) == [i * i for i in range(30)]


def test_7_the_size_limit_is_per_message_not_per_frame(tmp_path: Path, ctx: zmq.Context[Any]) -> None:
    c = start(tmp_path / "daemons", manager_args=("--max-message-mb", "8"))
    try:
        chan = _keyed(ctx, c.address)
        _join(chan)
        chan.send(protocol.DefineJob(7, 0))
        frames = [os.urandom(64) * (6 << 14) for _ in range(4)]  # 4 frames of 6 MiB: 24 MiB in all
        chan.send(protocol.Submit(7, [[i, 1] for i in range(4)]), frames)
        reply = _next(chan)
        assert isinstance(reply, protocol.Error) and reply.code == protocol.ErrorCode.TOO_LARGE and reply.ref == 7
        status = c.status()
        assert status is not None and status["queued"] == 0
        with dmp.Pool(address=c.address, authkey=KEY) as pool:
            with pytest.raises(dmp.MessageTooLargeError):
                pool.apply(len, (b"x" * (9 << 20),))
            assert pool.map(tasks.square, range(4)) == [0, 1, 4, 9]
    finally:
        c.stop()


def test_8_the_curve_secret_key_is_its_owners_only(tmp_path: Path) -> None:
    directory = tmp_path / "curve"
    transport.Curve(str(directory), server=True)
    assert stat.S_IMODE(os.stat(directory).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(directory / "server.key_secret").st_mode) == 0o600


def test_9_strangers_get_nothing_signed(cluster: FaultCluster, ctx: zmq.Context[Any]) -> None:
    hello = protocol.encode(protocol.Hello("client", "x", "h", 1, version=protocol.software_version(), nonce=bytes(16)))
    probes = [
        [b"garbage"],
        [b"", hello],
        [bytes(40), hello],
        [os.urandom(40), protocol.encode(protocol.StatusRequest())],
        [b"", protocol.encode(protocol.StatusRequest())],
    ]
    replies = []
    for parts in probes:  # each from a new connection: one answer per connection per interval
        sock = raw_dealer(ctx, cluster.address)
        sock.send_multipart(parts)
        if sock.poll(3000):
            replies.append(sock.recv_multipart())
    assert replies, "a keyless peer should be told the manager needs a key"
    for parts in replies:
        assert parts[0] == b"", f"a signed answer to a stranger: {decode(parts)!r}"
        msg = decode(parts)
        assert isinstance(msg, protocol.Error) and msg.code in (protocol.ErrorCode.AUTH, protocol.ErrorCode.UNKNOWN_PEER)
        assert "slots" not in msg.text and "node1" not in msg.text


def test_12_another_version_is_refused_at_hello_naming_both(cluster: FaultCluster, ctx: zmq.Context[Any]) -> None:
    chan = _keyed(ctx, cluster.address)
    chan.send(protocol.Hello("worker", "old", "h", 1, node="node1", version="dmp 0.0.9, Python 3.10"))
    reply = _next(chan)
    assert isinstance(reply, protocol.Error) and reply.code == protocol.ErrorCode.VERSION
    assert "dmp 0.0.9, Python 3.10" in reply.text and protocol.software_version() in reply.text
    status = cluster.status()
    assert status is not None and status["slots"] == 2
