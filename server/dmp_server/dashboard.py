"""The manager's HTTP window (``dmp manager --dashboard HOST:PORT``): page, JSON, metrics, health.

    reactor --publish(status) every PUBLISH_S--> Board (one reference swap, no lock held by the reactor)
    HTTP thread (stdlib ThreadingHTTPServer) --reads the newest snapshot--> /, /api/status, /metrics, /health

The reactor never waits on HTTP: it hands over a fresh dict and goes on; the
server threads only read the newest one. Beyond loopback every route but
``/health`` needs the authkey, proven without sending it: the page fetches a
nonce, answers with HMAC-SHA256(key, nonce) and gets a session cookie;
Prometheus sends ``Authorization: Bearer TOKEN`` where TOKEN is
:func:`metrics_token` (a credential derived from the key that reads figures
and nothing else).
"""

from __future__ import annotations

import collections
import hashlib
import hmac
import itertools
import json
import logging
import secrets
import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Any

log = logging.getLogger("dmp.dashboard")

# How often the reactor hands the dashboard a new snapshot: the page polls
# every second, so twice a second keeps it fresh at the cost of one status
# dict per half second.
PUBLISH_S = 0.5
# Tasks-per-second history kept for the page's chart: ten minutes.
HISTORY_S = 600.0
# Dashboard sessions (cookies) last a working day; nonces a minute.
SESSION_S = 12 * 3600.0
NONCE_S = 60.0
MAX_SESSIONS = 1000
# The page runs in the manager's process: a stranger holding connections open
# must not pile up threads there. Each connection may idle this long, and at
# most this many are served at once (a browser tab needs one or two).
IDLE_S = 10.0
MAX_CONNECTIONS = 32


def metrics_token(key: bytes) -> str:
    """The bearer token that lets a scraper read ``/metrics`` (and only the dashboard)."""
    return hmac.new(key, b"dmp-dashboard-metrics", hashlib.sha256).hexdigest()


def login_proof(key: bytes, nonce: str) -> str:
    """What the page answers to ``nonce``: HMAC-SHA256(key, "dmp-dashboard-login:" + nonce), hex."""
    return hmac.new(key, f"dmp-dashboard-login:{nonce}".encode(), hashlib.sha256).hexdigest()


class Board:
    """The newest snapshot and the throughput history; written by the reactor, read by HTTP threads."""

    def __init__(self) -> None:
        self._snapshot: dict[str, Any] = {}
        self._history: collections.deque[tuple[float, int]] = collections.deque()
        self._lock = threading.Lock()  # guards the history only; never taken by the reactor for long

    def publish(self, status: dict[str, Any]) -> None:
        now = time.time()
        done = int(status.get("totals", {}).get("done", 0))
        with self._lock:
            self._history.append((now, done))
            while self._history and now - self._history[0][0] > HISTORY_S:
                self._history.popleft()
            self._snapshot = status

    def snapshot(self) -> dict[str, Any]:
        return self._snapshot

    def rates(self) -> list[list[float]]:
        """[[unix time, tasks per second], ...] between successive snapshots."""
        with self._lock:
            points = list(self._history)
        out = []
        for (t0, d0), (t1, d1) in itertools.pairwise(points):
            if t1 > t0:
                out.append([round(t1, 3), round(max(0, d1 - d0) / (t1 - t0), 2)])
        return out


def render_metrics(status: dict[str, Any]) -> str:
    """The snapshot in Prometheus' text exposition format (version 0.0.4)."""
    lines: list[str] = []

    def metric(name: str, kind: str, help_text: str, samples: list[tuple[dict[str, str], float]]) -> None:
        lines.append(f"# HELP {name} {help_text}")
        lines.append(f"# TYPE {name} {kind}")
        for labels, value in samples:
            text = ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items())
            lines.append(f"{name}{{{text}}} {value:g}" if text else f"{name} {value:g}")

    totals = status.get("totals", {})
    manager = status.get("manager", {})
    nodes = status.get("nodes", [])
    metric("dmp_info", "gauge", "Manager version (always 1).", [({"version": str(manager.get("version", ""))}, 1)])
    metric("dmp_uptime_seconds", "gauge", "Seconds since the manager started.", [({}, manager.get("uptime_s", 0))])
    for name, key, text in (
        ("dmp_tasks_done_total", "done", "Tasks that finished (returned or raised)."),
        ("dmp_tasks_failed_total", "failed", "Tasks whose outcome was an error (raised, lost or timed out)."),
        ("dmp_tasks_retried_total", "retried", "Task reruns after their worker process died."),
        ("dmp_workers_lost_total", "workers_lost", "Worker processes that died or vanished while joined."),
    ):
        metric(name, "counter", text, [({}, totals.get(key, 0))])
    for name, value, text in (
        ("dmp_slots", status.get("slots", 0), "Worker slots joined."),
        ("dmp_busy_slots", status.get("busy", 0), "Worker slots running a task."),
        ("dmp_queued_tasks", status.get("queued", 0), "Tasks waiting for a slot."),
        ("dmp_nodes", len(nodes), "Worker nodes joined."),
        ("dmp_clients", len(status.get("clients", [])), "Clients connected."),
    ):
        metric(name, "gauge", text, [({}, value)])
    metric("dmp_node_slots", "gauge", "Worker slots per node.",
           [({"node": n["name"], "host": n.get("host", "")}, n.get("slots", 0)) for n in nodes])
    metric("dmp_node_busy_slots", "gauge", "Busy worker slots per node.",
           [({"node": n["name"], "host": n.get("host", "")}, n.get("busy", 0)) for n in nodes])
    metric("dmp_node_tasks_done_total", "counter", "Tasks finished per node (by its current workers).",
           [({"node": n["name"], "host": n.get("host", "")}, n.get("tasks_done", 0)) for n in nodes])
    return "\n".join(lines) + "\n"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


class Dashboard:
    """Serves the board on ``host:port`` from daemon threads until :meth:`close`.

    Raises:
        OSError: the address cannot be bound (in use, or no such interface).
    """

    def __init__(self, host: str, port: int, board: Board, key: bytes | None, *, public: bool) -> None:
        self.board = board
        self.key = key
        self.public = public  # bound beyond loopback: every route but /health needs the key
        self._sessions: dict[str, float] = {}
        self._nonces: dict[str, float] = {}
        self._lock = threading.Lock()
        self.page = resources.files("dmp_server").joinpath("dashboard.html").read_bytes()
        handler = type("Handler", (_Handler,), {"dashboard": self})
        self.server = _BoundedServer((host, port), handler)
        self.server.daemon_threads = True
        address = self.server.server_address
        self.host, self.port = str(address[0]), int(address[1])
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.5},
                                       name="dmp-dashboard", daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    # --- authentication (beyond loopback only) ------------------------------

    def _issue(self, store: dict[str, float], token: str, ttl: float) -> str:
        """Remember ``token`` as issued now, dropping expired ones and, past MAX_SESSIONS, the oldest."""
        now = time.monotonic()
        with self._lock:
            for old in [k for k, t in store.items() if now - t >= ttl]:
                del store[old]
            if len(store) >= MAX_SESSIONS:
                store.pop(next(iter(store)))
            store[token] = now
        return token

    def new_nonce(self) -> str:
        return self._issue(self._nonces, secrets.token_hex(16), NONCE_S)

    def login(self, nonce: str, proof: str) -> str | None:
        """A session id if ``proof`` answers a live ``nonce`` (each nonce answers once)."""
        with self._lock:
            issued = self._nonces.pop(nonce, None)
        if issued is None or time.monotonic() - issued > NONCE_S or self.key is None:
            return None
        if not hmac.compare_digest(login_proof(self.key, nonce), proof):
            return None
        return self._issue(self._sessions, secrets.token_urlsafe(32), SESSION_S)

    def allowed(self, cookie: str | None, authorization: str | None) -> bool:
        if not self.public:
            return True
        if self.key is None:
            return False
        if authorization and authorization.startswith("Bearer "):
            return hmac.compare_digest(authorization[len("Bearer "):].strip(), metrics_token(self.key))
        session = _cookie(cookie, "dmp_session")
        if session is None:
            return False
        with self._lock:
            started = self._sessions.get(session)
        return started is not None and time.monotonic() - started < SESSION_S


def _cookie(header: str | None, name: str) -> str | None:
    for part in (header or "").split(";"):
        key, _, value = part.strip().partition("=")
        if key == name and value:
            return value
    return None


class _BoundedServer(ThreadingHTTPServer):
    """A thread per connection, but never more than MAX_CONNECTIONS of them."""

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler]) -> None:
        super().__init__(address, handler)
        self._slots = threading.BoundedSemaphore(MAX_CONNECTIONS)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            self.shutdown_request(request)  # busy: this connection is closed at once
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()


class _Handler(BaseHTTPRequestHandler):
    dashboard: Dashboard
    server_version = "dmp-dashboard"
    protocol_version = "HTTP/1.1"
    timeout = IDLE_S  # an idle or trickling connection is closed

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s %s", self.address_string(), format % args)

    def _send(self, status: int, body: bytes, ctype: str, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(body)

    def _json(self, value: Any, status: int = HTTPStatus.OK, headers: dict[str, str] | None = None) -> None:
        self._send(status, json.dumps(value).encode(), "application/json", headers)

    def do_GET(self) -> None:
        d = self.dashboard
        path = self.path.split("?", 1)[0]
        if path == "/health":
            ok = bool(d.board.snapshot())
            self._send(HTTPStatus.OK if ok else HTTPStatus.SERVICE_UNAVAILABLE,
                       b"ok\n" if ok else b"starting\n", "text/plain; charset=utf-8")
            return
        if path == "/":
            self._send(HTTPStatus.OK, d.page, "text/html; charset=utf-8",
                       {"Content-Security-Policy": "default-src 'self'; script-src 'self' 'unsafe-inline'; "
                        "style-src 'self' 'unsafe-inline'; frame-ancestors 'none'"})
            return
        if path == "/api/auth":
            self._json({"required": d.public and not d.allowed(self.headers.get("Cookie"), None),
                        "nonce": d.new_nonce() if d.public else None})
            return
        if not d.allowed(self.headers.get("Cookie"), self.headers.get("Authorization")):
            self._json({"error": "the dashboard needs the manager's authkey"}, HTTPStatus.UNAUTHORIZED)
            return
        if path == "/api/status":
            self._json(d.board.snapshot())
        elif path == "/api/history":
            self._json({"tasks_per_s": d.board.rates()})
        elif path == "/metrics":
            self._send(HTTPStatus.OK, render_metrics(d.board.snapshot()).encode(),
                       "text/plain; version=0.0.4; charset=utf-8")
        else:
            self._json({"error": f"no such page: {path}"}, HTTPStatus.NOT_FOUND)

    def do_POST(self) -> None:
        d = self.dashboard
        if self.path != "/api/login":
            self._json({"error": f"no such page: {self.path}"}, HTTPStatus.NOT_FOUND)
            return
        try:
            length = int(self.headers.get("Content-Length", "0"))
            if not 0 < length <= 4096:
                raise ValueError("bad length")
            body = json.loads(self.rfile.read(length))
            nonce, proof = str(body["nonce"]), str(body["proof"])
        except (ValueError, KeyError, TypeError):
            self._json({"error": "expected JSON {nonce, proof} of at most 4 KiB"}, HTTPStatus.BAD_REQUEST)
            return
        session = d.login(nonce, proof)
        if session is None:
            self._json({"error": "wrong authkey"}, HTTPStatus.FORBIDDEN)
            return
        self._json({"ok": True}, headers={
            "Set-Cookie": f"dmp_session={session}; HttpOnly; SameSite=Strict; Path=/; Max-Age={int(SESSION_S)}"})
