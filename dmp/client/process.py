"""``dmp.Process``: multiprocessing's Process, forked locally or run on a node.

Local mode is the standard library's fork-started process (same pid,
sentinel, exitcode and ``current_process`` semantics). In cluster mode
``start()`` sends the process object (cloudpickle, by value) to the manager
as a one-task job; a worker announces it (pid), runs ``run()``, retires, and
the exit code comes back. ``_ClusterPopen`` stands in for multiprocessing's
Popen object, so join/is_alive/exitcode/terminate/kill/sentinel keep their
standard meaning.

    start() -> DefineJob(RunProcess, idle_only) + Submit -> manager -> an idle worker
    worker --TaskStarted(pid)--> manager --JobTaskStarted(pid)--> client
    worker --TaskOutput--> manager --JobOutput--> client's stdout
    worker --TaskDone(exit code)--> manager --JobResults--> client  (or LOST: the signal's exit code)
    terminate()/kill() -> SignalJob -> manager -> node -> os.kill(worker pid)
                          (no worker has it yet: withdrawn, so it never runs; CANCELLED)
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from dmp import _config, context, serialization
from dmp.client import mgrkeys, proxylink
from dmp.client.sink import Sink
from dmp.node import runners
from dmp.wire import transport
from dmp.wire.protocol import Status

_ForkProcess: Any = multiprocessing.get_context("fork").Process

# How long reading ``pid`` (and start() with ``resources=``, to hear of a
# refusal) waits for a worker to pick the process up; a busy cluster may run
# it later. start() itself never waits for a free slot, as in multiprocessing.
START_WAIT_S = 5.0


class Process(_ForkProcess):  # type: ignore[misc]
    """A process running ``target(*args, **kwargs)``; subclass and override ``run`` as usual.

    Locally it starts with the start method in force (``dmp.set_start_method``),
    or its context's (``dmp.get_context(method).Process``). With an address
    (``address=``, ``dmp.connect()`` or ``DMP_ADDRESS``) the target runs on a
    worker node of that cluster; ``start()``, ``join()``, ``terminate()``,
    ``kill()``, ``exitcode`` and ``sentinel`` behave as in ``multiprocessing``,
    and the target's output reaches this process.

    Raises:
        ValueError: (constructor) a malformed address. From ``start()``, as
            ``multiprocessing``: ``AssertionError`` when started twice, and in
            cluster mode ``ManagerUnavailableError`` when no manager answered or
            ``AuthenticationError`` when it refused the authkey.
    """

    _start_method: str | None = None

    def __init__(
        self,
        group: None = None,
        target: Callable[..., Any] | None = None,
        name: str | None = None,
        args: Iterable[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
        *,
        daemon: bool | None = None,
        address: object = None,
        resources: dict[str, float] | None = None,
    ) -> None:
        """``resources``: run on a node with that much free, held while it runs
        (cluster mode only). Raises ValueError for bad ``resources``, or
        resources without a cluster; ``start()`` raises ValueError when no
        joined node has them."""
        super().__init__(group, target, name, tuple(args), dict(kwargs or {}), daemon=daemon)
        self._dmp_target = _config.resolve(address)
        self._dmp_resources = _config.check_resources(resources)
        if self._dmp_resources and self._dmp_target.address is None:
            raise ValueError("resources= needs a cluster whose nodes declare them (dmp worker --resources)")

    @staticmethod
    def _Popen(process_obj: Any) -> Any:
        target = getattr(process_obj, "_dmp_target", None)
        if target is not None and target.address is not None:
            return _ClusterPopen(process_obj, target)
        method = getattr(process_obj, "_start_method", None) or context.get_start_method()
        return context.stdlib_context(method).Process._Popen(process_obj)


class ForkProcess(Process):
    _start_method = "fork"


class SpawnProcess(Process):
    _start_method = "spawn"


class ForkServerProcess(Process):
    _start_method = "forkserver"


_BY_METHOD = {"fork": ForkProcess, "spawn": SpawnProcess, "forkserver": ForkServerProcess}


def process_class(method: str | None) -> type[Process]:
    """dmp's Process class for a start method (``None``: the one in force when started)."""
    return _BY_METHOD[method] if method else Process


class _ClusterPopen(Sink):
    """multiprocessing's Popen interface for a process running on a worker node; its job's sink."""

    method = "dmp-cluster"

    def __init__(self, process_obj: Any, target: _config.Target) -> None:
        from dmp.client.engine import shared_cluster

        self.returncode: int | None = None
        self._pid: int | None = None
        self.node = ""
        self._started = threading.Event()
        self._done = threading.Event()
        self.sentinel, self._write_end = os.pipe()
        engine = shared_cluster(target.address or "", target.authkey)
        self._session = engine.session
        address = target.address or ""
        grant = mgrkeys.grant(
            address, target.authkey, proxylink.known_keys(), transport.curve_enabled(), transport.server_keys()
        )
        runner = serialization.dumps(runners.RunProcess.of(process_obj, grant), by_value=True)
        self._refused: str | None = None
        self._signum = 0  # the signal terminate()/kill() asked for
        resources = getattr(process_obj, "_dmp_resources", None)
        self._job = self._session.new_job(self, runner, 0, 0.0, resources, idle_only=True)
        self._session.submit(self._job, [(0, serialization.dumps(None, by_value=True))])
        self._session.end_job(self._job)
        if resources:
            # A refusal (no joined node has them) comes back at once; wait for it or the start.
            self._started.wait(START_WAIT_S)
        if self._refused is not None:
            raise ValueError(self._refused)

    @property
    def pid(self) -> int | None:
        """The worker's pid once one runs the process: waits up to START_WAIT_S
        for that (every slot may be busy), then None until it starts."""
        if self._pid is None:
            self._started.wait(START_WAIT_S)
        return self._pid

    # --- session sink ------------------------------------------------------

    def on_started(self, pid: int, node: str) -> None:
        self._pid, self.node = pid, node
        self._started.set()

    def on_result(self, task_id: int, status: Status, frames: list[Any], info: Any) -> bool:
        if status == Status.OK:
            code = serialization.loads(frames)
            self._finish(code if isinstance(code, int) else 1)
        elif status == Status.LOST and isinstance(info, list) and len(info) in (4, 5):
            self._pid = self._pid or int(info[2] or 0) or None
            self._finish(int(info[3]) if info[3] is not None else -signal.SIGKILL)
        elif status == Status.REFUSED:
            self._refused = str(info)
            self._finish(1)
        elif status == Status.CANCELLED and self._signum:
            self._finish(-self._signum)  # withdrawn before any worker ran it (_signal)
        else:
            self._finish(1)
        return True

    def on_failure(self, exc: BaseException) -> None:
        # The manager went away: the process's fate is unknown; report it dead.
        self._finish(-signal.SIGKILL)

    def _finish(self, code: int) -> None:
        if self._done.is_set():
            return
        self.returncode = code
        self._started.set()
        self._done.set()
        os.close(self._write_end)  # the sentinel becomes readable

    # --- Popen interface -----------------------------------------------------

    def poll(self, flag: int = os.WNOHANG) -> int | None:
        if flag != os.WNOHANG:
            self._done.wait()
        return self.returncode

    def wait(self, timeout: float | None = None) -> int | None:
        self._done.wait(timeout)
        return self.returncode

    def terminate(self) -> None:
        self._signal(signal.SIGTERM)

    def kill(self) -> None:
        self._signal(signal.SIGKILL)

    def _signal(self, signum: int) -> None:
        if self._done.is_set():
            return
        # The manager decides: the worker running it gets the signal; one not given to a
        # worker yet (every slot may be busy) is withdrawn, so it never runs, as a signal
        # kills a process before it gets anywhere, and its CANCELLED answer means -signum.
        # (Our JobTaskStarted may come after what the process did through other paths.)
        self._signum = signum
        self._session.signal_job(self._job, signum)

    def close(self) -> None:
        try:
            os.close(self.sentinel)
        except OSError:
            pass


current_process = multiprocessing.current_process
"""The ``Process`` object of this process (``multiprocessing.current_process``). Never raises."""
active_children = multiprocessing.active_children
"""The live children of this process, joining finished ones (``multiprocessing.active_children``)."""
parent_process = multiprocessing.parent_process
"""The parent's ``Process`` object, or None in the main process (``multiprocessing.parent_process``)."""
