"""The manager reactor given bad task limits (DefineJob.timeout and .resources,
a node's Hello.resources): a clear Error naming the field, and no harm done."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import zmq

import dmp
from dmp.wire import protocol
from tests.rawpeer import raw_dealer, reply, send

pytestmark = pytest.mark.timeout(30)


def square(x: int) -> int:
    return x * x


@pytest.fixture
def pool() -> Iterator[dmp.Pool]:
    p = dmp.Pool(2)
    try:
        yield p
    finally:
        p.terminate()


@pytest.fixture
def raw(pool: Any) -> Iterator[Any]:
    with raw_dealer(pool) as sock:
        yield sock





@pytest.mark.parametrize("fields, says", [
    ({"timeout": -1.0}, "DefineJob.timeout"),
    ({"timeout": float("inf")}, "DefineJob.timeout"),
    ({"timeout": float("nan")}, "DefineJob.timeout"),
    ({"resources": {"GPU": 0}}, "DefineJob.resources"),
    ({"resources": {"1GPU": 1}}, "DefineJob.resources"),
    ({"resources": {"GPU": "1"}}, "DefineJob.resources"),
    ({"resources": {f"R{i}": 1 for i in range(65)}}, "DefineJob.resources"),
    ({"resources": {"G" * 65: 1}}, "DefineJob.resources"),
])
def test_bad_job_limits_get_a_clear_error(pool: dmp.Pool, raw: zmq.Socket, fields: dict[str, Any], says: str) -> None:
    send(raw, protocol.Hello("client", "bad", "h", 1, version=protocol.software_version()))
    assert isinstance(reply(raw), protocol.Welcome)
    send(raw, protocol.DefineJob(1, 0, 3, **fields))
    msg = reply(raw)
    assert isinstance(msg, protocol.Error) and msg.code == protocol.ErrorCode.BAD_MESSAGE and msg.ref == 1
    assert says in msg.text
    # The job was not defined: its tasks are refused, and the pool works on.
    send(raw, protocol.Submit(1, [[0, 0]]))
    msg = reply(raw)
    assert isinstance(msg, protocol.Error) and msg.code == protocol.ErrorCode.UNKNOWN_JOB
    assert pool.map(square, range(10)) == [x * x for x in range(10)]


def test_a_node_with_bad_resources_is_refused(pool: dmp.Pool, raw: zmq.Socket) -> None:
    send(raw, protocol.Hello("node", "n", "h", 1, version=protocol.software_version(), resources={"GPU": -1}))
    msg = reply(raw)
    assert isinstance(msg, protocol.Error) and "Hello.resources" in msg.text
    assert pool.map(square, range(10)) == [x * x for x in range(10)]
