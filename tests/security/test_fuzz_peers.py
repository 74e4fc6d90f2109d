"""Hostile input toward the peers that connect out (nodes, workers, clients).

tests/faults/test_hostile_input.py fuzzes the manager's socket; here a fake
manager fuzzes the other ends: a keyless one sends a real node and its
worker thousands of random and mangled messages (all must be dropped before
decoding, and the worker must still run a task for the real key afterwards),
and one with the key fuzzes a real client inside its authenticated session
(every bad header is refused with a dmp error; no thread dies of it).
Bounded by example count, never by wall-clock timeouts.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

import dmp
from dmp import serialization
from dmp.errors import ProcessError
from dmp.wire import handshake, protocol, transport
from tests.faults import tasks
from tests.faults.harness import FaultCluster, alive, wait_for
from tests.faults.test_hostile_input import mangled, random_headers

from .attacker import FakeManager
from .conftest import KEY

pytestmark = pytest.mark.timeout(300)

FUZZ = settings(
    max_examples=800, deadline=None, database=None, phases=[Phase.generate], suppress_health_check=list(HealthCheck),
)
messages = random_headers() | mangled() | st.lists(st.binary(max_size=64), min_size=1, max_size=5)


def _welcome(chan: transport.Channel, ident: bytes) -> None:
    """Answer the Hello just received from ``ident`` as the real manager would, and take the proof."""
    nonce = chan.open_session(ident)
    chan.send(protocol.Welcome(ident.hex(), 1.0, 1, 0, nonce), to=ident)
    while not chan.has_session(ident):
        assert chan.sock.poll(20_000), "the peer never proved the key"
        chan.recv()


def test_a_fake_manager_fuzzing_a_node_and_its_worker(tmp_path: Path, markers: Path) -> None:
    with FakeManager() as fake:
        node = FaultCluster(tmp_path / "node", authkey=KEY)
        node.address = fake.address
        try:
            proc = node.start_node("fuzzed", processes=1)
            node_ident, _ = fake.wait_hello(30, role="node")
            worker_ident, _ = fake.wait_hello(30, role="worker")
            worker_pid = node.wait_workers("fuzzed")[0]
            sent = 0

            @FUZZ
            @given(st.booleans(), messages)
            def send(to_worker: bool, parts: list[bytes]) -> None:
                nonlocal sent
                fake.send(worker_ident if to_worker else node_ident, parts or [b""])
                sent += 1
                if sent % 100 == 0:
                    while fake.recv(0):
                        pass
                    assert proc.poll() is None and alive(worker_pid)

            send()
            assert proc.poll() is None and alive(worker_pid) and node.worker_pids("fuzzed") == [worker_pid]
            # Positive control: for the real key, the same worker still joins and runs a task.
            chan = transport.Channel(fake.sock, KEY)
            ident = b""
            while ident != worker_ident:  # its next Hello (it backs off: up to 30 s)
                assert fake.sock.poll(60_000), "the worker stopped saying Hello"
                try:
                    ident, msg, _ = chan.recv()  # type: ignore[assignment]
                except transport.Refused:
                    continue
                if not isinstance(msg, protocol.Hello):
                    ident = b""
            _welcome(chan, worker_ident)
            task = serialization.dumps((tasks.log_attempt, (str(markers), 0), {}), by_value=True)
            chan.send(protocol.Dispatch([[1, 0, 0.0]], [[1, 1, 0, len(task)]]), task, to=worker_ident)
            wait_for(lambda: tasks.attempts(str(markers), 0), 20, "the worker to run a signed task")
        finally:
            node.stop()


@pytest.mark.filterwarnings("error::pytest.PytestUnhandledThreadExceptionWarning")
def test_a_fake_manager_with_the_key_fuzzing_a_client_in_its_session() -> None:
    with FakeManager() as fake:
        chan = transport.Channel(fake.sock, KEY)
        made: list[Any] = []
        opener = threading.Thread(target=lambda: made.append(dmp.Pool(1, address=fake.address, authkey=KEY)))
        opener.start()
        assert fake.sock.poll(20_000), "the client never said Hello"
        ident, hello, _ = chan.recv()
        assert isinstance(hello, protocol.Hello) and ident is not None
        _welcome(chan, ident)
        opener.join(20)
        pool = made[0]
        try:
            session = chan.keys.sessions[ident]

            @FUZZ
            @given(messages)
            def send(parts: list[bytes]) -> None:
                body = parts[1:] or [b""]
                session.sent += 1
                count = session.sent.to_bytes(8, "little")
                fake.send(ident, [count + chan.signer.sign(body, session.nonce + handshake.TO_PEER + count), *body])

            send()
            # Whatever the client made of it, a job now ends with a dmp error (or would
            # wait for a manager that never answers), never with a crash.
            try:
                pool.apply_async(str.upper, ("x",)).get(2)
            except ProcessError:
                pass
            except TimeoutError:
                pass
        finally:
            pool.terminate()
