"""Issue 10: which keys ride in a Process payload (docs/security.md, "Keys of a client's own managers").

A client (tests/managers/test_client_manager_remote.py's SCRIPT) starts two
managers of its own and a remote Process using their proxies, through a
RecordingProxy that keeps every message it sends the manager. On a keyed
cluster without CURVE no key of its own managers, neither the cluster's key nor
its current_process().authkey, is in any frame of its DefineJob or Submit. On a
keyless (loopback-only) cluster the managers' random keys do travel there: the
control that shows this inspection sees a key when one is sent.
"""

from __future__ import annotations

import secrets
from pathlib import Path

import pytest

from dmp.wire import protocol
from tests.managers.conftest import run_script
from tests.managers.test_client_manager_remote import SCRIPT

from .attacker import RecordingProxy
from .conftest import KEY, start

pytestmark = pytest.mark.timeout(180)


def payload_frames(proxy: RecordingProxy) -> list[bytes]:
    """Every frame of the DefineJob and Submit messages the client sent (header and payload)."""
    sent = proxy.sent_by(protocol.DefineJob) + proxy.sent_by(protocol.Submit)
    return [bytes(part) for _, parts in sent for part in parts]


@pytest.mark.parametrize("keyed", [True, False], ids=["keyed", "keyless"])
def test_what_keys_a_remote_process_payload_carries(tmp_path: Path, keyed: bool) -> None:
    cluster = start(tmp_path / "daemons", nodes=1, processes=1, authkey=KEY if keyed else None)
    own = secrets.token_hex(16) if keyed else ""
    try:
        with RecordingProxy(cluster.address) as proxy:
            env = {**cluster.env, "DMP_ADDRESS": proxy.address}
            if own:
                env["MGR_AUTHKEY"] = own
            proc = run_script(SCRIPT, env, timeout=120)
            frames = payload_frames(proxy)
    finally:
        cluster.stop()
    lines = {line.split()[0]: line.split()[1:] for line in proc.stdout.splitlines() if line.strip()}
    assert "exitcode" in lines, proc.stderr
    assert frames, "no DefineJob/Submit went through the proxy"
    blob = b"\0".join(frames)
    sync_key, mine_key, process_key = (bytes.fromhex(k) for k in lines["keys"])
    if keyed:
        assert lines["exitcode"] == ["1"]  # refused, and told why
        assert "DMP_AUTHKEY" in proc.stderr, proc.stderr
        assert sync_key == mine_key == own.encode()
        for secret in (own.encode(), KEY, process_key):
            assert secret not in blob
    else:
        assert lines["exitcode"] == ["0"], proc.stderr
        assert sync_key in blob and mine_key in blob and process_key in blob
