"""The rule for which keys of a client's own managers go with a remote Process (dmp.client.mgrkeys)."""

from __future__ import annotations

import multiprocessing

import pytest

from dmp.client import mgrkeys

CLUSTER = "tcp://10.0.0.1:7000"
pytestmark = pytest.mark.timeout(30)


def test_keyless_cluster_ships_every_key_and_the_process_authkey() -> None:
    g = mgrkeys.grant(CLUSTER, None, {"tcp://127.0.0.1:5": b"random", "ipc://@m": None}, curve=False)
    assert g.keys == {"tcp://127.0.0.1:5": b"random"}  # a keyless manager needs nothing
    assert g.authkey == bytes(multiprocessing.current_process().authkey)
    assert not g.withheld


def test_keyed_cluster_without_curve_ships_no_secret() -> None:
    known = {CLUSTER: b"cluster", "tcp://10.0.0.2:5": b"cluster", "tcp://10.0.0.2:6": b"own"}
    g = mgrkeys.grant(CLUSTER, b"cluster", known, curve=False)
    assert g.keys == {"tcp://10.0.0.2:5": mgrkeys.CLUSTER_KEY}  # the marker, not the key
    assert g.authkey is None
    assert set(g.withheld) == {"tcp://10.0.0.2:6"}
    why = g.withheld["tcp://10.0.0.2:6"]
    assert "DMP_AUTHKEY" in why and "CURVE" in why and "tcp://10.0.0.2:6" in why
    assert b"own" not in repr(g).encode() and b"cluster" not in repr(g).encode()


def test_curve_ships_own_keys_and_server_public_keys() -> None:
    g = mgrkeys.grant(CLUSTER, b"cluster", {"tcp://10.0.0.2:6": b"own"}, curve=True,
                      servers={"tcp://10.0.0.2:6": b"P" * 40})
    assert g.keys == {"tcp://10.0.0.2:6": b"own"}
    assert g.authkey is not None and not g.withheld
    assert g.servers == {"tcp://10.0.0.2:6": b"P" * 40}


def test_bind_address_is_the_interface_that_reaches_the_cluster() -> None:
    assert mgrkeys.bind_address("tcp://127.0.0.1:7000") == "tcp://127.0.0.1:0"
    assert mgrkeys.bind_address("tcp://[::1]:7000") == "tcp://[::1]:0"
    assert mgrkeys.bind_address("ipc:///tmp/dmp.sock") is None
    with pytest.raises(ValueError, match="cannot resolve"):
        mgrkeys.bind_address("tcp://no-such-host.invalid:7000")
