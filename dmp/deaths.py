"""Why a worker process died, as its supervisor knows it: :class:`WorkerDeath`.

    supervisor reaps a worker --> WorkerDeath (exit code + what the node saw)
      --> WorkerExited.cause (a small dict) --> manager's message for the task
      --> WorkerLostError.cause in the caller

What the node can see besides the exit code: that it killed the worker
itself (over the worker memory limit, or stopped too long), and whether the
kernel's OOM killer killed a process of its memory cgroup meanwhile
(dmp.node.oomwatch). With no way to tell, a SIGKILL is said to be possibly
the OOM killer's, which is its most common sender.

Also the size helpers of ``--worker-memory-limit``: :func:`parse_size`,
:func:`format_size`.
"""

from __future__ import annotations

import re
import signal
from dataclasses import dataclass
from typing import Any

EXIT = "exit"  # exited with a code of its own
SIGNAL = "signal"  # killed by a signal nobody on the node explains
OOM = "oom"  # killed by the kernel's OOM killer (its memory cgroup's counter rose)
MEMORY_LIMIT = "memory_limit"  # killed by its node: the task's RSS passed the worker memory limit
STOPPED = "stopped"  # killed by its node: stopped (SIGSTOP, a debugger) too long
UNKNOWN = "unknown"  # gone without its node saying how (node lost, connection lost)
KINDS = frozenset({EXIT, SIGNAL, OOM, MEMORY_LIMIT, STOPPED, UNKNOWN})


@dataclass(frozen=True, slots=True)
class WorkerDeath:
    """What a worker's node knows of why it died; ``WorkerLostError.cause``.

    ``kind`` is one of ``"exit"``, ``"signal"``, ``"oom"`` (the kernel's OOM
    killer), ``"memory_limit"`` (its node killed it: the task's resident
    memory ``rss`` passed ``limit``, both in bytes), ``"stopped"`` (its node
    killed it after it was stopped too long) or ``"unknown"``. ``exitcode``
    is the process's (negative for a signal; None if unknown).
    ``maybe_oom`` is True for a SIGKILL its node cannot explain and cannot
    check the OOM killer's count for. ``str()`` says it in words.
    """

    kind: str
    exitcode: int | None = None
    rss: int = 0
    limit: int = 0
    maybe_oom: bool = False

    @classmethod
    def of_exit(cls, exitcode: int | None, *, oom: bool | None = False) -> WorkerDeath:
        """From an exit code alone. ``oom``: whether the OOM killer's count rose
        (None: cannot tell); it matters only for a SIGKILL."""
        if exitcode is None:
            return cls(UNKNOWN)
        if exitcode >= 0:
            return cls(EXIT, exitcode)
        if exitcode == -signal.SIGKILL:
            if oom:
                return cls(OOM, exitcode)
            return cls(SIGNAL, exitcode, maybe_oom=oom is None)
        return cls(SIGNAL, exitcode)

    @property
    def signal(self) -> int | None:
        """The signal number that ended the process, None if it exited or is unknown."""
        return -self.exitcode if self.exitcode is not None and self.exitcode < 0 else None

    @property
    def task_fault(self) -> bool:
        """True when the task itself is to blame (it passed the worker memory limit)."""
        return self.kind == MEMORY_LIMIT

    def __str__(self) -> str:
        kind = self.kind
        if kind == EXIT:
            return f"exited with code {self.exitcode}"
        if kind == OOM:
            return "was killed by the kernel's OOM killer (out of memory)"
        if kind == MEMORY_LIMIT:
            return (f"exceeded the worker memory limit (RSS {format_size(self.rss)} > limit "
                    f"{format_size(self.limit)}) and was killed by its node")
        if kind == STOPPED:
            return "was stopped (SIGSTOP or a debugger) for too long and killed by its node"
        if kind == SIGNAL and self.signal is not None:
            text = f"was killed by {signal_text(self.signal)}"
            if self.maybe_oom:
                text += ", possibly by the kernel's OOM killer (out of memory; its node cannot tell)"
            return text
        return "was lost without its node saying how (the node or its connection went away)"

    def to_wire(self) -> dict[str, Any]:
        """The ``WorkerExited.cause`` / LOST info dict (msgpack-able)."""
        out: dict[str, Any] = {"kind": self.kind}
        if self.rss or self.limit:
            out["rss"], out["limit"] = self.rss, self.limit
        if self.maybe_oom:
            out["maybe_oom"] = True
        return out

    @classmethod
    def from_wire(cls, obj: object, exitcode: int | None) -> WorkerDeath:
        """Read a peer's cause dict; anything malformed falls back to what ``exitcode`` says."""
        if type(exitcode) is not int:
            exitcode = None
        if not isinstance(obj, dict):
            return cls.of_exit(exitcode, oom=False)
        kind = obj.get("kind")
        if not isinstance(kind, str) or kind not in KINDS:
            return cls.of_exit(exitcode, oom=False)
        rss, limit, maybe = obj.get("rss", 0), obj.get("limit", 0), obj.get("maybe_oom", False)
        if (type(rss) is not int or type(limit) is not int or not 0 <= rss < 1 << 62
                or not 0 <= limit < 1 << 62 or type(maybe) is not bool):
            return cls.of_exit(exitcode, oom=False)
        return cls(kind, exitcode, rss, limit, maybe)


def loss_text(death: WorkerDeath, node: str, pid: int) -> str:
    """The manager's words for a task whose worker died running it (the start of
    ``WorkerLostError``'s message; the manager may add how many attempts were made)."""
    if death.kind == MEMORY_LIMIT:
        return (f"task exceeded the worker memory limit (RSS {format_size(death.rss)} > limit "
                f"{format_size(death.limit)}) on node {node!r} pid {pid}: its worker process was killed")
    return f"worker process pid {pid} on node {node!r} {death} while running this task"


def signal_text(signum: int) -> str:
    """``signal 9 (SIGKILL)``; ``signal 77`` for a number without a name."""
    try:
        return f"signal {signum} ({signal.Signals(signum).name})"
    except ValueError:
        return f"signal {signum}"


_UNITS = {
    "": 1, "b": 1,
    "k": 1000, "kb": 1000, "kib": 1 << 10,
    "m": 1000**2, "mb": 1000**2, "mib": 1 << 20,
    "g": 1000**3, "gb": 1000**3, "gib": 1 << 30,
    "t": 1000**4, "tb": 1000**4, "tib": 1 << 40,
}
_SIZE = re.compile(r"\s*([0-9]+(?:\.[0-9]*)?|\.[0-9]+)\s*([A-Za-z]*)\s*")


def parse_size(value: object, what: str = "worker_memory_limit") -> int:
    """Bytes from an int or a text such as ``2GiB``, ``500MB``, ``1.5G``, ``1048576``.

    Decimal units (kB, MB, GB, TB; K, M, G, T) are powers of 1000, binary
    ones (KiB, MiB, GiB, TiB) powers of 1024; case does not matter.

    Raises:
        ValueError: not a positive size (names ``what`` and the value).
    """
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ValueError(f"{what} must be a size in bytes (an int, or a text such as '2GiB'), not {value!r}")
    if isinstance(value, int):
        n = value
    else:
        m = _SIZE.fullmatch(value)
        unit = m.group(2).lower() if m else ""
        if m is None or unit not in _UNITS:
            raise ValueError(
                f"{what} must be a size such as 2GiB, 500MB or 1048576 (units B, kB, MB, GB, TB, KiB, MiB, "
                f"GiB, TiB), not {value!r}"
            )
        n = int(float(m.group(1)) * _UNITS[unit])
    if n <= 0 or n >= 1 << 62:
        raise ValueError(f"{what} must be more than 0 bytes and less than 4 EiB, not {value!r}")
    return n


def format_size(n: int) -> str:
    """``612 MiB``, ``1.5 GiB``, ``900 B``: binary units, about three digits."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            break
        value /= 1024
    if unit == "B" or value >= 100:
        return f"{value:.0f} {unit}"
    return f"{value:.3g} {unit}"
