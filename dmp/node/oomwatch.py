"""Did the kernel's OOM killer kill our worker? The memory cgroup's count says.

    supervisor start: OomCounter() reads this process's memory cgroup's
                      oom_kill count (workers are forked into the same cgroup)
    a worker dies of SIGKILL nobody on the node sent:
        count rose past what earlier deaths used up -> True (one kill used up)
        count did not rise                          -> False
        no count to read, or the cgroup changed     -> None (cannot tell)

The count is ``oom_kill`` in ``memory.events`` (cgroup v2) or in
``memory.oom_control`` (cgroup v1, kernel 4.13 and later); the kernel adds one
for every process it kills for want of memory in that cgroup, whether the
cgroup's limit or the whole machine ran out. A process of the cgroup other
than a worker (a task's own child, say) killed the same way may be taken for
a worker's death that follows it; the text that results says "OOM killer",
which is then still what happened in that cgroup.
"""

from __future__ import annotations

import os


def _unescape(path: str) -> str:
    """Mount points in mountinfo have spaces and such as octal escapes (``\\040``)."""
    if "\\" not in path:
        return path
    return path.encode().decode("unicode_escape")


def candidates(cgroup_text: str, mountinfo_text: str) -> list[str]:
    """The files that hold our memory cgroup's ``oom_kill`` count, best first.

    ``cgroup_text`` is ``/proc/self/cgroup``, ``mountinfo_text`` is
    ``/proc/self/mountinfo``; v1's memory controller comes before v2.
    """
    v1_path: str | None = None
    v2_path: str | None = None
    for line in cgroup_text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        ident, controllers, path = parts
        if "memory" in controllers.split(","):
            v1_path = path
        elif ident == "0" and not controllers:
            v2_path = path
    out: list[str] = []
    for want, ours, name in (("cgroup", v1_path, "memory.oom_control"), ("cgroup2", v2_path, "memory.events")):
        if ours is None:
            continue
        for line in mountinfo_text.splitlines():
            left, sep, right = line.partition(" - ")
            fields, tail = left.split(), right.split()
            if not sep or len(fields) < 5 or len(tail) < 3 or tail[0] != want:
                continue
            if want == "cgroup" and "memory" not in tail[2].split(","):
                continue
            root, mount = _unescape(fields[3]), _unescape(fields[4])
            if root != "/" and ours != root and not ours.startswith(root + "/"):
                continue  # a mount of another part of the hierarchy
            rel = ours[len(root):] if root != "/" else ours
            out.append(os.path.join(mount, rel.lstrip("/"), name))
    return out


def read_count(path: str) -> int | None:
    """The ``oom_kill`` line of a memory.events / memory.oom_control file, None if absent."""
    for line in _read(path).splitlines():
        key, _, value = line.partition(b" ")
        if key == b"oom_kill":
            try:
                return int(value)
            except ValueError:
                return None
    return None


def _read(path: str) -> bytes:
    """The whole file, b"" if unreadable: with os.read, not a text file's layers
    of objects (a pool reads two files before its first fork, where each object
    made may cost a page copy; docs/performance.md)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return b""
    chunks = []
    try:
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
    except OSError:
        return b""
    finally:
        os.close(fd)
    return b"".join(chunks)


def _read_proc(name: str) -> str:
    return _read(f"/proc/self/{name}").decode(errors="replace")


# (/proc/self/cgroup, the count file it led to): mountinfo is read and parsed
# again only when our cgroup changes, not for every pool a process starts.
_located: tuple[str, str | None] | None = None


def locate() -> str | None:
    """The readable count file of this process's memory cgroup, or None."""
    global _located
    cgroup = _read_proc("cgroup")
    if _located is not None and _located[0] == cgroup:
        return _located[1]
    found = None
    for path in candidates(cgroup, _read_proc("mountinfo")):
        if read_count(path) is not None:
            found = path
            break
    _located = (cgroup, found)
    return found


class OomCounter:
    """This process's memory cgroup's OOM kills, each used up by at most one worker death."""

    def __init__(self) -> None:
        self.path = locate()
        self.used = read_count(self.path) if self.path else None

    def explains_sigkill(self) -> bool | None:
        """Whether the OOM killer explains a SIGKILL just reaped (None: cannot tell)."""
        path = locate()  # re-read: someone may have moved us to another cgroup
        count = read_count(path) if path else None
        if path != self.path or count is None or self.used is None:
            self.path, self.used = path, count
            return None
        if count > self.used:
            self.used += 1
            return True
        self.used = count  # a reset counter (a recreated cgroup) must not hide later kills
        return False
