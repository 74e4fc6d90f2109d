"""The dashboard's HTTP side on real sockets: routes, metrics format, and the key beyond loopback.

The board is fed by hand here; tests/dashboard/test_browser.py drives the
real manager and a real browser.
"""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterator
from typing import Any

import pytest
from dmp_server.dashboard import Board, Dashboard, login_proof, metrics_token, render_metrics

pytestmark = pytest.mark.timeout(60)

KEY = b"s3cret-key"
STATUS: dict[str, Any] = {
    "manager": {"address": "tcp://127.0.0.1:5555", "version": "9.9.9", "uptime_s": 12.5},
    "slots": 4, "busy": 3, "queued": 17,
    "totals": {"done": 120, "failed": 2, "retried": 1, "workers_lost": 1},
    "nodes": [{"name": "gpu \"one\"", "host": "10.0.0.7", "slots": 4, "busy": 3, "tasks_done": 120,
               "last_heartbeat_s": 0.3, "version": "9.9.9"}],
    "clients": [{"id": "c-1", "name": "job.py", "host": "10.0.0.9", "queued": 17, "running": 3,
                 "done": 120, "failed": 2, "retried": 1}],
}


def request(d: Dashboard, method: str, path: str, body: bytes | None = None,
            headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", d.port, timeout=10)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


@pytest.fixture
def local() -> Iterator[Dashboard]:
    board = Board()
    board.publish(STATUS)
    d = Dashboard("127.0.0.1", 0, board, None, public=False)
    yield d
    d.close()


@pytest.fixture
def public() -> Iterator[Dashboard]:
    # Bound to loopback for the test, but told it is public: the same checks as on 0.0.0.0.
    board = Board()
    board.publish(STATUS)
    d = Dashboard("127.0.0.1", 0, board, KEY, public=True)
    yield d
    d.close()


def test_routes_on_loopback(local: Dashboard) -> None:
    status, headers, body = request(local, "GET", "/")
    assert status == 200 and headers["content-type"].startswith("text/html") and b"<canvas" in body
    status, _, body = request(local, "GET", "/api/status")
    assert status == 200 and json.loads(body) == STATUS
    assert request(local, "GET", "/health")[:1] == (200,)
    status, headers, body = request(local, "GET", "/metrics")
    assert status == 200 and headers["content-type"].startswith("text/plain; version=0.0.4")
    assert request(local, "GET", "/nope")[0] == 404


def test_health_is_503_until_the_first_snapshot() -> None:
    d = Dashboard("127.0.0.1", 0, Board(), None, public=False)
    try:
        assert request(d, "GET", "/health")[0] == 503
        d.board.publish(STATUS)
        assert request(d, "GET", "/health")[0] == 200
    finally:
        d.close()


def test_metrics_parse_with_prometheus_client_and_carry_every_figure(local: Dashboard) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    body = request(local, "GET", "/metrics")[2].decode()
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for fam in text_string_to_metric_families(body) for s in fam.samples}
    flat = {name: value for (name, labels), value in samples.items() if not labels}
    assert flat["dmp_tasks_done_total"] == 120 and flat["dmp_tasks_failed_total"] == 2
    assert flat["dmp_tasks_retried_total"] == 1 and flat["dmp_workers_lost_total"] == 1
    assert (flat["dmp_slots"], flat["dmp_busy_slots"], flat["dmp_queued_tasks"]) == (4, 3, 17)
    assert (flat["dmp_nodes"], flat["dmp_clients"]) == (1, 1)
    node = (("host", "10.0.0.7"), ("node", 'gpu "one"'))
    assert samples[("dmp_node_busy_slots", node)] == 3
    assert samples[("dmp_info", (("version", "9.9.9"),))] == 1
    kinds = {fam.name: fam.type for fam in text_string_to_metric_families(body)}
    assert kinds["dmp_tasks_done"] == "counter" and kinds["dmp_slots"] == "gauge"


def test_metrics_of_an_empty_manager_parse() -> None:
    from prometheus_client.parser import text_string_to_metric_families

    assert list(text_string_to_metric_families(render_metrics({})))


def test_public_dashboard_refuses_without_the_key_but_answers_health(public: Dashboard) -> None:
    for path in ("/api/status", "/metrics", "/api/history"):
        assert request(public, "GET", path)[0] == 401, path
    assert request(public, "GET", "/health")[0] == 200
    status, _, body = request(public, "GET", "/")
    assert status == 200 and b"authkey" in body  # the page itself asks for the key
    auth = json.loads(request(public, "GET", "/api/auth")[2])
    assert auth["required"] is True and len(auth["nonce"]) == 32


def test_login_with_a_proof_of_the_key_gives_a_session(public: Dashboard) -> None:
    nonce = json.loads(request(public, "GET", "/api/auth")[2])["nonce"]
    body = json.dumps({"nonce": nonce, "proof": login_proof(KEY, nonce)}).encode()
    status, headers, _ = request(public, "POST", "/api/login", body, {"Content-Type": "application/json"})
    assert status == 200
    cookie = headers["set-cookie"].split(";")[0]
    assert "HttpOnly" in headers["set-cookie"] and "SameSite=Strict" in headers["set-cookie"]
    status, _, body = request(public, "GET", "/api/status", headers={"Cookie": cookie})
    assert status == 200 and json.loads(body)["slots"] == 4
    # A nonce answers once: replaying the same login gets nothing.
    replay = json.dumps({"nonce": nonce, "proof": login_proof(KEY, nonce)}).encode()
    assert request(public, "POST", "/api/login", replay)[0] == 403


def test_login_with_the_wrong_key_or_garbage_is_refused(public: Dashboard) -> None:
    nonce = json.loads(request(public, "GET", "/api/auth")[2])["nonce"]
    wrong = json.dumps({"nonce": nonce, "proof": login_proof(b"guess", nonce)}).encode()
    status, headers, _ = request(public, "POST", "/api/login", wrong)
    assert status == 403 and "set-cookie" not in headers
    assert request(public, "POST", "/api/login", b"{not json")[0] == 400
    assert request(public, "POST", "/api/login", b"x" * 5000)[0] == 400
    assert request(public, "GET", "/api/status", headers={"Cookie": "dmp_session=forged"})[0] == 401


def test_prometheus_reads_metrics_with_the_derived_bearer_token(public: Dashboard) -> None:
    ok = request(public, "GET", "/metrics", headers={"Authorization": f"Bearer {metrics_token(KEY)}"})
    assert ok[0] == 200 and b"dmp_slots 4" in ok[2]
    assert request(public, "GET", "/metrics", headers={"Authorization": "Bearer " + "0" * 64})[0] == 401
    assert metrics_token(KEY) != KEY.hex() and KEY.decode() not in metrics_token(KEY)


def test_history_gives_tasks_per_second_between_snapshots(local: Dashboard) -> None:
    board = local.board
    later = json.loads(json.dumps(STATUS))
    later["totals"]["done"] = 220
    board.publish(later)
    rates = json.loads(request(local, "GET", "/api/history")[2])["tasks_per_s"]
    assert rates and rates[-1][1] > 0


def test_idle_connections_cannot_pile_up_threads_in_the_manager(local: Dashboard) -> None:
    """A stranger holding connections open gets at most MAX_CONNECTIONS serving threads."""
    import socket
    import threading
    import time

    from dmp_server import dashboard

    before = threading.active_count()
    idle = [socket.create_connection(("127.0.0.1", local.port), timeout=5) for _ in range(dashboard.MAX_CONNECTIONS + 20)]
    try:
        deadline = time.monotonic() + 10
        while threading.active_count() - before < dashboard.MAX_CONNECTIONS and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)  # let any thread beyond the cap show up, were there one
        assert threading.active_count() - before <= dashboard.MAX_CONNECTIONS
    finally:
        for s in idle:
            s.close()
    # Once they are gone the dashboard serves again.
    deadline = time.monotonic() + 30
    while True:
        try:
            if request(local, "GET", "/health")[0] == 200:
                break
        except OSError:
            pass
        assert time.monotonic() < deadline, "the dashboard never served again"
        time.sleep(0.1)
