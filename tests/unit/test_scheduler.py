"""The Scheduler as a pure state machine: method calls in, commands out, no I/O.

A small harness plays the workers: it records every Dispatch a worker is
sent, answers with TaskDone items when told to, and checks the scheduler's counters
after every call.
"""

from __future__ import annotations

import collections
from typing import Any

import pytest
from dmp_server.scheduler import Command, Kill, Scheduler, Send

from dmp import deaths
from dmp.deaths import WorkerDeath
from dmp.wire import protocol
from dmp.wire.protocol import Status

pytestmark = pytest.mark.timeout(30)


class Harness:
    def __init__(self) -> None:
        self.s = Scheduler()
        # worker -> tasks it was given and has not answered: [key, job key, attempt, frames]
        self.given: dict[str, collections.deque[list[Any]]] = collections.defaultdict(collections.deque)
        self.sent: dict[str, list[tuple[protocol.Message, list[Any]]]] = collections.defaultdict(list)
        self.kills: list[str] = []
        self.dispatches: list[tuple[str, protocol.Dispatch]] = []
        self.runners: dict[str, set[int]] = collections.defaultdict(set)
        self.log: list[tuple[str, str]] = []  # (worker, client) per dispatched task, in order
        self._done = 0

    # --- driving ---------------------------------------------------------------------------

    def apply(self, cmds: list[Command]) -> list[Command]:
        for cmd in cmds:
            if isinstance(cmd, Kill):
                self.kills.append(cmd.worker)
                continue
            assert isinstance(cmd, Send)
            self.sent[cmd.to].append((cmd.msg, cmd.frames))
            if isinstance(cmd.msg, protocol.Dispatch):
                self._take_dispatch(cmd.to, cmd.msg, cmd.frames)
        self.check()
        return cmds

    def _take_dispatch(self, worker: str, msg: protocol.Dispatch, frames: list[Any]) -> None:
        assert worker in self.s.workers, f"Dispatch to unknown worker {worker}"
        self.dispatches.append((worker, msg))
        n_job = protocol.count_frames(msg.jobs, 1)
        n_task = protocol.count_frames(msg.tasks, 3)
        assert n_job + n_task == len(frames), "Dispatch frame count does not add up"
        for job_key, _n, _timeout in msg.jobs:
            assert job_key not in self.runners[worker], "runner sent twice to one worker"
            self.runners[worker].add(job_key)
        pos = n_job
        for key, job_key, attempt, n in msg.tasks:
            assert job_key in self.runners[worker], "task sent before its job's runner"
            self.given[worker].append([key, job_key, attempt, frames[pos : pos + n]])
            self.log.append((worker, bytes(frames[pos]).split(b":")[0].decode()))
            pos += n

    def client(self, peer: str) -> None:
        self.s.add_client(peer)
        self.check()

    def worker(self, peer: str, *, node: str = "node-a", pid: int = 100, max_tasks: int = 0) -> list[Command]:
        return self.apply(self.s.add_worker(peer, node, pid, max_tasks))

    def job(self, client: str, job: int, *, runner: list[Any] | None = None, max_retries: int = 3) -> None:
        runner = [b"runner-%d" % job] if runner is None else runner
        assert self.apply(self.s.define_job(client, job, runner, max_retries)) == []

    def submit(self, client: str, job: int, ids: list[int] | range) -> list[Command]:
        tasks = [(i, [f"{client}:{job}:{i}".encode()]) for i in ids]
        return self.apply(self.s.submit(client, job, tasks))

    def complete(self, worker: str, n: int | None = None, *, run_s: float = 0.01,
                 status: Status = Status.OK) -> list[Command]:
        """``worker`` finishes its ``n`` oldest tasks (all by default), in one TaskDone batch."""
        q = self.given[worker]
        n = len(q) if n is None else n
        items, frames = [], []
        for _ in range(n):
            key, _job, attempt, task_frames = q.popleft()
            items.append([key, attempt, int(status), 1, run_s, ""])
            frames.append(b"result-of-" + bytes(task_frames[0]))
        return self.apply(self.s.results(worker, items, frames))

    def die(
        self, worker: str, exitcode: int | None = -9, running: int | None = -1, cause: WorkerDeath | None = None
    ) -> list[Command]:
        self.given.pop(worker, None)
        self.runners.pop(worker, None)
        return self.apply(self.s.remove_worker(worker, exitcode, running, cause=cause))

    def results_for(self, client: str) -> list[tuple[list[Any], list[Any]]]:
        """Every JobResults item the client got, with its payload frames; clears them."""
        out = []
        for msg, frames in self.sent.pop(client, []):
            if isinstance(msg, protocol.JobResults):
                pos = 0
                for item in msg.items:
                    out.append((item, frames[pos : pos + item[3]]))
                    pos += item[3]
        return out

    # --- invariants -------------------------------------------------------------------------

    def check(self) -> None:
        s = self.s
        pending = sum(len(j.pending) for c in s.clients.values() for j in c.jobs.values())
        assert s.queued() == s.queued_total == pending >= 0
        assert 0 <= s.busy_workers() <= len(s.workers)
        assert s.busy_workers() == sum(1 for w in s.workers.values() if w.assigned)
        assert s.tasks_done >= self._done, "tasks_done went backwards"
        self._done = s.tasks_done
        for c in s.clients.values():
            assert c.queued >= 0 and c.running >= 0, (c.peer, c.queued, c.running)
            assert c.queued == sum(len(j.pending) for j in c.jobs.values())
            assigned = sum(
                1 for w in s.workers.values() for t in w.assigned.values() if t.job.client == c.peer
            )
            assert c.running == assigned, (c.peer, c.running, assigned)
        for w in s.workers.values():
            for t in w.assigned.values():
                assert t.worker == w.peer
        for j in (j for c in s.clients.values() for j in c.jobs.values()):
            assert j.outstanding >= 0


def dispatched(cmds: list[Command]) -> dict[str, list[list[int]]]:
    out: dict[str, list[list[int]]] = collections.defaultdict(list)
    for c in cmds:
        if isinstance(c, Send) and isinstance(c.msg, protocol.Dispatch):
            out[c.to] += c.msg.tasks
    return out


def sends_of(cmds: list[Command], kind: type[protocol.Message]) -> list[Send]:
    return [c for c in cmds if isinstance(c, Send) and isinstance(c.msg, kind)]


@pytest.fixture
def h() -> Harness:
    return Harness()


# --- spreading -----------------------------------------------------------------------------


def test_two_tasks_go_to_two_idle_workers(h: Harness) -> None:
    h.client("A")
    h.worker("w1")
    h.worker("w2")
    h.job("A", 1)
    cmds = h.submit("A", 1, [1, 2])
    got = dispatched(cmds)
    assert sorted(got) == ["w1", "w2"]
    assert [len(t) for t in got.values()] == [1, 1]
    assert h.s.busy_workers() == 2 and h.s.queued() == 0


@pytest.mark.parametrize("n", [3, 4, 5])
def test_every_idle_worker_gets_work_from_one_submit(h: Harness, n: int) -> None:
    h.client("A")
    h.worker("w1")
    h.worker("w2")
    h.job("A", 1)
    got = dispatched(h.submit("A", 1, range(n)))
    assert set(got) == {"w1", "w2"}
    assert abs(len(got["w1"]) - len(got["w2"])) <= 1


def test_idle_only_tasks_never_wait_behind_another_so_leaving_kills_nothing(h: Harness) -> None:
    # A cluster pool's start-up tasks: never prefetched behind another client's task.
    h.client("A")
    h.client("B")
    h.worker("w1")
    h.worker("w2")
    h.job("B", 1)
    busy = next(iter(dispatched(h.submit("B", 1, [1]))))
    idle = ({"w1", "w2"} - {busy}).pop()
    assert h.apply(h.s.define_job("A", 2, [b"r"], 0, idle_only=True)) == []
    got = dispatched(h.submit("A", 2, [10, 11, 12]))
    assert {w: len(t) for w, t in got.items()} == {idle: 1}  # one, on the idle worker only
    assert h.s.queued() == 2
    assert dispatched(h.complete(idle)) == {idle: [[h.given[idle][0][0], h.s.clients["A"].jobs[2].key, 0, 1]]}
    h.apply(h.s.remove_client("A"))  # A leaves: its queued start-up task goes, no worker is killed
    assert h.kills == [idle]  # only the worker running A's own task
    assert h.s.queued() == 0 and busy in {t.worker for t in h.s.tasks.values()}


def test_queued_work_goes_to_a_worker_that_joins(h: Harness) -> None:
    h.client("A")
    h.job("A", 1, runner=[b"r1", b"r2"])
    assert h.submit("A", 1, [7]) == []
    assert h.s.queued() == 1
    cmds = h.worker("w1")
    (send,) = sends_of(cmds, protocol.Dispatch)
    job_key = send.msg.jobs[0][0]
    assert send.msg.jobs == [[job_key, 2, 0.0]]
    assert send.msg.tasks == [[send.msg.tasks[0][0], job_key, 0, 1]]
    assert send.frames == [b"r1", b"r2", b"A:1:7"]  # runner frames first, then the task's
    assert h.s.queued() == 0


def test_runner_is_sent_once_per_worker(h: Harness) -> None:
    h.client("A")
    h.worker("w1")
    h.job("A", 1)
    h.submit("A", 1, [1])
    h.complete("w1")
    (send,) = sends_of(h.submit("A", 1, [2]), protocol.Dispatch)
    assert send.msg.jobs == []
    assert send.frames == [b"A:1:2"]


def test_tasks_submitted_one_at_a_time_go_to_idle_workers_first(h: Harness) -> None:
    h.client("A")
    h.worker("w1")
    h.worker("w2")
    h.job("A", 1)
    first = dispatched(h.submit("A", 1, [1]))
    second = dispatched(h.submit("A", 1, [2]))
    assert set(first) | set(second) == {"w1", "w2"}


# --- fairness -------------------------------------------------------------------------------


@pytest.mark.parametrize("run_s", [0.01, 1e-5], ids=["slow-tasks", "fast-tasks"])
def test_small_client_is_not_stuck_behind_a_big_one(h: Harness, run_s: float) -> None:
    h.client("A")
    h.client("B")
    h.worker("w1")
    h.worker("w2")
    h.job("A", 1)
    h.job("B", 1)
    h.submit("A", 1, range(1000))
    for _ in range(1):  # one round: A's work is going and the duration estimate is set
        for w in ("w1", "w2"):
            h.complete(w, run_s=run_s)
    start = len(h.log)
    h.submit("B", 1, range(10))
    a_backlog = h.s.queued() - 10
    assert a_backlog >= 300  # B really has to jump a queue
    rounds = 0
    while sum(1 for _, owner in h.log[start:] if owner == "B") < 10:
        rounds += 1
        assert rounds <= 12, "B's tasks were not all dispatched within 12 rounds"
        for w in ("w1", "w2"):
            h.complete(w, run_s=run_s)
    after = [owner for _, owner in h.log[start:]]
    last_b = max(i for i, owner in enumerate(after) if owner == "B")
    a_between = after[:last_b].count("A")
    # Round robin gives about one A task per B task, never A's whole backlog.
    assert a_between <= 10 + 2, f"{a_between} of A's tasks went out before B's 10"


# --- results ----------------------------------------------------------------------------------


def test_results_are_routed_to_the_right_client(h: Harness) -> None:
    h.client("A")
    h.client("B")
    h.worker("w1")
    h.worker("w2")
    h.job("A", 5)
    h.job("B", 5)  # the same job id in another client is another job
    h.submit("A", 5, [10, 11])
    h.submit("B", 5, [20, 21])
    for _ in range(4):
        for w in ("w1", "w2"):
            if h.given[w]:
                h.complete(w, n=1)
    a = h.results_for("A")
    b = h.results_for("B")
    assert sorted(item[1] for item, _ in a) == [10, 11]
    assert sorted(item[1] for item, _ in b) == [20, 21]
    for client, got in (("A", a), ("B", b)):
        for item, frames in got:
            job, task_id, status, nframes, info = item
            assert (job, status, nframes, info) == (5, Status.OK, 1, "")
            assert frames == [f"result-of-{client}:5:{task_id}".encode()]
    assert h.s.tasks_done == 4
    assert h.s.queued() == 0 and h.s.busy_workers() == 0 and not h.s.tasks


def test_one_worker_batch_for_two_clients_is_split(h: Harness) -> None:
    h.client("A")
    h.client("B")
    h.worker("w1")
    h.job("A", 1)
    h.job("B", 2)
    h.submit("A", 1, [1])
    h.submit("B", 2, [2])
    cmds = h.complete("w1")
    results = {s.to: s for s in sends_of(cmds, protocol.JobResults)}
    assert set(results) == {"A", "B"}
    assert [i[:2] for i in results["A"].msg.items] == [[1, 1]]
    assert [i[:2] for i in results["B"].msg.items] == [[2, 2]]
    assert results["A"].frames == [b"result-of-A:1:1"]
    assert results["B"].frames == [b"result-of-B:2:2"]


def test_raised_status_and_frames_pass_through(h: Harness) -> None:
    h.client("A")
    h.worker("w1")
    h.job("A", 1)
    h.submit("A", 1, [1])
    key, _job, attempt, _ = h.given["w1"].popleft()
    cmds = h.apply(h.s.results("w1", [[key, attempt, int(Status.RAISED), 2, 0.5, "x"]], [b"exc", b"tb"]))
    (send,) = sends_of(cmds, protocol.JobResults)
    assert send.to == "A"
    assert send.msg.items == [[1, 1, int(Status.RAISED), 2, "x"]]
    assert send.frames == [b"exc", b"tb"]


def test_result_with_wrong_attempt_is_dropped(h: Harness) -> None:
    h.client("A")
    h.worker("w1")
    h.job("A", 1)
    h.submit("A", 1, [1])
    key, _job, attempt, _ = h.given["w1"][0]
    # Called directly, not through h.apply: what becomes of the task afterwards is
    # test_stale_result_does_not_lose_the_current_attempt's business.
    cmds = h.s.results("w1", [[key, attempt + 1, 0, 1, 0.1, ""]], [b"stale"])
    assert sends_of(cmds, protocol.JobResults) == []
    assert h.s.tasks_done == 0 and h.s.workers["w1"].done == 0


def test_result_for_a_task_of_another_worker_is_dropped(h: Harness) -> None:
    h.client("A")
    h.worker("w1")
    h.worker("w2")
    h.job("A", 1)
    h.submit("A", 1, [1, 2])
    key, _job, attempt, _ = h.given["w1"][0]
    cmds = h.apply(h.s.results("w2", [[key, attempt, 0, 1, 0.1, ""]], [b"not yours"]))
    assert sends_of(cmds, protocol.JobResults) == []
    assert len(h.s.workers["w1"].assigned) == 1 and len(h.s.workers["w2"].assigned) == 1
    h.complete("w1")
    assert [i[1] for i, _ in h.results_for("A")] == [1]


def test_result_from_a_removed_worker_is_dropped(h: Harness) -> None:
    h.client("A")
    h.worker("w1")
    h.job("A", 1)
    h.submit("A", 1, [1])
    key, _job, attempt, _ = h.given["w1"][0]
    h.die("w1", -9, running=key)
    assert h.apply(h.s.results("w1", [[key, attempt, 0, 1, 0.1, ""]], [b"late"])) == []
    assert h.results_for("A") == []
    assert h.s.queued() == 1 and h.s.tasks_done == 0
    h.worker("w2")
    h.complete("w2")
    ((item, frames),) = h.results_for("A")
    assert item[1] == 1 and frames == [b"result-of-A:1:1"]


def test_stale_result_does_not_lose_the_current_attempt(h: Harness) -> None:
    h.client("A")
    h.worker("w1")
    h.job("A", 1)
    h.submit("A", 1, [1])
    key, _job, old_attempt, _ = h.given["w1"].popleft()
    # The worker reconnects under the same identity: the manager forgets it and re-adds it.
    h.apply(h.s.remove_worker("w1", None))
    h.runners.pop("w1", None)
    h.worker("w1")
    assert h.given["w1"][0][2] == old_attempt + 1
    h.apply(h.s.results("w1", [[key, old_attempt, 0, 1, 0.1, ""]], [b"stale"]))
    assert h.results_for("A") == []
    h.complete("w1")
    assert [item[1] for item, _ in h.results_for("A")] == [1]


# --- worker deaths -------------------------------------------------------------------------------


def test_death_charges_the_running_task_and_requeues_the_rest(h: Harness) -> None:
    h.client("A")
    h.worker("w1", pid=4321)
    h.job("A", 1)
    h.submit("A", 1, [1, 2])
    keys = [t[0] for t in h.given["w1"]]
    assert len(keys) == 2
    h.worker("w2")  # nothing queued: w2 stays idle
    assert not h.given["w2"]
    cmds = h.die("w1", -9, running=keys[1])
    got = dispatched(cmds)["w2"]
    # Original order kept; only the task that was running is charged an attempt.
    assert [(t[0], t[2]) for t in got] == [(keys[0], 0), (keys[1], 1)]
    assert h.results_for("A") == []
    assert h.s.queued() == 0 and h.s.busy_workers() == 1


def test_death_with_unknown_running_task_charges_the_oldest(h: Harness) -> None:
    h.client("A")
    h.worker("w1")
    h.job("A", 1)
    h.submit("A", 1, [1, 2])
    keys = [t[0] for t in h.given["w1"]]
    h.die("w1", None, running=None)
    assert [h.s.tasks[k].attempt for k in keys] == [1, 0]
    assert h.s.queued() == 2 and h.s.busy_workers() == 0


def test_death_between_tasks_charges_nobody(h: Harness) -> None:
    # running == -1: the worker's slot says it had finished its last task
    # (maxtasksperchild exits look like this); no task is to blame.
    h.client("A")
    h.worker("w1")
    h.job("A", 1)
    h.submit("A", 1, [1, 2])
    keys = [t[0] for t in h.given["w1"]]
    h.die("w1", 0, running=-1)
    assert [h.s.tasks[k].attempt for k in keys] == [0, 0]
    assert h.s.queued() == 2


def test_death_without_other_workers_leaves_tasks_queued(h: Harness) -> None:
    h.client("A")
    h.worker("w1")
    h.job("A", 1)
    h.submit("A", 1, [1, 2, 3])
    running = h.given["w1"][0][0]
    assert h.s.queued() == 1
    h.die("w1", -9, running=running)
    assert h.s.queued() == 3 and h.s.busy_workers() == 0 and not h.s.workers
    assert h.s.clients["A"].running == 0


@pytest.mark.parametrize("max_retries", [0, 1, 3])
def test_past_max_retries_the_client_gets_lost_naming_node_pid_signal(h: Harness, max_retries: int) -> None:
    h.client("A")
    h.job("A", 1, max_retries=max_retries)
    h.submit("A", 1, [42])
    for death in range(max_retries + 1):
        worker = f"w{death}"
        h.worker(worker, node="gpu-box-7", pid=5000 + death)
        ((key, _job, attempt, _),) = h.given[worker]
        assert attempt == death
        h.die(worker, -9, running=key)
        got = h.results_for("A")
        if death < max_retries:
            assert got == [] and h.s.queued() == 1
    ((item, frames),) = got
    job, task_id, status, nframes, info = item
    assert (job, task_id, status, nframes, frames) == (1, 42, Status.LOST, 0, [])
    text, node, pid, exitcode, cause = info
    assert (node, pid, exitcode) == ("gpu-box-7", 5000 + max_retries, -9)
    assert "gpu-box-7" in text
    assert str(5000 + max_retries) in text
    assert "was killed by signal 9 (SIGKILL)" in text and cause == {"kind": "signal"}
    assert f"{max_retries + 1} attempts" in text
    assert h.s.queued() == 0 and not h.s.tasks and h.s.tasks_done == 0


def test_lost_task_names_exit_code_and_ends_the_job(h: Harness) -> None:
    h.client("A")
    h.job("A", 1, max_retries=0)
    h.submit("A", 1, [1])
    h.apply(h.s.end_job("A", 1))
    h.worker("w1", pid=77)
    (key, *_rest) = h.given["w1"][0]
    h.worker("w2")  # holds nothing of the job
    cmds = h.die("w1", 3, running=key)
    ((item, _),) = h.results_for("A")
    assert item[2] == Status.LOST and "exited with code 3" in item[4][0]
    assert item[4][1:] == ["node-a", 77, 3, {"kind": "exit"}]
    assert 1 not in h.s.clients["A"].jobs  # ended and nothing outstanding: forgotten
    assert sends_of(cmds, protocol.ForgetJobs) == []  # its only holder is dead


def test_task_over_the_memory_limit_is_blamed_and_retried_like_any_loss(h: Harness) -> None:
    h.client("A")
    h.job("A", 1, max_retries=1)
    h.submit("A", 1, [1])
    over = WorkerDeath(deaths.MEMORY_LIMIT, -9, rss=612 << 20, limit=500 << 20)
    h.worker("w1", pid=77)
    (key, *_rest) = h.given["w1"][0]
    h.die("w1", -9, running=key, cause=over)
    assert h.results_for("A") == []  # within max_retries: rerun
    h.worker("w2", pid=78)
    (key, *_rest) = h.given["w2"][0]
    h.die("w2", -9, running=key, cause=over)
    ((item, _),) = h.results_for("A")
    text = item[4][0]
    assert item[2] == Status.LOST and text.startswith(
        "task exceeded the worker memory limit (RSS 612 MiB > limit 500 MiB) on node 'node-a' pid 78"
    ), text
    assert "gave up after 2 attempts" in text, text
    assert item[4][4] == {"kind": "memory_limit", "rss": 612 << 20, "limit": 500 << 20}


def test_lost_info_fills_worker_lost_error_attributes(h: Harness) -> None:
    from dmp.client import results
    from dmp.errors import WorkerLostError

    h.client("A")
    h.job("A", 1, max_retries=0)
    h.submit("A", 1, [1])
    h.worker("w1", node="n1", pid=999)
    h.die("w1", -9, running=h.given["w1"][0][0])
    ((item, frames),) = h.results_for("A")
    ok, err = results.decode(item[2], frames, item[4])
    assert not ok and isinstance(err, WorkerLostError)
    assert (err.node, err.pid, err.exitcode) == ("n1", 999, -9)


def test_removing_an_unknown_worker_is_a_no_op(h: Harness) -> None:
    assert h.s.remove_worker("nobody", -9, 3) == []
    assert h.s.results("nobody", [[1, 0, 0, 0, 0.0, ""]], []) == []


# --- ending and cancelling jobs --------------------------------------------------------------------


def test_end_job_after_all_results_forgets_the_runner_on_its_holders(h: Harness) -> None:
    h.client("A")
    h.worker("w1")
    h.worker("w2")
    h.worker("w3")
    h.job("A", 1)
    h.submit("A", 1, [1, 2])  # w1 and w2 get one each; w3 never sees the job
    job_key = h.s.clients["A"].jobs[1].key
    h.complete("w1")
    h.complete("w2")
    cmds = h.apply(h.s.end_job("A", 1))
    forget = sends_of(cmds, protocol.ForgetJobs)
    assert sorted(s.to for s in forget) == ["w1", "w2"]
    assert all(s.msg.jobs == [job_key] for s in forget)
    assert 1 not in h.s.clients["A"].jobs


def test_end_job_before_the_last_result_forgets_when_it_arrives(h: Harness) -> None:
    h.client("A")
    h.worker("w1")
    h.job("A", 1)
    h.submit("A", 1, [1, 2])
    assert h.apply(h.s.end_job("A", 1)) == []
    cmds = h.complete("w1", n=1)
    assert sends_of(cmds, protocol.ForgetJobs) == []
    cmds = h.complete("w1")
    assert [s.to for s in sends_of(cmds, protocol.ForgetJobs)] == ["w1"]
    assert [i[1] for i, _ in h.results_for("A")] == [1, 2]


def test_define_twice_and_submit_to_unknown_job_are_refused(h: Harness) -> None:
    h.client("A")
    h.job("A", 1)
    (err,) = h.apply(h.s.define_job("A", 1, [], 3))
    assert isinstance(err, Send) and isinstance(err.msg, protocol.Error)
    assert err.msg.code == protocol.ErrorCode.BAD_MESSAGE and err.msg.ref == 1
    (err,) = h.submit("A", 9, [1])
    assert isinstance(err, Send) and isinstance(err.msg, protocol.Error)
    assert err.msg.code == protocol.ErrorCode.UNKNOWN_JOB and err.msg.ref == 9
    assert h.s.queued() == 0


def test_cancel_job_drops_queued_kills_only_workers_running_it_and_says_cancelled(h: Harness) -> None:
    h.client("A")
    h.client("B")
    h.worker("w1")
    h.worker("w2")
    h.worker("w3")
    h.job("A", 1)
    h.job("B", 1)
    h.submit("B", 1, [1])  # w1 runs B's task
    h.submit("A", 1, range(10))  # w2, w3 run A's
    assert h.s.queued() > 0
    running_a = {
        w: [t[0] for t in h.given[w] if h.s.tasks[t[0]].job.client == "A"] for w in ("w1", "w2", "w3")
    }
    holders = sorted(w for w, keys in running_a.items() if keys)
    assert holders == ["w1", "w2", "w3"]  # w1 was given one of A's tasks behind B's
    cmds = h.apply(h.s.cancel_job("A", 1))
    # w1 runs B's task: A's task queued behind it is withdrawn (ForgetJobs), w1 lives.
    assert sorted(c.worker for c in cmds if isinstance(c, Kill)) == ["w2", "w3"]
    assert sorted(s.to for s in sends_of(cmds, protocol.ForgetJobs)) == holders
    (item, frames), = h.results_for("A")
    assert item[:3] == [1, -1, Status.CANCELLED] and frames == []
    assert h.s.queued() == 0
    assert h.s.clients["A"].running == 0 and h.s.clients["A"].queued == 0
    assert 1 not in h.s.clients["A"].jobs
    assert len(h.s.workers["w1"].assigned) == 1  # B's task untouched
    # Outcomes of the cancelled tasks that were already on their way are dropped.
    for w, keys in running_a.items():
        h.given[w] = collections.deque(t for t in h.given[w] if t[0] not in keys)
        items = [[k, 0, 0, 0, 0.1, ""] for k in keys]
        assert sends_of(h.apply(h.s.results(w, items, [])), protocol.JobResults) == []
    assert h.s.tasks_done == 0
    h.complete("w1")
    assert [i[1] for i, _ in h.results_for("B")] == [1]


def test_cancel_unknown_job_is_a_no_op(h: Harness) -> None:
    h.client("A")
    assert h.s.cancel_job("A", 3) == [] and h.s.cancel_job("ghost", 3) == []
    assert h.s.end_job("A", 3) == [] and h.s.end_job("ghost", 3) == []


def test_no_work_is_dispatched_to_a_worker_that_is_being_killed(h: Harness) -> None:
    h.client("A")
    h.client("B")
    h.worker("w1")
    h.job("A", 1)
    h.job("B", 1)
    h.submit("A", 1, [1, 2])
    h.submit("B", 1, [1, 2, 3])  # queued: w1 is full
    cmds = h.apply(h.s.cancel_job("A", 1))
    killed = {c.worker for c in cmds if isinstance(c, Kill)}
    assert killed == {"w1"}
    assert not killed & set(dispatched(cmds))


# --- clients going away --------------------------------------------------------------------------


def test_remove_client_cancels_its_work_and_keeps_the_others(h: Harness) -> None:
    h.client("A")
    h.client("B")
    h.worker("w1")
    h.worker("w2")
    h.job("A", 1)
    h.job("B", 1)
    h.submit("A", 1, range(20))
    h.submit("B", 1, range(3))
    a_workers = {w for w in ("w1", "w2") if any(h.s.tasks[t[0]].job.client == "A" for t in h.given[w])}
    cmds = h.apply(h.s.remove_client("A"))
    assert {c.worker for c in cmds if isinstance(c, Kill)} == a_workers
    assert all(c.to != "A" for c in cmds if isinstance(c, Send))  # nobody to tell
    assert "A" not in h.s.clients
    assert h.s.queued() == h.s.clients["B"].queued
    assert all(t.job.client == "B" for t in h.s.tasks.values())
    assert h.s.remove_client("A") == []


def test_remove_client_dispatches_none_of_its_tasks(h: Harness) -> None:
    h.client("A")
    h.worker("w1")
    h.worker("w2")
    h.job("A", 1)
    h.job("A", 2)
    h.submit("A", 1, range(10))
    h.submit("A", 2, range(10))
    cmds = h.apply(h.s.remove_client("A"))
    assert dispatched(cmds) == {}


# --- max_tasks ---------------------------------------------------------------------------------------


def test_max_tasks_caps_what_a_worker_is_given(h: Harness) -> None:
    h.client("A")
    h.worker("w1", max_tasks=3)
    h.job("A", 1)
    h.submit("A", 1, range(10))
    for _ in range(10):
        if h.given["w1"]:
            h.complete("w1", run_s=1e-5)  # fast tasks: credit alone would allow 200
    given_w1 = sum(1 for w, _ in h.log if w == "w1")
    assert given_w1 == 3
    assert h.s.queued() == 7
    h.worker("w2")
    while h.given["w2"]:
        h.complete("w2")
    assert sum(1 for w, _ in h.log if w == "w2") == 7
    assert h.s.queued() == 0 and h.s.tasks_done == 10
    assert sorted(i[1] for i, _ in h.results_for("A")) == list(range(10))


def test_max_tasks_one_gets_one_task_at_a_time(h: Harness) -> None:
    h.client("A")
    h.worker("w1", max_tasks=1)
    h.job("A", 1)
    cmds = h.submit("A", 1, [1, 2])
    assert [len(v) for v in dispatched(cmds).values()] == [1]
    assert dispatched(h.complete("w1")) == {}


# --- counters through a long random-ish run ----------------------------------------------------------


def test_counters_stay_consistent_through_churn(h: Harness) -> None:
    import random

    rng = random.Random(1234)
    h.client("A")
    h.client("B")
    for c in ("A", "B"):
        h.job(c, 1, max_retries=2)
    n_workers = 0
    live: list[str] = []
    for step in range(400):
        r = rng.random()
        if r < 0.15 or not live:
            n_workers += 1
            live.append(f"w{n_workers}")
            h.worker(live[-1], pid=n_workers, max_tasks=rng.choice([0, 0, 5]))
        elif r < 0.25:
            w = live.pop(rng.randrange(len(live)))
            running = h.given[w][0][0] if h.given[w] and rng.random() < 0.8 else -1
            h.die(w, rng.choice([-9, -15, 1, None]), running=running)
        elif r < 0.5:
            c = rng.choice("AB")
            h.submit(c, 1, range(step * 10, step * 10 + rng.randint(1, 30)))
        else:
            w = rng.choice(live)
            if h.given[w]:
                h.complete(w, n=rng.randint(1, len(h.given[w])), run_s=rng.choice([1e-5, 1e-3, 0.1]))
    # Drain: enough workers that everything finishes or is lost.
    for extra in range(20):
        live.append(f"x{extra}")
        h.worker(live[-1])
    for _ in range(500):
        busy = [w for w in live if h.given.get(w)]
        if not busy:
            break
        for w in busy:
            h.complete(w)
    assert h.s.queued() == 0 and h.s.busy_workers() == 0
    assert h.s.clients["A"].running == h.s.clients["B"].running == 0
    assert not h.s.tasks


def test_max_workers_caps_a_clients_parallelism_not_its_prefetch() -> None:
    from dmp_server.scheduler import Scheduler, Send

    from dmp.wire import protocol as P

    s = Scheduler()
    s.add_client("A", max_workers=2)
    for w in ("w1", "w2", "w3", "w4"):
        s.add_worker(w, "n", 1, 0)
    s.define_job("A", 1, [], 3)
    cmds = s.submit("A", 1, [(i, [b"x"]) for i in range(20)])
    used = {c.to for c in cmds if isinstance(c, Send) and isinstance(c.msg, P.Dispatch)}
    assert len(used) == 2  # Pool(2): two workers, however many are idle
    assert s.clients["A"].running == 4  # each holds one running and one prefetched
    # Another client, uncapped, gets the idle workers at once.
    s.add_client("B")
    s.define_job("B", 1, [], 3)
    cmds = s.submit("B", 1, [(i, [b"y"]) for i in range(4)])
    used_b = {c.to for c in cmds if isinstance(c, Send) and isinstance(c.msg, P.Dispatch)}
    assert used_b and used_b.isdisjoint(used)


def test_totals_count_outcomes_failures_retries_and_lost_workers(h: Harness) -> None:
    h.client("A")
    h.client("B")
    h.worker("w1")
    h.job("A", 1, max_retries=1)
    h.job("B", 1)
    h.submit("A", 1, [1, 2])
    h.complete("w1", 1)
    h.complete("w1", 1, status=Status.RAISED)
    h.submit("A", 1, [3])
    h.die("w1", -9, running=h.s.workers["w1"].assigned and next(iter(h.s.workers["w1"].assigned)))
    assert (h.s.totals.retried, h.s.totals.workers_lost) == (1, 1)
    h.worker("w2")
    h.die("w2", -9, running=next(iter(h.s.workers["w2"].assigned)))  # past max_retries: lost
    h.worker("w3")
    h.submit("B", 1, [1])
    h.complete("w3")
    h.die("w3", 0, running=-1)  # a clean exit (maxtasksperchild) is not a loss
    t = h.s.totals
    assert (t.done, t.failed, t.retried, t.workers_lost) == (4, 2, 1, 2)
    assert t.last_lost == "worker process pid 100 on node 'node-a' was killed by signal 9 (SIGKILL)", t.last_lost
    a, b = h.s.clients["A"], h.s.clients["B"]
    assert (a.done, a.failed, a.retried) == (3, 2, 1)
    assert (b.done, b.failed, b.retried) == (1, 0, 0)
