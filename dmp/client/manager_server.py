"""The manager process: what ``BaseManager.start()`` forks and ``get_server()`` serves.

    start() --fork--> run_server: the dmp_server reactor (ipc:// by default, or
        the address given), its object host forked from it on first need,
        inheriting this process's registered callables; says where it listens
        (and, under CURVE, the public key of the key pair it made) on a pipe,
        then serves until SIGTERM
    get_server().serve_forever(): the same reactor in this process
    finalize_manager: the manager's owner is gone or shut down: SIGTERM, then kill
"""

from __future__ import annotations

import os
import signal
import threading
from typing import Any

from dmp.client import proxies
from dmp.client.registry import Registration
from dmp.node import objhost
from dmp.wire import transport
from dmp.wire.address import is_loopback

# Seconds start() waits for the forked manager process to say where it listens.
START_TIMEOUT_S = 30.0


class Server:
    """What ``get_server()`` returns: ``serve_forever()`` runs the manager in this process."""

    def __init__(self, registry: dict[str, Registration], address: str, authkey: bytes | None) -> None:
        self.registry = registry
        self.address = address
        self.authkey = authkey
        self._daemon: Any = None

    def serve_forever(self) -> None:
        """Serve until SIGINT or SIGTERM (or :meth:`stop` from another thread).

        Raises:
            ValueError: a non-loopback address without an authkey.
        """
        daemon = make_daemon(self.registry, self.address, self.authkey)
        self._daemon = daemon
        self.address = daemon.endpoints[0]
        previous = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                previous[sig] = signal.signal(sig, lambda *_: daemon.stop())
        try:
            daemon.run()
        finally:
            daemon.objects.launcher.stop()
            for sig, handler in previous.items():  # the caller's handlers again (Ctrl-C raises as before)
                signal.signal(sig, handler)

    def stop(self) -> None:
        """Make :meth:`serve_forever` return (from another thread). Never raises."""
        if self._daemon is not None:
            self._daemon.stop()


def make_daemon(registry: dict[str, Registration], address: str, key: bytes | None) -> Any:
    from dmp_server.daemon import Daemon

    if key is None and not is_loopback(address):
        raise ValueError(
            f"refusing to serve {address} without an authkey: anyone who can reach it could run "
            "code in the object host. Pass authkey=..., set DMP_AUTHKEY, or bind to 127.0.0.1."
        )
    daemon = Daemon(bind=[address], key=key)
    daemon.objects.launcher = objhost.ForkLauncher(daemon.host_endpoint, key, registry, daemon.endpoints[0])
    return daemon


def run_server(registry: dict[str, Registration], address: str, key: bytes | None, writer: Any,
                initializer: Any, initargs: tuple[Any, ...]) -> None:
    """The body of the manager process that start() forks."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for the user's process, as in multiprocessing
    transport.forget_context_after_fork()
    if initializer is not None:
        initializer(*initargs)
    try:
        # Under CURVE this process has only the cluster's public key: it serves
        # with a key pair of its own, whose public key its owner hands its peers.
        public = transport.use_own_curve_server() if transport.curve_enabled() else None
        daemon = make_daemon(registry, address, key)
    except Exception as exc:
        writer.send(("error", f"{type(exc).__name__}: {exc}"))
        writer.close()
        return
    signal.signal(signal.SIGTERM, lambda *_: daemon.stop())
    writer.send(("ok", (daemon.endpoints[0], public)))
    writer.close()
    try:
        daemon.run()
    finally:
        daemon.objects.launcher.stop()


def finalize_manager(process: Any, address: str, creator: int, timeout: float) -> None:
    if os.getpid() != creator:
        return  # a forked child must not stop its parent's manager
    proxies.forget(address)
    if process.exitcode is None:
        try:
            os.kill(process.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        process.join(timeout)
        if process.exitcode is None:
            process.kill()
            process.join(timeout)
