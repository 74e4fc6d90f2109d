"""Simulated peers for ``tests.bench.scale``: many sockets speaking the real protocol from a few processes.

    nodes + workers process   one DEALER per node and per worker (the worker's identity is its
                              worker id, as in dmp.node.worker), real Hello / Welcome / proof
                              through dmp.wire.transport.Channel (signed with the authkey);
                              a Dispatch is answered at once with one TaskDone carrying, per
                              task, the pickled list of its items doubled (the task's frame is
                              the pickled list of its items), and counted ("count" over the
                              Pipe: tasks and Dispatches so far); heartbeats as a node's real
                              workers send them: one a beat while idle, none while answering
    clients process           one DEALER per client: DefineJob, then Submit batches of up to
                              64 tasks, each once the client's credit (MAX_OUTSTANDING_TASKS)
                              has room for all of it, as dmp.client.feeder does,
                              every result unpickled and checked against its task's items

Each process is started with multiprocessing's spawn and steered over a Pipe:
it answers "ready" once joined, then serves until told "stop" (workers) or
until every task is back (clients), and answers with its counts.
"""

from __future__ import annotations

import heapq
import os
import pickle
import resource
import socket
import time
import uuid
from multiprocessing.connection import Connection
from typing import Any

import zmq

from dmp import _config
from dmp.client.cluster import fetch_status
from dmp.wire import peer, protocol, transport

SUBMIT_BATCH = 64  # dmp.client.feeder.FEED_BATCH
JOIN_TIMEOUT_S = 120.0
JOIN_WAVE = 250  # workers whose Hellos one simulator process sends at once (0: all of them)


def _prepare() -> None:
    """Room for thousands of sockets in this process."""
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    transport.context().set(zmq.MAX_SOCKETS, 65536)


def _channel(address: str, key: bytes | None, identity: bytes | None = None) -> transport.Channel:
    sock = transport.make_socket(zmq.DEALER, identity=identity)
    sock.setsockopt(zmq.LINGER, 0)
    chan = transport.Channel(sock, key)
    sock.connect(address)
    return chan


def _hello(role: str, name: str, **extra: Any) -> protocol.Hello:
    return protocol.Hello(role, name, socket.gethostname(), os.getpid(), version=protocol.software_version(), **extra)


class _Peers:
    """Channels polled together; ``welcome`` waits until each has its Welcome."""

    def __init__(self) -> None:
        self.poller = zmq.Poller()
        self.by_sock: dict[Any, int] = {}
        self.chans: list[transport.Channel] = []
        self.hellos_of: list[protocol.Hello] = []
        self.hellos = 0  # Hellos said, first ones included
        self.said: dict[int, int] = {}  # Hellos said by each channel
        self.refusals = 0  # refusals received while joining (dropped handshakes among them)
        self.why: dict[str, int] = {}  # refusals by their text
        self.stale = 0  # Welcomes that answered an earlier Hello (voided by a later one)
        self.nodes: list[int] = []  # channels that beat every beat, joining or not
        self.beat_at = 0.0
        self.beat_s = _config.HEARTBEAT_S  # the manager's beat (its --heartbeat-s)

    def add(self, chan: transport.Channel, hello: protocol.Hello, say: bool = True) -> int:
        """Register ``chan`` and say ``hello`` on it (``say`` False: later, by :meth:`say`)."""
        index = len(self.chans)
        self.chans.append(chan)
        self.hellos_of.append(hello)
        if say:
            self.say(index)
        self.by_sock[chan.sock] = index
        self.poller.register(chan.sock, zmq.POLLIN)
        return index

    def say(self, index: int) -> None:
        self.hellos += 1
        self.said[index] = self.said.get(index, 0) + 1
        self.chans[index].send(self.hellos_of[index])

    def ready(self, timeout_s: float) -> list[int]:
        return [self.by_sock[s] for s, _ in self.poller.poll(int(timeout_s * 1000) + 1)]

    def messages(self, index: int, refused: list[int] | None = None) -> list[tuple[protocol.Message, list[Any]]]:
        """What ``index`` received; a refusal is appended to ``refused`` if given (joining), else raised."""
        chan = self.chans[index]
        got = []
        while chan.readable():
            try:
                _, msg, frames = chan.recv(transport.NOBLOCK)
            except zmq.Again:
                break
            except transport.Refused:
                # A Welcome answering an earlier Hello of ours (its challenge is gone):
                # ignored, as dmp.wire.peer.PeerLoop does; the answer to the last one follows.
                if refused is None:
                    raise
                self.stale += 1
                continue
            if isinstance(msg, protocol.Error):
                if refused is not None and msg.code in (protocol.ErrorCode.REFUSED, protocol.ErrorCode.UNKNOWN_PEER):
                    refused.append(index)
                    self.why[msg.text] = self.why.get(msg.text, 0) + 1
                    continue
                raise RuntimeError(f"the manager refused a simulated peer: {msg.code}: {msg.text}")
            got.append((msg, frames))
        return got

    def welcome(self, indexes: list[int], old_rules: bool = False) -> None:
        """Wait until each channel is admitted, saying Hello again as dmp.wire.peer.PeerLoop
        does: after a refusal (a worker whose node's proof the manager has not read yet, or
        a handshake the manager dropped), or when unanswered for LIVENESS beats, after a
        jittered doubling backoff (``old_rules``: as before the join-storm fix, unanswered
        for one beat, no jitter). Counts Hellos and refusals; raises on any other Error."""
        waiting = set(indexes)
        deadline = time.monotonic() + JOIN_TIMEOUT_S
        jitter = 0.0 if old_rules else peer.HELLO_JITTER
        backoff = {i: peer.Backoff(jitter=jitter) for i in indexes}
        unanswered_s = self.beat_s * (1 if old_rules else _config.LIVENESS)
        said = dict.fromkeys(indexes, time.monotonic())  # when each last said Hello (or heard)
        again: dict[int, float] = {}  # index -> when to say Hello again
        while waiting:
            now = time.monotonic()
            if now > deadline:
                raise RuntimeError(f"{len(waiting)} simulated peers were never welcomed")
            if now >= self.beat_at:  # nodes keep beating while their workers join (or they are dropped)
                self.beat_at = now + self.beat_s
                for i in self.nodes:
                    self.chans[i].send(protocol.Heartbeat())
                for i in waiting:  # PeerLoop.tick: unanswered too long, ask again
                    if i not in again and now - said.get(i, now) > unanswered_s:
                        again[i] = now + backoff[i].next()
            refused: list[int] = []
            for i in self.ready(0.1):
                said[i] = now
                if any(isinstance(m, protocol.Welcome) for m, _ in self.messages(i, refused)):
                    waiting.discard(i)
                    again.pop(i, None)
            self.refusals += len(refused)
            for i in refused:  # a node among them too: its handshake was dropped
                if i not in again:
                    again[i] = now + backoff.setdefault(i, peer.Backoff(jitter=jitter)).next()
                    waiting.add(i)
            for i, when in list(again.items()):
                if when <= now:
                    del again[i]
                    said[i] = now
                    self.say(i)

    def close(self) -> None:
        for chan in self.chans:
            chan.close()


def _wait_nodes(address: str, key: bytes | None, names: set[str]) -> None:
    deadline = time.monotonic() + JOIN_TIMEOUT_S
    while True:
        status = fetch_status(address, key, 5.0) or {}
        if names <= {n["name"] for n in status.get("nodes", [])}:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"the manager never listed nodes {sorted(names)}")
        time.sleep(0.1)


def serve_workers(
    ctl: Connection, address: str, key: bytes | None, nodes: list[str], per_node: int,
    wave: int = JOIN_WAVE, old_rules: bool = False, beat_s: float = _config.HEARTBEAT_S,
) -> None:
    """Nodes ``nodes`` with ``per_node`` workers each; answer tasks until told to stop.

    Workers say Hello ``wave`` at a time (0: all at once, a join storm), saying
    it again as dmp.wire.peer does (``old_rules``: as it did before)."""
    _prepare()
    peers = _Peers()
    peers.beat_s = beat_s
    node_ix = []
    for name in nodes:
        node_ix.append(peers.add(_channel(address, key), _hello(protocol.Role.NODE, name)))
    peers.welcome(node_ix)
    peers.nodes = node_ix
    _wait_nodes(address, key, set(nodes))  # admitted (their proofs read), so their workers are not refused
    # Workers join in waves (or, wave 0, all at once: see docs/performance.md).
    worker_ix: list[int] = []
    batch: list[int] = []
    wave_size = wave
    for name in nodes:
        for _ in range(per_node):
            wid = f"sim-{uuid.uuid4().hex[:16]}"
            chan = _channel(address, key, identity=wid.encode())
            batch.append(peers.add(chan, _hello(protocol.Role.WORKER, wid, node=name), say=wave_size > 0))
            if wave_size and len(batch) >= wave_size:
                peers.welcome(batch, old_rules)
                worker_ix += batch
                batch = []
    if not wave_size:  # a storm: every socket made and connected first, then every Hello at once
        time.sleep(1.0)
    joined_nodes = time.monotonic()
    if not wave_size:
        for i in batch:
            peers.say(i)
    peers.welcome(batch, old_rules)
    worker_ix += batch
    join_s = time.monotonic() - joined_nodes
    ctl.send({"ready": True, "join_s": join_s, "hellos": peers.hellos, "refusals": peers.refusals,
              "stale": peers.stale, "why": peers.why, "most": max(peers.said.values(), default=0)})
    is_worker = [False] * len(peers.chans)
    for i in worker_ix:
        is_worker[i] = True
    last_sent = [time.monotonic()] * len(peers.chans)
    beat = beat_s
    # Nodes beat every beat, their workers every WORKER_BEATS beats while idle
    # (as dmp.node.worker does), spread over their period: a heap of (due, peer).
    start = time.monotonic()
    beats = [
        (start + (beat if not is_worker[i] else beat * _config.WORKER_BEATS * (i + 1) / len(peers.chans)), i)
        for i in range(len(peers.chans))
    ]
    heapq.heapify(beats)
    tasks = messages = 0
    ok = int(protocol.Status.OK)
    rehellos = 0
    while True:
        if ctl.poll():
            if ctl.recv() != "count":
                break  # stop
            ctl.send({"tasks": tasks, "dispatches": messages})  # each Dispatch is answered by one TaskDone
            continue
        for i in peers.ready(min(0.2, max(0.0, beats[0][0] - time.monotonic()))):
            chan = peers.chans[i]
            refused: list[int] = []
            got = peers.messages(i, refused)
            if refused:
                # Its handshake was dropped (the manager, swamped by a join storm, read
                # the proof too late): say Hello again, as a real worker does.
                rehellos += 1
                chan.send(peers.hellos_of[i])
            for msg, frames in got:
                if not isinstance(msg, protocol.Dispatch) or not is_worker[i]:
                    continue
                pos = sum(n for _, n, _ in msg.jobs)  # runner frames first; ours are not needed
                items, out = [], []
                for key_, _job, attempt, n in msg.tasks:
                    values = pickle.loads(frames[pos])
                    pos += n
                    out.append(pickle.dumps([2 * v for v in values], protocol=5))
                    items.append([key_, attempt, ok, 1, 0.0, ""])
                chan.send(protocol.TaskDone(items), out)
                last_sent[i] = time.monotonic()
                tasks += len(items)
                messages += 1
        now = time.monotonic()
        while beats[0][0] <= now:
            _, i = heapq.heappop(beats)
            period = beat * _config.WORKER_BEATS if is_worker[i] else beat
            if not is_worker[i] or now - last_sent[i] >= period:  # a worker that just answered is not idle
                peers.chans[i].send(protocol.Heartbeat())
            heapq.heappush(beats, (now + period, i))
    for chan in peers.chans:
        chan.send(protocol.Bye("benchmark done"))
    peers.close()
    ctl.send({"tasks": tasks, "results_messages": messages, "rehellos": rehellos})


def task_items(task_id: int, chunk: int) -> list[int]:
    return list(range(task_id * chunk, task_id * chunk + chunk))


def serve_clients(ctl: Connection, address: str, key: bytes | None, clients: int, tasks: int, chunk: int) -> None:
    """``clients`` clients submitting ``tasks`` tasks of ``chunk`` items in all; every result is checked."""
    _prepare()
    peers = _Peers()
    ixs = []
    for n in range(clients):
        ixs.append(peers.add(_channel(address, key), _hello(protocol.Role.CLIENT, f"scale-client-{n}")))
    peers.welcome(ixs)
    runner = [pickle.dumps("double each item", protocol=5)]
    for i in ixs:
        peers.chans[i].send(protocol.DefineJob(1, len(runner)), runner)
    share = [tasks // clients + (1 if n < tasks % clients else 0) for n in range(clients)]
    sent = [0] * clients
    done = [0] * clients
    credit = _config.MAX_OUTSTANDING_TASKS
    ctl.send("ready")
    ctl.recv()  # go
    t0 = time.perf_counter()

    def refill(n: int) -> None:
        # As dmp.client.feeder does: whole batches of SUBMIT_BATCH, each sent once
        # the credit has room for all of it (Credit.take), the last one shorter.
        chan = peers.chans[ixs[n]]
        while sent[n] < share[n]:
            batch = min(SUBMIT_BATCH, share[n] - sent[n])
            if sent[n] - done[n] + batch > credit:
                break
            ids = range(sent[n], sent[n] + batch)
            frames = [pickle.dumps(task_items(t, chunk), protocol=5) for t in ids]
            chan.send(protocol.Submit(1, [[t, 1] for t in ids]), frames)
            sent[n] += batch

    for n in range(clients):
        refill(n)
    bad = 0
    deadline = time.monotonic() + max(600.0, tasks / 50)
    beat_at = time.monotonic() + _config.HEARTBEAT_S
    while sum(done) < tasks:
        now = time.monotonic()
        if now > deadline:
            raise RuntimeError(f"only {sum(done)} of {tasks} tasks came back")
        if now >= beat_at:  # a client beats every beat, busy or not (or the manager drops it)
            beat_at = now + _config.HEARTBEAT_S
            for i in ixs:
                peers.chans[i].send(protocol.Heartbeat())
        for i in peers.ready(min(1.0, max(0.0, beat_at - now))):
            n = ixs.index(i)
            for msg, frames in peers.messages(i):
                if not isinstance(msg, protocol.JobResults):
                    continue
                pos = 0
                for _job, task_id, status, nframes, _info in msg.items:
                    if status != protocol.Status.OK or pickle.loads(frames[pos]) != [2 * v for v in task_items(task_id, chunk)]:
                        bad += 1
                    pos += nframes
                    done[n] += 1
            refill(n)
    wall = time.perf_counter() - t0
    for i in ixs:
        peers.chans[i].send(protocol.EndJob(1))
        peers.chans[i].send(protocol.Bye("benchmark done"))
    peers.close()
    ctl.send({"tasks": sum(done), "bad": bad, "wall_s": wall})
