"""Shared objects that hold data: queues of payload frames, a Value, an Array.

See ``dmp_server.shared`` for the contract every kind follows.
"""

from __future__ import annotations

import array
from collections import deque
from typing import Any

from dmp_server.shared import Out, Refusal, Request, Shared, abandon, arg, live

# --- queues ---------------------------------------------------------------------------


class Queue(Shared):
    KIND = "Queue"

    def __init__(self, args: list[Any], frames: list[Any]) -> None:
        self.maxsize: int = arg(args, 0, 0, int)
        self.items: deque[list[Any]] = deque()
        self.getters: deque[Request] = deque()
        self.putters: deque[Request] = deque()

    def _full(self) -> bool:
        return 0 < self.maxsize <= len(self.items)

    def _accept(self, frames: list[Any]) -> None:
        self.items.append(frames)

    def _park_or_fail(self, line: deque[Request], req: Request, out: Out, name: str) -> None:
        """Not now: park a blocking request in ``line``; a non-blocking one fails as ``name``."""
        if req.blocking:
            line.append(req)
            out.park(req)
        else:
            out.fail(req, name, "")

    def do_put(self, req: Request, out: Out) -> None:
        if not self._full():
            self._accept(req.frames)
            out.ok(req)
            self._settle(out)
        else:
            self._park_or_fail(self.putters, req, out, "Full")

    def do_get(self, req: Request, out: Out) -> None:
        if self.items:
            out.ok(req, frames=self.items.popleft())
            self._settle(out)
        else:
            self._park_or_fail(self.getters, req, out, "Empty")

    def do_unget(self, req: Request, out: Out) -> None:
        """Give back an item a get took but its interrupted caller never received.

        It goes back first in line, even past ``maxsize`` (it was in the queue a
        moment ago), and, in a JoinableQueue, is not counted again.
        """
        self.items.appendleft(req.frames)
        out.ok(req)
        self._settle(out)

    def _settle(self, out: Out) -> None:
        """Hand items to parked getters and room to parked putters until neither can move."""
        moved = True
        while moved:
            moved = False
            while self.items and self.getters:
                getter = self.getters.popleft()
                if not getter.done:
                    out.ok(getter, frames=self.items.popleft())
                    moved = True
            while self.putters and not self._full():
                putter = self.putters.popleft()
                if not putter.done:
                    self._accept(putter.frames)
                    out.ok(putter)
                    moved = True

    # The quick calls (see Shared.QUICK): a put with room and nobody parked, a get of
    # an item with nobody parked, and the three questions.

    def _quick_put(self, args: list[Any], frames: list[Any]) -> tuple[Any, list[Any]] | None:
        if self.getters or self.putters or self._full():
            return None
        self._accept(frames)
        return None, []

    def _quick_get(self, args: list[Any], frames: list[Any]) -> tuple[Any, list[Any]] | None:
        if not self.items or self.getters or self.putters:
            return None
        return None, self.items.popleft()

    QUICK = {
        "put": _quick_put,
        "get": _quick_get,
        "qsize": lambda self, args, frames: (len(self.items), []),
        "empty": lambda self, args, frames: (not self.items, []),
        "full": lambda self, args, frames: (self._full(), []),
    }

    def do_qsize(self, req: Request, out: Out) -> None:
        out.ok(req, len(self.items))

    def do_empty(self, req: Request, out: Out) -> None:
        out.ok(req, not self.items)

    def do_full(self, req: Request, out: Out) -> None:
        out.ok(req, self._full())

    def expire(self, req: Request, out: Out) -> None:
        out.fail(req, "Empty" if req.method == "get" else "Full", "")

    def peer_gone(self, peer: str, out: Out) -> None:
        abandon((*self.getters, *self.putters), peer)


class JoinableQueue(Queue):
    KIND = "JoinableQueue"

    def __init__(self, args: list[Any], frames: list[Any]) -> None:
        super().__init__(args, frames)
        self.unfinished = 0
        self.joiners: list[Request] = []

    def _accept(self, frames: list[Any]) -> None:
        super()._accept(frames)
        self.unfinished += 1

    def do_task_done(self, req: Request, out: Out) -> None:
        if self.unfinished <= 0:
            raise Refusal("ValueError", "task_done() called too many times")
        self.unfinished -= 1
        out.ok(req)
        if self.unfinished == 0:
            for joiner in live(self.joiners):
                out.ok(joiner)
            self.joiners = []

    def do_join(self, req: Request, out: Out) -> None:
        if self.unfinished == 0:
            out.ok(req)
        else:
            self.joiners.append(req)
            out.park(req, -1.0)

    def peer_gone(self, peer: str, out: Out) -> None:
        super().peer_gone(peer, out)
        abandon(self.joiners, peer)


# --- values ---------------------------------------------------------------------------


class Value(Shared):
    """The pickled value, kept as bytes; ``typecode`` is only remembered."""

    KIND = "Value"

    def __init__(self, args: list[Any], frames: list[Any]) -> None:
        self.typecode: str = arg(args, 0, "", str)
        self.frames = [bytes(f) for f in frames]

    def do_get(self, req: Request, out: Out) -> None:
        out.ok(req, frames=self.frames)

    def do_set(self, req: Request, out: Out) -> None:
        self.frames = [bytes(f) for f in req.frames]
        out.ok(req)


class Array(Shared):
    """An array.array of ``typecode`` as raw bytes; indexing is arithmetic on them.

    Index arguments: ``["i", index]`` or ``["s", start, stop, step]`` (None allowed),
    exactly what a Python index or slice says.
    """

    KIND = "Array"

    def __init__(self, args: list[Any], frames: list[Any]) -> None:
        self.typecode: str = arg(args, 0, "", str)
        if len(self.typecode) != 1 or self.typecode not in array.typecodes:
            raise Refusal("ValueError", f"bad typecode (must be one of {array.typecodes}): {self.typecode!r}")
        self.size = array.array(self.typecode).itemsize
        self.data = bytearray(b"".join(bytes(f) for f in frames))
        if len(self.data) % self.size:
            raise Refusal("ValueError", "array bytes are not a whole number of items")

    def __len__(self) -> int:
        return len(self.data) // self.size

    def _where(self, args: list[Any]) -> tuple[bool, range]:
        """(is a slice, the item indices it names)."""
        if not args or args[0] not in ("i", "s"):
            raise Refusal("TypeError", "array indices must be integers or slices")
        n = len(self)
        if args[0] == "i":
            i = arg(args, 1, 0, int)
            if i < 0:
                i += n
            if not 0 <= i < n:
                raise Refusal("IndexError", "array index out of range")
            return False, range(i, i + 1)
        parts = [args[k] if len(args) > k else None for k in (1, 2, 3)]
        if not all(p is None or (isinstance(p, int) and not isinstance(p, bool)) for p in parts):
            raise Refusal("TypeError", "slice indices must be integers or None")
        if parts[2] == 0:
            raise Refusal("ValueError", "slice step cannot be zero")
        return True, range(n)[slice(*parts)]

    def _cut(self, where: range) -> bytes:
        s = self.size
        if where.step == 1:
            return bytes(self.data[where.start * s : where.stop * s])
        return b"".join(self.data[i * s : (i + 1) * s] for i in where)

    def do_len(self, req: Request, out: Out) -> None:
        out.ok(req, len(self))

    def do_getitem(self, req: Request, out: Out) -> None:
        _, where = self._where(req.args)
        out.ok(req, frames=[self._cut(where)])

    def do_setitem(self, req: Request, out: Out) -> None:
        is_slice, where = self._where(req.args)
        data = b"".join(bytes(f) for f in req.frames)
        s = self.size
        if len(data) % s:
            raise Refusal("TypeError", "assigned bytes are not a whole number of items")
        if is_slice and where.step == 1:
            self.data[where.start * s : max(where.start, where.stop) * s] = data  # may resize
        elif len(data) // s != len(where):
            raise Refusal(
                "ValueError" if is_slice else "TypeError",
                f"attempt to assign array of size {len(data) // s} to extended slice of size {len(where)}",
            )
        else:
            for k, i in enumerate(where):
                self.data[i * s : (i + 1) * s] = data[k * s : (k + 1) * s]
        out.ok(req)
