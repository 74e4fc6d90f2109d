"""The worker process: receive tasks, run them, send results or exceptions.

    manager --Dispatch(jobs, tasks)--> [runner cache] [task queue]
        run one task -> pickle result (or exception) -> batch
    manager <--TaskDone(batch)-- flushed when the queue runs dry, or every
        FLUSH_SECONDS / FLUSH_ITEMS while it is busy

Before each task the worker writes the task key (and, if its job has a
timeout, the task's deadline) into a small shared-memory slot
(dmp.node.slot) its supervisor reads, cleared once its queue runs dry (one
write per task), so that when the process dies the supervisor knows which task
killed it (the others queued here are requeued uncharged), and so that the
supervisor can kill a task that runs past its deadline, even one stuck in C.
"""

from __future__ import annotations

import _signal
import collections
import gc
import mmap
import os
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.pool import MaybeEncodingError  # type: ignore[attr-defined]
from typing import Any

from dmp import _config, serialization
from dmp.errors import MessageTooLargeError, ProtocolError
from dmp.node import forkproc, runners
from dmp.node.forward import Forward
from dmp.node.slot import SLOT
from dmp.wire import protocol, transport
from dmp.wire.peer import PeerLoop
from dmp.wire.pipechan import WorkerPipe, close_inherited

# Outcomes wait at most this long (or this many) in the worker before being
# sent, while more tasks are queued; an idle worker sends at once. Batching
# turns 100k tiny results into ~1k messages; the delay bounds added latency.
FLUSH_SECONDS = 0.001
FLUSH_ITEMS = 128
# ... or once they hold this many bytes: a large result leaves at once, while
# the next task runs, not behind it.
FLUSH_BYTES = 1 << 20
# Room left in a TaskDone message for its header and signature.
RESULT_HEADROOM = 64 * 1024
# A busy worker looks for new messages (ForgetJobs, Bye) every this many tasks,
# and before a task that would start this long (of task time) after the last look:
# a cancelled job's tasks queued behind a long task are dropped, never started.
DRAIN_EVERY = 32
DRAIN_SECONDS = 0.005
# An idle worker wakes at least this often to check its parent (and at
# each heartbeat, as often as the manager's Welcome says).
IDLE_POLL_SECONDS = 1.0
# Exit status of a worker or node the manager refused (wrong or missing key, other version).
EXIT_REFUSED = 3
# The runner of every job sent without one (a local pool's apply job): one object, not a
# LazyRunner made and asked per job (a fresh worker copies a page or two for each function it runs).
_NO_RUNNER = runners.LazyRunner([])

@dataclass(slots=True)
class WorkerConfig:
    """Everything a worker process needs, inherited through fork.

    A supervisor holds one as the template for all its workers; each worker
    gets a copy with its own ``worker_id`` and shared-memory ``slot``.
    """

    address: str
    node: str
    key: bytes | None = None
    initializer: Callable[..., Any] | None = None
    initargs: tuple[Any, ...] = ()
    max_tasks: int = 0
    by_value: bool = False  # cloudpickle results by value (cluster: nodes lack __main__)
    heartbeat: bool = False  # a node's worker: heartbeat, die with the node
    forward_output: bool = False  # send what tasks print to their client
    worker_id: str = ""
    slot: mmap.mmap | None = None
    pipe: socket.socket | None = None  # local mode, forked: our end of a pipe to the daemon (dmp.wire.pipechan)
    close_in_child: tuple[socket.socket, ...] = ()  # the daemon's ends of the pipes, to close once forked
    max_message: int = 0  # a pipe worker's manager limit (no Welcome tells it); others learn it from the Welcome
    loop: WorkerLoop | None = None  # a forked pipe worker's loop, made before the fork (see WorkerLoop)
    gc_frozen: bool = False  # froze the collector's objects as it was forked (forkproc.start_all, Supervisor._launch)
    parent: int = 0  # a forked worker's: the pid that forks it (0: whoever our parent is at start)

    def for_worker(self, worker_id: str, slot: mmap.mmap | None) -> WorkerConfig:
        """A copy of this template for one worker (what dataclasses.replace does, at a fraction of the cost)."""
        return WorkerConfig(self.address, self.node, self.key, self.initializer, self.initargs, self.max_tasks,
                            self.by_value, self.heartbeat, self.forward_output, worker_id, slot,
                            max_message=self.max_message)


def spawned_main(pickled: bytes, slot: mmap.mmap) -> None:
    """Entry point of a worker started by spawn or forkserver: its config
    travels cloudpickled (an initializer may be a lambda), its slot beside it."""
    import pickle

    cfg = pickle.loads(pickled)
    cfg.slot = slot
    worker_main(cfg)


def worker_main(cfg: WorkerConfig) -> None:
    """Entry point of a forked worker process; returns when it should exit."""
    if cfg.gc_frozen:
        gc.unfreeze()  # the objects the fork gave us are tracked as ever, in the oldest generation
    if cfg.pipe is None:  # (transport.context() checks the pid anyway; a pipe worker saves the call)
        transport.forget_context_after_fork()
    close_inherited(cfg.close_in_child)  # nobody but the daemon may hold them (see dmp.wire.pipechan)
    cfg.close_in_child = ()
    # The parent's handlers (a node's graceful-stop handler, say) are not ours:
    # SIGTERM ends a worker at once. (_signal's own functions: signal's wrappers
    # make enums, and every object a fresh fork touches costs it a page copy.)
    _signal.signal(_signal.SIGTERM, _signal.SIG_DFL)
    if cfg.heartbeat:
        if not forkproc.die_with_parent(cfg.parent):
            return  # our node died before we asked to die with it: nobody supervises us
        _config.remember_key(cfg.address, cfg.key)  # for proxies our tasks unpickle
    if cfg.initializer is not None:
        cfg.initializer(*cfg.initargs)
    # Started with SIGTERM blocked (see Supervisor.spawn): a pool closed at
    # once still lets its workers finish their initializer, as multiprocessing
    # does; a SIGTERM that came meanwhile takes effect now.
    _signal.pthread_sigmask(_signal.SIG_UNBLOCK, (_signal.SIGTERM,))
    worker = cfg.loop if cfg.loop is not None else WorkerLoop(cfg)
    cfg.loop = None
    if cfg.forward_output:
        sys.stdout = Forward(worker.output, "stdout")
        sys.stderr = Forward(worker.output, "stderr")
    try:
        worker.run()
    finally:
        # The process ends with os._exit, so atexit never runs: the proxy
        # connections our tasks made say their Bye here, and the manager lets
        # go of what they held (a Pipe end is closed) at once.
        proxylink = sys.modules.get("dmp.client.proxylink")
        if proxylink is not None:
            proxylink.close_all()
        # Without this, the last TaskDone and the Bye could die unsent in
        # ZeroMQ's queue (bounded by LINGER_MS). A pipe's writes are done already.
        if cfg.pipe is None:
            transport.context().term()
    if worker.exit_code:
        raise SystemExit(worker.exit_code)  # the manager refused our key or version


class WorkerLoop:
    """A worker process's peer and main loop: Dispatch in, tasks run in order, TaskDone out."""

    def __init__(self, cfg: WorkerConfig, parent: int = 0) -> None:
        """Made in the worker, or (a local pool's forked worker, ``parent`` its pid) by
        the pool's process just before the fork: the worker then finds its loop
        ready in a few pages, where making it would have copied a page for
        every object it touched."""
        self.cfg = cfg
        self.parent = parent or cfg.parent or os.getppid()
        # The manager does not heartbeat workers (our node answers for us, so we beat only every
        # WORKER_BEATS beats): its silence means nothing here; a refusal means Hello again, later.
        self.peer: PeerLoop | WorkerPipe
        if cfg.pipe is not None:
            self.peer = WorkerPipe(cfg.pipe)  # no Hello: the daemon joined us when it forked us
        else:
            hello = protocol.Hello(
                role=protocol.Role.WORKER,
                name=cfg.worker_id,
                host=socket.gethostname(),
                pid=os.getpid(),
                node=cfg.node,
                max_tasks=cfg.max_tasks,
            )
            self.peer = PeerLoop(cfg.address, cfg.key, hello, identity=cfg.worker_id.encode(),
                                 heartbeat=cfg.heartbeat, expects_beats=False, beat_every=_config.WORKER_BEATS)
        self.chan = self.peer.chan
        self.runners: dict[int, Any] = {}
        self.timeouts: dict[int, float] = {}  # job key -> each task's limit (seconds)
        self.queue: collections.deque[tuple[int, int, int, list[Any]]] = collections.deque()
        self.out_items: list[list[Any]] = []
        self.out_frames: list[Any] = []
        self.first_unflushed = 0.0  # time.perf_counter() when the batch's first task started
        self.last_end = 0.0  # ... and when the last task ended
        self.drained_at = 0.0  # last_end when drain() last looked for messages
        self.slot_busy = False  # the slot names a task (cleared only once the queue runs dry)
        self.done = 0
        self.stopping = False
        self.exit_code = 0  # EXIT_REFUSED: the manager refused our key or version
        self.current = -1  # key of the task running now
        self.max_message = cfg.max_message  # the manager's limit, from its Welcome (or our config, on a pipe)
        self.out_bytes = 0
        self.context = runners.TaskContext()  # a runner sets context.retire

    def run(self) -> None:
        self.peer.say_hello()
        max_tasks = self.cfg.max_tasks
        try:
            while not self.stopping:
                if not self.queue:
                    if self.slot_busy:
                        self.clear_slot()
                    if self.out_items:
                        self.flush()
                    if max_tasks and self.done >= max_tasks:
                        return
                    if not self.peer.poll(IDLE_POLL_SECONDS):
                        self.idle()
                        continue
                    # One message per poll, where drain()'s readable() would cost a system
                    # call per message; all after a long task (a ForgetJobs behind a Dispatch).
                    self.drain() if self.last_end - self.drained_at >= DRAIN_SECONDS else self.receive()
                elif self.done % DRAIN_EVERY == 0 or self.last_end - self.drained_at >= DRAIN_SECONDS:
                    self.drain()
                if self.queue:
                    self.run_one()
                    if self.out_items and (
                        len(self.out_items) >= FLUSH_ITEMS
                        or self.out_bytes >= FLUSH_BYTES
                        or self.last_end - self.first_unflushed >= FLUSH_SECONDS
                    ):
                        self.flush()
        finally:
            self.clear_slot()
            self.flush()
            # Said on the socket the results went out on, so the manager knows
            # every result is in before it hears of the exit from our supervisor.
            self.chan.send(protocol.Bye("worker exiting"))
            self.chan.close()

    def idle(self) -> None:
        if os.getppid() != self.parent:
            self.stopping = True  # our supervisor is gone
        else:
            self.peer.tick()  # heartbeat; or, refused or unanswered, Hello again (backoff)

    def drain(self) -> None:
        self.drained_at = self.last_end
        while self.chan.readable():
            self.receive()

    def receive(self) -> None:
        got = self.peer.receive()  # a refused one (not from our manager, garbled) is dropped
        if got is None:
            return
        msg, frames = got
        if isinstance(msg, protocol.Dispatch):
            pos = 0
            for job_key, nframes, timeout in msg.jobs:
                self.runners[job_key] = runners.LazyRunner(frames[pos : pos + nframes]) if nframes else _NO_RUNNER
                if timeout:
                    self.timeouts[job_key] = float(timeout)
                pos += nframes
            for key, job_key, attempt, nframes in msg.tasks:
                self.queue.append((key, job_key, attempt, frames[pos : pos + nframes]))
                pos += nframes
        elif isinstance(msg, protocol.ForgetJobs):
            gone = set(msg.jobs)
            for job_key in gone:
                self.runners.pop(job_key, None)
                self.timeouts.pop(job_key, None)
            if any(t[1] in gone for t in self.queue):
                self.queue = collections.deque(t for t in self.queue if t[1] not in gone)
        elif isinstance(msg, protocol.Welcome):
            self.max_message = msg.max_message
        elif isinstance(msg, protocol.Error) and msg.code in (protocol.ErrorCode.AUTH, protocol.ErrorCode.VERSION):
            print(f"dmp worker {self.cfg.worker_id}: the manager refused us: {msg.text}", file=sys.stderr)
            self.exit_code = EXIT_REFUSED
            self.stopping = True
        elif isinstance(msg, protocol.Bye):
            self.stopping = True

    def _where(self, key: int) -> str:
        """Where a task raised, for its traceback: only a node's workers say (local ones are the caller's)."""
        if not self.cfg.heartbeat:
            return ""
        return f"node {self.cfg.node!r} ({socket.gethostname()}), pid {os.getpid()}, task {key}"

    def clear_slot(self) -> None:
        """No task runs here now: once the queue runs dry (the next task's key overwrites it)."""
        if self.slot_busy and self.cfg.slot is not None:
            SLOT.pack_into(self.cfg.slot, 0, -1, 0, 0.0)
        self.slot_busy = False

    def run_one(self) -> None:
        key, job_key, attempt, frames = self.queue.popleft()
        self.current = key
        cfg = self.cfg
        slot = cfg.slot
        if slot is not None:
            timeout = self.timeouts.get(job_key, 0.0)
            SLOT.pack_into(slot, 0, key, attempt, time.monotonic() + timeout if timeout else 0.0)
            self.slot_busy = True
        t0 = time.perf_counter()
        if not self.out_items:
            # The batch's age counts from the start of its first task, so a
            # long task's result is sent as soon as it is done.
            self.first_unflushed = t0
        by_value = cfg.by_value
        status = protocol.Status.OK
        info = ""
        try:
            runner = self.runners.get(job_key)
            if runner is None:
                raise ProtocolError(f"task {key} names job {job_key} that this worker was never sent")
            task = serialization.loads(frames)
            fn = None if runner is _NO_RUNNER else runner.get()
            if fn is None:  # a local pool's apply job: no runner to send (runners.call, inline)
                func, args, kwds = task
                result = func(*args, **kwds)
            else:
                if fn.announce:
                    self.chan.send(protocol.TaskStarted(key, os.getpid(), self.cfg.node))
                result = fn(task, self.context)
        except BaseException as exc:  # a task's SystemExit is its result, not our exit
            if isinstance(exc, KeyboardInterrupt):
                raise
            if isinstance(exc, ImportError) and self.cfg.by_value:
                exc = _name_the_node(exc, self.cfg.node)
            status = protocol.Status.RAISED
            payload = serialization.dump_exception(exc, by_value=by_value, where=self._where(key))
        else:
            try:
                payload = serialization.dumps(result, by_value=by_value)
            except Exception as exc:
                status = protocol.Status.RAISED
                wrapped = MaybeEncodingError(exc, result)
                payload = serialization.dump_exception(wrapped, by_value=by_value)
        self.last_end = t1 = time.perf_counter()
        run_s = t1 - t0
        size = len(payload[0]) if len(payload) == 1 else sum(f.nbytes if isinstance(f, memoryview) else len(f) for f in payload)
        limit = self.max_message - RESULT_HEADROOM
        if self.max_message and size > limit:
            status = protocol.Status.RAISED
            payload = serialization.dump_exception(
                MessageTooLargeError(
                    f"the task's result of {size} bytes exceeds the manager's message limit of "
                    f"{self.max_message} bytes (dmp manager --max-message-mb)"
                ),
                by_value=by_value,
            )
            size = sum(len(f) for f in payload)
        if self.out_items and self.max_message and self.out_bytes + size > limit:
            self.flush()  # keep each TaskDone message under the limit
        if cfg.forward_output:
            sys.stdout.flush()
            sys.stderr.flush()
        self.current = -1
        if self.context.retire:
            self.stopping = True  # maxtasksperchild of a cluster pool: a fresh process next
        if cfg.heartbeat and os.getppid() != self.parent:
            self.stopping = True  # our node died while we ran: an orphan must not go on
        self.done += 1
        self.out_items.append([key, attempt, int(status), len(payload), run_s, info])
        self.out_frames.extend(payload)
        self.out_bytes += size

    def flush(self) -> None:
        if not self.out_items:
            return
        items, frames = self.out_items, self.out_frames
        self.out_items, self.out_frames = [], []
        self.out_bytes = 0
        if isinstance(self.chan, WorkerPipe):
            self.chan.send_done(items, frames)  # the same bytes, in fewer calls
        else:
            self.chan.send(protocol.TaskDone(items), frames)
        if sys.stdout is not None:
            sys.stdout.flush()

    def output(self, stream: str, text: str) -> None:
        """Lines a task printed go to the client that submitted it."""
        self.chan.send(protocol.TaskOutput(self.current, stream, text, f"{self.cfg.node} pid={os.getpid()}"))


def _name_the_node(exc: ImportError, node: str) -> ImportError:
    """Same exception type, with a message naming the module and the node."""
    text = (
        f"{exc} (on worker node {node!r}, pid {os.getpid()}: install the module there, "
        "or send it by value with Pool(..., modules=[...]))"
    )
    try:
        return type(exc)(text, name=exc.name, path=exc.path)
    except TypeError:
        return ImportError(text, name=exc.name)

