"""Hostile input to the manager's socket (the only listening socket dmp has).

Nodes and workers listen nowhere: they connect out to the manager, so a
stranger can reach them only by impersonating the manager; the last test
plays that rogue manager and shows a worker drops every unsigned message
before decoding it. Fuzzing uses hypothesis: thousands of random multipart
messages, msgpack headers with a valid version and random fields, and
truncated or mangled real messages, then a normal Pool.map must succeed and
``dmp status`` must answer.
"""

from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack
import pytest
import zmq
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

import dmp
from dmp import serialization
from dmp.errors import MessageTooLargeError
from dmp.wire import protocol, transport

from . import tasks
from .conftest import start_cluster
from .harness import ROOT, FaultCluster, alive, wait_for

KEY = b"the right key for the fault suite"
LIMIT_MIB = 1


@pytest.fixture(scope="module")
def open_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FaultCluster]:
    """No authkey (loopback), a 1 MiB message limit, one node of two workers."""
    c = start_cluster(tmp_path_factory.mktemp("open"), nodes=1, manager_args=("--max-message-mb", str(LIMIT_MIB)))
    try:
        yield c
    finally:
        c.stop()


@pytest.fixture(scope="module")
def keyed_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FaultCluster]:
    c = start_cluster(tmp_path_factory.mktemp("keyed"), nodes=1, authkey=KEY)
    try:
        yield c
    finally:
        c.stop()


@pytest.fixture
def sockets() -> Iterator[Any]:
    """sockets(address, n=1): raw DEALERs, closed (linger 0) after the test."""
    ctx = zmq.Context()
    made: list[zmq.Socket[Any]] = []

    def make(address: str, identity: bytes | None = None) -> zmq.Socket[Any]:
        sock = ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.RCVTIMEO, 5000)
        if identity is not None:
            sock.setsockopt(zmq.ROUTING_ID, identity)
        sock.connect(address)
        made.append(sock)
        return sock

    yield make
    for sock in made:
        sock.close()
    ctx.term()


def drain(sock: zmq.Socket[Any]) -> list[protocol.Message]:
    """Every reply waiting on ``sock``, decoded without checking signatures."""
    out = []
    while True:
        try:
            parts = sock.recv_multipart(zmq.NOBLOCK)
        except zmq.Again:
            return out
        try:
            out.append(protocol.decode(parts[1])[0])
        except Exception:
            pass


def drain_all(socks: list[zmq.Socket[Any]]) -> None:
    for sock in socks:
        drain(sock)


def next_reply(sock: zmq.Socket[Any], timeout: float = 5.0) -> protocol.Message:
    assert sock.poll(int(timeout * 1000)), "no reply"
    parts = sock.recv_multipart()
    return protocol.decode(parts[1])[0]


def hello(role: str = "client") -> bytes:
    return protocol.encode(protocol.Hello(role, "fuzz", "fuzzhost", 1, version=protocol.software_version()))


def assert_serving(cluster: FaultCluster) -> None:
    """The daemon is alive, `dmp status` answers (JSON and text), and a Pool.map is exact."""
    assert cluster.manager is not None and cluster.manager.poll() is None, "the manager died"
    for extra in (["--json"], []):
        out = subprocess.run(
            [sys.executable, "-m", "dmp", "status", cluster.address, "--timeout", "5", *extra],
            env=cluster.env, cwd=ROOT, capture_output=True, text=True, timeout=30,
        )
        assert out.returncode == 0, out.stderr
        if extra:
            assert json.loads(out.stdout)["slots"] >= 1
    with dmp.Pool(address=cluster.address, authkey=cluster.authkey) as pool:
        assert pool.map_async(tasks.square, range(100)).get(30) == [x * x for x in range(100)]


def quiesce(cluster: FaultCluster, socks: list[zmq.Socket[Any]]) -> None:
    """Let the tasks fuzzed clients may have submitted run out, then say Bye from every socket."""
    def idle() -> bool:
        status = cluster.status()
        return status is not None and status["busy"] == 0 and status["queued"] == 0

    wait_for(idle, 20, "the fuzzed tasks to run out", every=0.2)
    for sock in socks:
        sock.send_multipart([b"", protocol.encode(protocol.Bye("fuzz done"))])
        drain(sock)


# --- strategies ---------------------------------------------------------------------------------

scalars = (
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats(allow_nan=True)
    | st.text(max_size=12) | st.binary(max_size=12)
)
values = st.recursive(
    scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=8,
)
codes = st.sampled_from(sorted(protocol.message_types()[n].TYPE for n in protocol.message_types())) | st.integers(-3, 300)
sizes = st.lists(st.integers(-2, 64), max_size=4) | values
payload = st.lists(st.binary(max_size=64), max_size=4)
# Roles for fuzzed Hellos. Not "worker": the manager refuses a worker whose node
# has not joined, but a fuzzer that first joins as a node could then add a fake
# worker that is handed real tasks and sits on them (workers have no liveness
# of their own; their node's stands in for them): a misbehaving trusted peer,
# not garbage (see docs/failure-semantics.md).
roles = st.sampled_from(["client", "status", "node"]) | st.text(max_size=8) | values


@st.composite
def random_headers(draw: Any) -> list[bytes]:
    code = draw(codes)
    if code == protocol.Hello.TYPE:
        fields = [draw(roles), *draw(st.lists(values, max_size=7))]
    else:
        fields = draw(st.lists(values, max_size=8))
    header = msgpack.packb([protocol.PROTOCOL_VERSION, code, draw(sizes), *fields], use_bin_type=True)
    return [draw(st.sampled_from([b"", b"\0" * 40])), header, *draw(payload)]


def _corpus() -> list[list[bytes]]:
    """Real messages, unsigned, as the fuzzer's raw material."""
    def parts(msg: protocol.Message, frames: list[bytes] = ()) -> list[bytes]:  # type: ignore[assignment]
        sz, physical = protocol.pack(frames)
        return [b"", protocol.encode(msg, sz), *physical]

    task = serialization.dumps((tasks.square, (3,), {}), by_value=True)
    return [
        parts(protocol.Hello("client", "c", "h", 1)),
        parts(protocol.Hello("node", "n", "h", 1)),
        parts(protocol.DefineJob(7, 0)),
        parts(protocol.Submit(7, [[0, len(task)]]), task),
        parts(protocol.Submit(7, [[0, 1], [1, 1]]), [b"x" * 40, b"y" * 40_000]),
        parts(protocol.TaskDone([[1, 0, 0, 1, 0.1, ""]]), [b"r"]),
        parts(protocol.TaskOutput(1, "stdout", "x")),
        parts(protocol.TaskStarted(1, 2)),
        parts(protocol.WorkerExited("w", 1, -9, 3)),
        parts(protocol.StatusRequest()),
        parts(protocol.ObjCreate(1, "Queue", "", [3])),
        parts(protocol.ObjCall(2, 1, "put", [], 0.0), [b"item"]),
        parts(protocol.EndJob(7)),
        parts(protocol.CancelJob(7)),
    ]


@st.composite
def mangled(draw: Any) -> list[bytes]:
    parts = list(draw(st.sampled_from(_corpus())))
    for _ in range(draw(st.integers(1, 3))):
        i = draw(st.integers(0, len(parts) - 1))
        frame = parts[i]
        op = draw(st.sampled_from(["truncate", "flip", "drop", "dup", "extend"]))
        if op == "truncate":
            parts[i] = frame[: draw(st.integers(0, max(0, len(frame) - 1)))]
        elif op == "flip" and frame:
            j = draw(st.integers(0, len(frame) - 1))
            parts[i] = frame[:j] + bytes([frame[j] ^ draw(st.integers(1, 255))]) + frame[j + 1 :]
        elif op == "drop" and len(parts) > 1:
            del parts[i]
        elif op == "dup":
            parts.insert(i, frame)
        else:
            parts[i] = frame + draw(st.binary(max_size=16))
    return parts


# Fuzzing is bounded by work, not by the machine's speed: each run sends at most
# MAX_EXAMPLES messages, and stops early once it has sent MIN_EXAMPLES and spent
# BUDGET_S seconds (a loaded machine sends fewer, never times the test out).
MAX_EXAMPLES = 1500
MIN_EXAMPLES = 200
BUDGET_S = 10.0
FUZZ = settings(
    max_examples=MAX_EXAMPLES, deadline=None, database=None, phases=[Phase.generate],
    suppress_health_check=list(HealthCheck), print_blob=False,
)


class _BudgetSpent(Exception):
    """Raised inside a fuzz run to end it once its time budget is spent (not a failure)."""


def fuzz(cluster: FaultCluster, socks: list[zmq.Socket[Any]], strategy: Any) -> int:
    sent = 0
    stop_at = time.monotonic() + BUDGET_S

    @FUZZ
    @given(st.integers(0, len(socks) - 1), strategy)
    def send(which: int, parts: list[bytes]) -> None:
        nonlocal sent
        if sent >= MIN_EXAMPLES and time.monotonic() > stop_at:
            raise _BudgetSpent
        sock = socks[which]
        sock.send_multipart(parts or [b""])
        sent += 1
        if sent % 64 == 0:
            drain(sock)
            assert cluster.manager is not None and cluster.manager.poll() is None, f"manager died after {parts!r}"

    try:
        send()
    except _BudgetSpent:
        pass
    return sent


@pytest.mark.timeout(180)
def test_fuzzed_frames_leave_the_manager_serving(open_cluster: FaultCluster, sockets: Any) -> None:
    c = open_cluster
    socks = [sockets(c.address) for _ in range(3)]
    hello_sock = sockets(c.address)
    hello_sock.send_multipart([b"", hello("client")])  # one fuzzer speaks as a registered client
    assert isinstance(next_reply(hello_sock), protocol.Welcome)
    socks.append(hello_sock)
    n = fuzz(c, socks, st.lists(st.binary(max_size=48), min_size=1, max_size=6))
    n += fuzz(c, socks, random_headers())
    n += fuzz(c, socks, mangled())
    assert n >= 3 * MIN_EXAMPLES
    quiesce(c, socks)
    assert_serving(c)
    print(f"{n} fuzzed messages")


@pytest.mark.timeout(180)  # 3000 hypothesis examples: ~35 s alone, more beside other suites on 2 cores
def test_fuzzed_frames_to_a_keyed_manager_are_all_refused(keyed_cluster: FaultCluster, sockets: Any) -> None:
    c = keyed_cluster
    socks = [sockets(c.address) for _ in range(2)]
    n = fuzz(c, socks, random_headers()) + fuzz(c, socks, mangled())
    assert n >= 2 * MIN_EXAMPLES
    # Nothing unsigned can register a client or queue a task, whenever we look:
    # after the last fuzzed message (the status request may overtake some), and
    # again once a served Pool.map has gone through the same reactor.
    for _ in range(2):
        status = c.status()
        assert status is not None and status["clients"] == [] and status["queued"] == 0, status
        drain_all(socks)
    assert_serving(c)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("name", [["a", "list"], {"a": "map"}, b"bytes"], ids=["list", "map", "bytes"])
def test_a_node_with_an_ill_typed_name_cannot_break_status(open_cluster: FaultCluster, sockets: Any, name: Any) -> None:
    c = open_cluster
    sock = sockets(c.address)
    sock.send_multipart([b"", msgpack.packb([protocol.PROTOCOL_VERSION, protocol.Hello.TYPE, [], "node", name, "h", 1])])
    next_reply(sock, 30)  # the Hello was handled (welcomed or refused) before we look
    stop = threading.Event()

    def beat() -> None:  # keep the odd node alive while we look
        while not stop.wait(0.5):
            sock.send_multipart([b"", protocol.encode(protocol.Heartbeat())])

    beater = threading.Thread(target=beat, daemon=True)
    beater.start()
    try:
        assert_serving(c)
    finally:
        stop.set()
        beater.join(5)
        sock.send_multipart([b"", protocol.encode(protocol.Bye())])


@pytest.mark.timeout(60)
def test_deeply_nested_msgpack_is_refused(open_cluster: FaultCluster, sockets: Any) -> None:
    c = open_cluster
    sock = sockets(c.address)
    deep = b"\x91" * 100_000 + b"\xc0"  # [[[[...]]]] 100,000 deep
    header = b"\x94" + msgpack.packb(protocol.PROTOCOL_VERSION) + msgpack.packb(protocol.Hello.TYPE) + b"\x90" + deep
    sock.send_multipart([b"", header])
    reply = next_reply(sock)
    assert isinstance(reply, protocol.Error) and reply.code == protocol.ErrorCode.BAD_MESSAGE, reply
    assert_serving(c)


# --- authentication ------------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_wrong_key_is_refused_and_the_daemon_keeps_serving(keyed_cluster: FaultCluster, sockets: Any) -> None:
    c = keyed_cluster
    wrong = transport.Channel(sockets(c.address), b"a wrong key")
    wrong.sock.send_multipart([bytes(8) + wrong.signer.sign([hello()], bytes(8)), hello()])  # counter 0, no session
    reply = next_reply(wrong.sock)
    assert isinstance(reply, protocol.Error) and reply.code in (protocol.ErrorCode.AUTH, protocol.ErrorCode.UNKNOWN_PEER)
    with pytest.raises(dmp.AuthenticationError):
        dmp.Pool(address=c.address, authkey=b"a wrong key")
    status = c.status()
    assert status is not None and status["clients"] == []
    assert_serving(c)


class _Recorder:
    """A DEALER stand-in for Channel that keeps a copy of every message sent."""

    def __init__(self, sock: zmq.Socket[Any]) -> None:
        self.sock = sock
        self.type = sock.type
        self.sent: list[list[bytes]] = []
        self._parts: list[bytes] = []  # of the message being sent

    def send(self, data: Any, flags: int = 0, copy: bool = True) -> None:
        self._parts.append(bytes(data))
        if not flags & zmq.SNDMORE:
            self.sent.append(self._parts)
            self._parts = []
        self.sock.send(data, flags, copy=copy)

    def recv(self, flags: int = 0, copy: bool = True) -> Any:
        return self.sock.recv(flags, copy=copy)

    def close(self) -> None:
        self.sock.close()


def _signed_session(sock: zmq.Socket[Any], markers: Path) -> tuple[transport.Channel, _Recorder]:
    """A client session with the right key that submits one task logging its attempts."""
    rec = _Recorder(sock)
    chan = transport.Channel(rec, KEY)  # type: ignore[arg-type]
    chan.send(protocol.Hello("client", "replayer", "h", os.getpid()))
    _, welcome, _ = chan.recv()
    assert isinstance(welcome, protocol.Welcome)
    chan.send(protocol.DefineJob(1, 0))
    task = serialization.dumps((tasks.log_attempt, (str(markers), 0), {}), by_value=True)
    chan.send(protocol.Submit(1, [[0, len(task)]]), task)
    _, results, _ = chan.recv()
    assert isinstance(results, protocol.JobResults) and results.items[0][2] == protocol.Status.OK
    assert len(tasks.attempts(str(markers), 0)) == 1
    return chan, rec


@pytest.mark.timeout(60)
def test_a_replayed_submit_is_refused_in_its_own_session(keyed_cluster: FaultCluster, sockets: Any, markers: Path) -> None:
    _, rec = _signed_session(sockets(keyed_cluster.address), markers)
    submit = rec.sent[-1]
    rec.sock.send_multipart(submit)  # the captured, correctly signed Submit, again
    reply = next_reply(rec.sock)
    assert isinstance(reply, protocol.Error) and reply.code == protocol.ErrorCode.AUTH, reply
    assert_serving(keyed_cluster)  # later work went through the same manager and node
    assert len(tasks.attempts(str(markers), 0)) == 1  # the task did not run again


@pytest.mark.timeout(60)
def test_a_replayed_session_is_refused_on_a_new_connection(keyed_cluster: FaultCluster, sockets: Any, markers: Path) -> None:
    _, rec = _signed_session(sockets(keyed_cluster.address), markers)
    thief = sockets(keyed_cluster.address)
    thief.send_multipart(rec.sent[0])  # the captured Hello is accepted (it is only an introduction)...
    assert isinstance(next_reply(thief), protocol.Welcome)
    for parts in rec.sent[1:]:  # ...but what was signed in the old session is not
        thief.send_multipart(parts)
    # One unsigned refusal per connection per interval; the rest are dropped silently.
    reply = next_reply(thief)
    assert isinstance(reply, protocol.Error) and reply.code == protocol.ErrorCode.AUTH, reply
    assert_serving(keyed_cluster)  # later work went through the same manager and node
    assert len(tasks.attempts(str(markers), 0)) == 1


# --- size limits ----------------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_oversized_arguments_get_message_too_large_and_the_pool_goes_on(open_cluster: FaultCluster, sockets: Any) -> None:
    c = open_cluster
    big = b"x" * (LIMIT_MIB * 2 << 20)
    with dmp.Pool(address=c.address) as pool:
        with pytest.raises(MessageTooLargeError, match="limit"):
            pool.apply_async(len, (big,)).get(30)
        assert pool.map(len, [b"a", b"bb"]) == [1, 2]
    # A raw peer that ignores the limit the Welcome told it: ZeroMQ drops its connection.
    raw = sockets(c.address)
    raw.send_multipart([b"", hello()])
    assert isinstance(next_reply(raw), protocol.Welcome)
    raw.send_multipart([b"", protocol.encode(protocol.Submit(1, [[0, -1]]), [-1]), big])
    assert_serving(c)


@pytest.mark.timeout(60)
def test_oversized_result_fails_the_task_with_a_clear_error(open_cluster: FaultCluster) -> None:
    with dmp.Pool(address=open_cluster.address) as pool:
        with pytest.raises(MessageTooLargeError):
            pool.apply_async(bytes, (LIMIT_MIB * 2 << 20,)).get(15)
        assert pool.map(tasks.square, range(10)) == [x * x for x in range(10)]


# --- pickles from strangers ------------------------------------------------------------------------


class _Evil:
    """Unpickling this runs ``touch PATH``."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch {self.path}",))


def _evil(path: Path) -> bytes:
    return pickle.dumps(_Evil(path))


def _check_payload_is_live(tmp_path: Path) -> None:
    """Positive control: the payload does create its file when someone unpickles it."""
    control = tmp_path / "control"
    (tmp_path / "control.pickle").write_bytes(_evil(control))
    subprocess.run([sys.executable, "-c", f"import pickle; pickle.loads(open({str(tmp_path / 'control.pickle')!r}, 'rb').read())"],
                   check=True, timeout=30)
    assert control.exists()


@pytest.mark.timeout(60)
def test_a_strangers_pickle_is_never_loaded_by_a_keyed_manager(keyed_cluster: FaultCluster, sockets: Any, tmp_path: Path) -> None:
    c = keyed_cluster
    _check_payload_is_live(tmp_path)
    pwned = tmp_path / "pwned"
    evil = _evil(pwned)
    unsigned = sockets(c.address)
    forged = sockets(c.address)

    def body(msg: protocol.Message, frames: list[bytes]) -> list[bytes]:
        sz, physical = protocol.pack(frames)
        return [protocol.encode(msg, sz), *physical]

    messages = [
        body(protocol.Hello("client", "x", "h", 1), []),
        body(protocol.DefineJob(1, 1), [evil]),
        body(protocol.Submit(1, [[0, 1]]), [evil]),
        body(protocol.TaskDone([[1, 0, 0, 1, 0.0, ""]]), [evil]),
        body(protocol.ObjCreate(1, "host", "evil", []), [evil]),
        body(protocol.ObjCall(2, 1, "put", [], 0.0), [evil]),
        [evil],  # the pickle as the header
        [evil, evil],
    ]
    wrong = protocol.Signer(b"not the key")
    for parts in messages:
        unsigned.send_multipart([b"", *parts])
        unsigned.send_multipart([evil, *parts])  # the pickle as the signature
        forged.send_multipart([bytes(8) + wrong.sign(parts, bytes(8)), *parts])
    replies: dict[str, list[protocol.Message]] = {"unsigned": [], "forged": []}

    def both_refused() -> bool:
        replies["unsigned"] += drain(unsigned)
        replies["forged"] += drain(forged)
        return bool(replies["unsigned"] and replies["forged"])

    wait_for(both_refused, 30, "refusals on both sockets")
    assert_serving(c)  # a client served after them: the manager handled them all by now
    both_refused()
    every = replies["unsigned"] + replies["forged"]
    assert all(isinstance(r, protocol.Error) for r in every), every
    assert not pwned.exists()


@pytest.mark.timeout(90)
def test_a_rogue_manager_cannot_make_a_worker_load_its_pickle(tmp_path: Path, markers: Path) -> None:
    """Workers and nodes never listen; the only one who can talk to them is the
    manager they connect to. Play that manager, without the key: the worker
    drops every unsigned or forged message before decoding it. With the key
    (positive control) the same route does run a task."""
    _check_payload_is_live(tmp_path)
    pwned = tmp_path / "pwned"
    evil = _evil(pwned)
    ctx = zmq.Context()
    router = ctx.socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, 0)
    router.bind("tcp://127.0.0.1:0")
    chan = transport.Channel(router, KEY)
    node = FaultCluster(tmp_path / "node", authkey=KEY, address=router.getsockopt_string(zmq.LAST_ENDPOINT))
    try:
        node.start_node("node1", processes=1)
        idents: dict[str, bytes] = {}
        while len(idents) < 2:
            assert router.poll(20_000), "the node and its worker never said Hello"
            ident, msg, _ = chan.recv()
            if isinstance(msg, protocol.Hello):
                idents[msg.role] = ident  # type: ignore[index]
        worker, worker_pid = idents["worker"], node.wait_workers("node1")[0]
        # A well-formed Dispatch (runner and task both the pickle): only the signature is missing.
        sz, physical = protocol.pack([evil, evil])
        body = [protocol.encode(protocol.Dispatch([[1, 1, 0]], [[1, 1, 0, 1]]), sz), *physical]
        wrong = protocol.Signer(b"not the key")
        for to in (worker, idents["node"]):
            router.send_multipart([to, b"", *body])
            router.send_multipart([to, bytes(8) + wrong.sign(body, bytes(8)), *body])
            router.send_multipart([to, evil, *body])
            kill = [protocol.encode(protocol.SignalWorker(worker.decode(), worker_pid, signal.SIGKILL))]
            router.send_multipart([to, b"", *kill])
        # The worker's session with us, as a real manager would open it; then forged
        # messages inside it (no key: the attacker cannot compute the counters' MACs).
        nonce = chan.open_session(worker)
        chan.send(protocol.Welcome("w", 1.0, 1, 0, nonce), to=worker)
        while not chan.has_session(worker):  # the worker proves the key (a Heartbeat)
            assert router.poll(20_000), "the worker never answered its Welcome"
            chan.recv()
        router.send_multipart([worker, (1).to_bytes(8, "little") + wrong.sign(body, nonce + (1).to_bytes(8, "little")), *body])
        # Positive control: the same route with the key runs a task. The worker
        # handles its connection in order, so the forgeries were handled first.
        task = serialization.dumps((tasks.log_attempt, (str(markers), 0), {}), by_value=True)
        chan.send(protocol.Dispatch([[2, 0, 0]], [[2, 2, 0, len(task)]]), task, to=worker)
        wait_for(lambda: tasks.attempts(str(markers), 0), 30, "the signed task to run")
        assert not pwned.exists()
        assert alive(worker_pid) and node.worker_pids("node1") == [worker_pid]
    finally:
        node.stop()
        router.close()
        ctx.term()
