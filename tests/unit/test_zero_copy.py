"""Large payloads cross real ZeroMQ sockets without a Python-level copy.

A client Channel sends a numpy array's out-of-band buffer as its own frame,
a routed Channel (the manager's side) receives it and forwards the frames it
got, and a worker Channel rebuilds the array on the received frame. Python
allocations are traced across the forwarding step: a ``bytes()`` or
``b"".join`` of the payload anywhere in recv/unpack/pack/send would show
up as an allocation the size of the payload. Also: a message whose pack
frame is not the length its header says is refused, not half-read.
"""

from __future__ import annotations

import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zmq

from dmp import serialization
from dmp.errors import ProtocolError
from dmp.wire import protocol, signing, transport

pytestmark = pytest.mark.timeout(30)

MiB = 1024 * 1024
RECV_TIMEOUT_MS = 10_000


@pytest.fixture
def relay(
    tmp_path: Path,
) -> Iterator[tuple[transport.Channel, transport.Channel, transport.Channel]]:
    """(client, manager, worker) Channels on ipc sockets in one process, no key."""
    endpoint = f"ipc://{tmp_path}/relay"
    router = transport.make_socket(zmq.ROUTER)
    router.bind(endpoint)
    socks = [router]
    chans = []
    for ident in (b"client", b"worker"):
        sock = transport.make_socket(zmq.DEALER, identity=ident)
        sock.connect(endpoint)
        socks.append(sock)
    for sock in socks:
        sock.setsockopt(zmq.RCVTIMEO, RECV_TIMEOUT_MS)
        chans.append(transport.Channel(sock, None))
    manager, client, worker = chans
    try:
        yield client, manager, worker
    finally:
        for chan in chans:
            chan.sock.close(0)


def _base_buffer(arr: np.ndarray) -> Any:
    """What the array's memory finally belongs to."""
    obj: Any = arr
    while isinstance(obj, np.ndarray) and obj.base is not None:
        obj = obj.base
    while isinstance(obj, memoryview) and obj.obj is not None:
        obj = obj.obj
    return obj


def test_a_large_array_is_forwarded_and_rebuilt_without_a_copy(relay: Any) -> None:
    client, manager, worker = relay
    data = np.random.default_rng(7).integers(0, 256, 8 * MiB, dtype=np.uint8)
    frames = serialization.dumps((data, "tag"))
    assert len(frames) == 2  # the pickle and the array's buffer, out of band

    client.send(protocol.Submit(1, [[7, len(frames)]]), frames)
    tracemalloc.start()
    try:
        ident, msg, got = manager.recv()
        assert ident == b"client" and isinstance(msg, protocol.Submit)
        # Forwarded as the manager dispatches a task: the frames it received, as they are.
        manager.send(protocol.Dispatch([], [[1, 1, 0, len(got)]]), got, to=b"worker")
        del got
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < MiB, f"forwarding an 8 MiB payload allocated {peak} bytes in Python"

    _, msg, got = worker.recv()
    assert isinstance(msg, protocol.Dispatch)
    arr, tag = serialization.loads(got)
    assert tag == "tag" and np.array_equal(arr, data)
    assert isinstance(_base_buffer(arr), zmq.Frame), (
        "the array was copied out of the received frame"
    )


def test_without_a_key_the_round_trip_never_passes_over_the_payload(
    relay: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Out and back as the numpy_payload row goes, without a key: no frame is hashed,
    no Python allocation the size of the payload, and the client's result is rebuilt,
    writable, on the frame it received."""
    hashed: list[int] = []
    real_sha256 = signing._sha256

    def counting(data: Any) -> Any:
        hashed.append(len(data))
        return real_sha256(data)

    monkeypatch.setattr(signing, "_sha256", counting)
    client, manager, worker = relay
    data = np.random.default_rng(9).integers(0, 256, 4 * MiB, dtype=np.uint8)
    tracemalloc.start()
    try:
        client.send(protocol.Submit(1, [[7, 2]]), serialization.dumps([data]))
        _, _, got = manager.recv()
        manager.send(protocol.Dispatch([], [[1, 1, 0, len(got)]]), got, to=b"worker")
        del got
        _, _, task = worker.recv()
        result = serialization.dumps(serialization.loads(task))  # identity, pickled again
        worker.send(protocol.TaskDone([[1, 0, 0, len(result), 0.0, None]]), result)
        del task, result
        _, _, done = manager.recv()
        manager.send(protocol.JobResults([[1, 7, 0, len(done), None]]), done, to=b"client")
        del done
        _, _, back = client.recv()
        (arr,) = serialization.loads(back)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert hashed == []
    assert peak < MiB, f"the round trip allocated {peak} bytes in Python"
    assert np.array_equal(arr, data) and arr.flags.writeable
    assert isinstance(_base_buffer(arr), zmq.Frame)


def test_the_pack_keeps_small_frames_and_large_ones_travel_alone(relay: Any) -> None:
    client, manager, _ = relay
    big = bytes(range(256)) * (protocol.PACK_LIMIT // 256 + 1)
    client.send(protocol.Submit(1, [[1, 3]]), [b"a", big, b"bc"])
    _, _, got = manager.recv()
    assert [bytes(f) for f in got] == [b"a", big, b"bc"]
    assert isinstance(got[1].obj, zmq.Frame)  # the large one is the received frame itself


@pytest.mark.parametrize("pack_frame", [b"x" * 9, b"x" * 11], ids=["short", "long"])
def test_a_pack_frame_that_lies_about_its_size_is_refused(relay: Any, pack_frame: bytes) -> None:
    client, manager, _ = relay
    header = protocol.encode(protocol.Submit(1, [[1, 1]]), [10])
    client.sock.send_multipart([b"", header, pack_frame])  # unsigned, no key: signature frame empty
    with pytest.raises(transport.Refused) as refused:
        manager.recv()
    assert refused.value.ident == b"client"
    assert isinstance(refused.value.error, ProtocolError)
    assert "layout" in str(refused.value.error)
    assert (
        refused.value.reply is not None
        and refused.value.reply.code == protocol.ErrorCode.BAD_MESSAGE
    )


def test_a_missing_large_frame_is_refused(relay: Any) -> None:
    client, manager, _ = relay
    header = protocol.encode(protocol.Submit(1, [[1, 2]]), [3, -1])
    client.sock.send_multipart([b"", header, b"abc"])  # the -1 frame never comes
    with pytest.raises(transport.Refused, match="layout"):
        manager.recv()
