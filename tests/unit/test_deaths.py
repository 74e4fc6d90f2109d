"""How a worker's death is told: dmp.deaths (cause texts, sizes) and dmp.node.oomwatch (the cgroup count)."""

from __future__ import annotations

import pickle
import signal
from pathlib import Path

import pytest

import dmp
from dmp import deaths
from dmp.deaths import WorkerDeath, format_size, loss_text, parse_size
from dmp.node import oomwatch


@pytest.mark.parametrize(
    ("death", "text"),
    [
        (WorkerDeath.of_exit(3), "exited with code 3"),
        (WorkerDeath.of_exit(0), "exited with code 0"),
        (WorkerDeath.of_exit(-signal.SIGKILL, oom=False), "was killed by signal 9 (SIGKILL)"),
        (WorkerDeath.of_exit(-signal.SIGSEGV), "was killed by signal 11 (SIGSEGV)"),
        (WorkerDeath.of_exit(-77), "was killed by signal 77"),
        (WorkerDeath.of_exit(-signal.SIGKILL, oom=True), "was killed by the kernel's OOM killer (out of memory)"),
        (
            WorkerDeath.of_exit(-signal.SIGKILL, oom=None),
            "was killed by signal 9 (SIGKILL), possibly by the kernel's OOM killer "
            "(out of memory; its node cannot tell)",
        ),
        (
            WorkerDeath(deaths.MEMORY_LIMIT, -9, rss=612 << 20, limit=500 << 20),
            "exceeded the worker memory limit (RSS 612 MiB > limit 500 MiB) and was killed by its node",
        ),
        (WorkerDeath(deaths.STOPPED, -9), "was stopped (SIGSTOP or a debugger) for too long and killed by its node"),
        (WorkerDeath.of_exit(None), "was lost without its node saying how (the node or its connection went away)"),
    ],
)
def test_every_cause_reads_as_what_happened(death: WorkerDeath, text: str) -> None:
    assert str(death) == text
    assert WorkerDeath.from_wire(death.to_wire(), death.exitcode) == death  # survives the wire


def test_the_oom_killer_only_explains_a_sigkill() -> None:
    assert WorkerDeath.of_exit(-signal.SIGKILL, oom=True).kind == deaths.OOM
    assert WorkerDeath.of_exit(-signal.SIGTERM, oom=True).kind == deaths.SIGNAL
    assert WorkerDeath.of_exit(3, oom=None) == WorkerDeath(deaths.EXIT, 3)
    assert WorkerDeath.of_exit(-signal.SIGSEGV, oom=None).maybe_oom is False
    assert WorkerDeath.of_exit(-signal.SIGKILL).signal == signal.SIGKILL and WorkerDeath.of_exit(3).signal is None


def test_loss_text_blames_the_task_only_for_the_memory_limit() -> None:
    over = WorkerDeath(deaths.MEMORY_LIMIT, -9, rss=int(1.5 * (1 << 30)), limit=1 << 30)
    assert over.task_fault and not WorkerDeath.of_exit(-9).task_fault
    assert loss_text(over, "n1", 42) == (
        "task exceeded the worker memory limit (RSS 1.5 GiB > limit 1 GiB) on node 'n1' pid 42: "
        "its worker process was killed"
    )
    assert loss_text(WorkerDeath.of_exit(3), "n1", 42) == (
        "worker process pid 42 on node 'n1' exited with code 3 while running this task"
    )


@pytest.mark.parametrize(
    "wire",
    [None, [], "oom", {}, {"kind": "nonsense"}, {"kind": ["oom"]}, {"kind": {"a": 1}}, {1: 2}, {"kind": "memory_limit", "rss": "big"},
     {"kind": "memory_limit", "rss": -1, "limit": 5}, {"kind": "signal", "maybe_oom": 1},
     {"kind": "memory_limit", "rss": 1 << 70, "limit": 1}],
)
def test_a_malformed_cause_falls_back_to_the_exit_code(wire: object) -> None:
    assert WorkerDeath.from_wire(wire, 3) == WorkerDeath(deaths.EXIT, 3)
    assert WorkerDeath.from_wire(wire, "x") == WorkerDeath(deaths.UNKNOWN)  # a non-int exit code too


def test_worker_lost_error_pickles_with_its_cause_and_old_fields() -> None:
    cause = WorkerDeath(deaths.MEMORY_LIMIT, -9, rss=10, limit=5)
    err = dmp.WorkerLostError("gone", node="n", pid=7, exitcode=-9, cause=cause)
    back = pickle.loads(pickle.dumps(err))
    assert (str(back), back.node, back.pid, back.exitcode, back.cause) == ("gone", "n", 7, -9, cause)
    assert dmp.WorkerLostError("old").cause is None


@pytest.mark.parametrize(
    ("text", "n"),
    [("2GiB", 2 << 30), ("500MB", 500_000_000), ("500mb", 500_000_000), ("1048576", 1 << 20), (" 1.5 G ", 1_500_000_000),
     ("64KiB", 65536), ("1k", 1000), ("3B", 3), (4096, 4096), ("1TiB", 1 << 40)],
)
def test_parse_size(text: object, n: int) -> None:
    assert parse_size(text) == n


@pytest.mark.parametrize("bad", ["", "GiB", "12XB", "-5MB", "0", "0.1", "1e3", "2 GiB extra", 0, -1, True, 1.5, None])
def test_parse_size_refuses_with_the_value_named(bad: object) -> None:
    with pytest.raises(ValueError, match="worker_memory_limit") as info:
        parse_size(bad)
    assert repr(bad) in str(info.value)


@pytest.mark.parametrize(
    ("n", "text"), [(900, "900 B"), (1536, "1.5 KiB"), (612 << 20, "612 MiB"), (int(61.25 * (1 << 20)), "61.2 MiB"),
                    (3 << 40, "3 TiB"), (5000 << 40, "5000 TiB")],
)
def test_format_size(n: int, text: str) -> None:
    assert format_size(n) == text


MOUNTINFO = """\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
"""


def test_cgroup_v1_memory_controller_comes_first() -> None:
    cgroup = "9:name=systemd:/\n4:memory:/jobs/a1\n1:cpu:/\n0::/\n"
    assert oomwatch.candidates(cgroup, MOUNTINFO) == [
        "/sys/fs/cgroup/memory/jobs/a1/memory.oom_control",
        "/sys/fs/cgroup/unified/memory.events",
    ]


def test_cgroup_v2_only_and_a_mount_of_a_subtree() -> None:
    mountinfo = "50 1 0:40 /kube/pod1 /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n"
    assert oomwatch.candidates("0::/kube/pod1/ctr\n", mountinfo) == ["/sys/fs/cgroup/ctr/memory.events"]
    assert oomwatch.candidates("0::/elsewhere\n", mountinfo) == []  # not under that mount
    assert oomwatch.candidates("", mountinfo) == [] and oomwatch.candidates("garbage", "garbage") == []
    spaced = "50 1 0:40 / /mnt/cg\\040v2 rw - cgroup2 cgroup2 rw\n"
    assert oomwatch.candidates("0::/x\n", spaced) == ["/mnt/cg v2/x/memory.events"]


def test_read_count_of_both_file_formats(tmp_path: Path) -> None:
    v1 = tmp_path / "memory.oom_control"
    v1.write_text("oom_kill_disable 0\nunder_oom 0\noom_kill 4\n")
    v2 = tmp_path / "memory.events"
    v2.write_text("low 0\nhigh 0\nmax 12\noom 3\noom_kill 2\noom_group_kill 0\n")
    old = tmp_path / "old"
    old.write_text("oom_kill_disable 0\nunder_oom 0\n")  # before Linux 4.13
    assert [oomwatch.read_count(str(p)) for p in (v1, v2, old, tmp_path / "absent")] == [4, 2, None, None]


def test_each_oom_kill_explains_one_death(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    f = tmp_path / "memory.events"
    f.write_text("oom_kill 5\n")
    where: list[str | None] = [str(f)]
    monkeypatch.setattr(oomwatch, "locate", lambda: where[0])
    counter = oomwatch.OomCounter()
    assert counter.explains_sigkill() is False  # nothing since we started
    f.write_text("oom_kill 7\n")  # two workers killed at once
    assert [counter.explains_sigkill() for _ in range(3)] == [True, True, False]
    other = tmp_path / "other"
    other.write_text("oom_kill 9\n")
    where[0] = str(other)  # moved to another cgroup: cannot tell this once
    assert counter.explains_sigkill() is None
    assert counter.explains_sigkill() is False
    where[0] = None  # no memory cgroup to read
    assert counter.explains_sigkill() is None


def test_locate_parses_mountinfo_again_only_when_the_cgroup_changes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "memory.events").write_text("oom 0\noom_kill 2\n")
    proc = {"cgroup": "0::/a\n", "mountinfo": f"50 1 0:40 / {tmp_path} rw - cgroup2 cgroup2 rw\n"}
    reads: list[str] = []

    def read_proc(name: str) -> str:
        reads.append(name)
        return proc[name]

    monkeypatch.setattr(oomwatch, "_read_proc", read_proc)
    monkeypatch.setattr(oomwatch, "_located", None)
    assert oomwatch.locate() == str(tmp_path / "a" / "memory.events")
    assert oomwatch.locate() == str(tmp_path / "a" / "memory.events")  # a second pool of the process
    assert reads.count("mountinfo") == 1 and reads.count("cgroup") == 2
    proc["cgroup"] = "0::/b\n"  # moved to another cgroup: found again
    assert oomwatch.locate() == str(tmp_path / "b" / "memory.events")
    assert reads.count("mountinfo") == 2
    counter = oomwatch.OomCounter()
    assert counter.used == 2 and counter.explains_sigkill() is False
    (tmp_path / "b" / "memory.events").write_text("oom 1\noom_kill 3\n")
    assert counter.explains_sigkill() is True


def test_files_are_read_whole_with_os_read(tmp_path: Path) -> None:
    # /proc/self/mountinfo passes 64 KiB on hosts with many mounts: read to its end.
    mountinfo = tmp_path / "mountinfo"
    text = "".join(f"{i} 1 0:{i} / /mnt/m{i} rw - tmpfs tmpfs rw\n" for i in range(3000))
    mountinfo.write_text(text)
    assert len(text) > 65536 and oomwatch._read(str(mountinfo)) == text.encode()
    assert oomwatch._read(str(tmp_path / "absent")) == b""
