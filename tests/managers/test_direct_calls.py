"""Direct-route calls with cached headers and plain pickle first (dmp.wire.directcall,
serialization.dumps_quick): what only cloudpickle can send still round-trips, in local
and cluster mode, and a cached header is never trusted beyond what decode would accept.

Real managers, object hosts and unix sockets; the cluster twin runs a `dmp manager`
daemon on loopback (its object host is a separate interpreter, not a fork of the client).
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import textwrap
import types
from pathlib import Path

import cloudpickle
import pytest

import dmp
from dmp import serialization
from dmp.client import directlink, proxylink
from dmp.wire import direct, directcall, protocol
from tests.daemons import ROOT, Daemons

# --- the rule: plain pickle's bytes only where they mean what cloudpickle's would -------------


def test_plain_data_is_plain_pickle() -> None:
    obj = ((3, "k"), {"x": [1.5, b"ab", None]})
    assert serialization.dumps_quick(obj) == [pickle.dumps(obj, protocol=5)]


def test_lambda_and_closure_go_by_cloudpickle() -> None:
    n = 7
    frames = serialization.dumps_quick(((lambda x: x + n), {}))
    f, _ = serialization.loads(frames)
    assert f(1) == 8


def test_main_globals_go_by_value() -> None:
    """A function plain pickle would name as ``__main__.f`` goes by value: the receiver may lack it."""
    main = sys.modules["__main__"]
    f = types.FunctionType((lambda: 41).__code__, {}, "dmp_quick_probe")
    f.__module__, f.__qualname__ = "__main__", "dmp_quick_probe"
    main.dmp_quick_probe = f  # type: ignore[attr-defined]
    try:
        assert b"__main__" in pickle.dumps(f, protocol=5)  # plain pickle would send a reference
        frames = serialization.dumps_quick(((f,), {}))
    finally:
        del main.dmp_quick_probe  # type: ignore[attr-defined]
    (back,), _ = serialization.loads(frames)  # no __main__.dmp_quick_probe now: by value it is
    assert back() == 41


def test_modules_sent_by_value_disable_the_shortcut() -> None:
    from tests.managers import conftest as module

    assert serialization.dumps_quick(module.start_daemon) == [
        pickle.dumps(module.start_daemon, protocol=5)
    ]
    cloudpickle.register_pickle_by_value(module)
    try:
        frames = serialization.dumps_quick(module.start_daemon)
    finally:
        cloudpickle.unregister_pickle_by_value(module)
    assert frames != [pickle.dumps(module.start_daemon, protocol=5)]
    assert serialization.loads(frames).__name__ == "start_daemon"


def test_large_buffers_still_travel_out_of_band() -> None:
    big = b"x" * serialization.OOB_THRESHOLD
    frames = serialization.dumps_quick(((1, big), {}))
    assert len(frames) == 2 and bytes(frames[1]) == big
    assert serialization.loads(frames) == ((1, big), {})


# --- round trips through the host, local and cluster ------------------------------------------

SCRIPT = textwrap.dedent("""
    import sys
    import dmp
    from dmp.client import directlink, proxylink

    if __name__ == "__main__":
        address = sys.argv[1] if len(sys.argv) > 1 else None
        m = dmp.Manager(address=address, authkey=sys.argv[2].encode() if address else None)
        d = m.dict()
        d["warm"] = 1  # granted: calls go to the object host directly

        # Defined after the manager started: a forked local host never saw them.
        def double(x):
            return 2 * x

        class Point:
            def __init__(self, x, scale):
                self.x, self.scale = x, scale

            def value(self):
                return self.scale(self.x)

        base = 10
        d["lambda"] = lambda x: x + base
        d["main_fn"] = double
        d["point"] = Point(4, lambda v: v * base)
        d["nested"] = {"f": double, "xs": [1, 2, 3]}
        assert d["lambda"](1) == 11
        assert d["main_fn"](21) == 42
        assert d["point"].value() == 40
        assert d["nested"]["f"](d["nested"]["xs"][2]) == 6
        assert d.get("main_fn")(5) == 10
        route = proxylink.existing(d._token.address).direct[d._token.id]
        assert route in directlink._local.socks, "the calls did not take the direct route"
        lst = m.list([double])
        lst.append(lambda: "hi")
        assert lst[0](3) == 6 and lst[1]() == "hi"
        ns = m.Namespace()
        ns.fn = double
        assert ns.fn(8) == 16
        m.shutdown() if address is None else None
        print("ok")
""")


def _run(tmp_path: Path, *args: str) -> None:
    script = tmp_path / "by_value.py"
    script.write_text(SCRIPT)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "server")]))
    out = subprocess.run(
        [sys.executable, str(script), *args], capture_output=True, text=True, timeout=120, env=env
    )
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-3000:]


def test_main_functions_lambdas_closures_round_trip_local(tmp_path: Path) -> None:
    _run(tmp_path)


def test_main_functions_lambdas_closures_round_trip_cluster(tmp_path: Path) -> None:
    d = Daemons(tmp_path / "daemon", authkey=b"by-value key")
    d.start(nodes=0)
    try:
        _run(tmp_path, d.address, "by-value key")
    finally:
        d.stop()


# --- a cached header is looked up by its bytes and checked against the payload length ---------


def _connect(d: object) -> tuple[str, bytes | None]:
    token = d._token  # type: ignore[attr-defined]
    conn = proxylink.existing(token.address)
    assert conn is not None
    return conn.direct[token.id], conn.key


def test_a_known_header_with_another_payload_length_is_refused(
    manager: dmp.managers.SyncManager,
) -> None:
    d = manager.dict()
    d["k"] = 5
    address, key = _connect(d)
    sock = direct.connect(address, key)
    try:
        frames = serialization.dumps((("k",), {}))
        status, out = directcall.call(sock, direct.Reader(), d._token.id, "__getitem__", frames)  # type: ignore[attr-defined]
        assert status == protocol.ObjStatus.OK and serialization.loads(out) == 5
        # The same header bytes (now cached by the host's connection), one byte more payload.
        message = b"".join(
            bytes(b) for b in direct.encode(protocol.ObjCall(0, d._token.id, "__getitem__"), frames)
        )  # type: ignore[attr-defined]
        hlen, plen = direct._PREFIX.unpack_from(message, 0)
        sock.sendall(direct._PREFIX.pack(hlen, plen + 1) + message[direct._PREFIX.size :] + b".")
        sock.settimeout(10)
        assert sock.recv(1) == b""  # the host dropped this connection
    finally:
        sock.close()
    assert d["k"] == 5  # and serves the others


def test_replies_of_every_kind_through_the_cached_path(manager: dmp.managers.SyncManager) -> None:
    d = manager.dict()

    def through_the_manager(*args: object, **kwds: object) -> None:
        raise AssertionError("a call went through the manager, not the direct route")

    d._request = through_the_manager  # type: ignore[attr-defined]
    for i in range(3):  # the second and third replies come from the caches on both sides
        d[i] = i * i
        assert d[i] == i * i
        with pytest.raises(KeyError):
            d[f"missing {i}"]
        assert d.get(i + 100, "dflt") == "dflt"
    assert directlink._local.socks  # direct all along
    assert d.pop(2) == 4 and len(d) == 2
    # Sizes across the read paths: one short read (bytes), a view, more than the first
    # read brings (in band, a str), and out-of-band buffers (several frames).
    for value in (
        "s" * 3000,
        "m" * 50_000,
        "l" * 300_000,
        b"b" * 300_000,
        [b"x" * 70_000, b"y" * 70_000],
    ):
        d["v"] = value
        assert d["v"] == value
        assert d.get("v") == value
    assert directlink._local.socks


def test_a_method_name_that_is_not_a_str_is_refused_here(manager: dmp.managers.SyncManager) -> None:
    """Refused by the caller, as multiprocessing's server would: the direct route stays up."""
    d = manager.dict()
    with pytest.raises(TypeError, match="method name must be a str, not int"):
        d._callmethod(123)  # type: ignore[arg-type]
    d["k"] = 1
    assert d["k"] == 1
    address = d._conn().direct.get(d._token.id)  # type: ignore[attr-defined]
    assert address is not None and address not in directlink._unreachable
