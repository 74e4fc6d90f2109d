"""A cluster Pipe: two ends, their messages, and who holds each end (a reactor kind, no I/O).

    end 0 --send--> inbox[1] --recv--> end 1        (duplex: both ways)
    end 1 --send--> inbox[0] --recv--> end 0        (one-way: end 0 reads, end 1 writes)

An end is open while some *handle* of it lives, as a pipe's end is open
while some process has a descriptor of it. The creator gets handles 1 (end
0) and 2 (end 1). Pickling an end (``dup``) makes a new handle, *pending*:
owned by the pickling peer until a process unpickles it (``claim``: the
handle becomes the claimer's). ``close`` drops one handle; a peer that
leaves (Bye, or silent) drops every handle it owns, pending ones included.
When the last handle of an end goes, the end is closed for good: the other
end's ``recv`` gets the messages already sent, then ``EOFError``; its
``send`` raises ``BrokenPipeError``; its ``poll`` answers True.

Requests carry the handle as ``args[0]``; a handle that is gone raises
``OSError`` ("handle is closed"), as a closed descriptor does.
"""

from __future__ import annotations

import itertools
from collections import deque
from dataclasses import dataclass
from typing import Any, ClassVar

from dmp_server.shared import Out, Refusal, Request, Shared, arg

CLOSED = "handle is closed"


@dataclass(slots=True)
class _Handle:
    end: int
    owner: str
    pending: bool = False  # pickled, not yet claimed by the process that unpickles it


class Pipe(Shared):
    KIND = "Pipe"
    TRACKS_HOLDERS: ClassVar[bool] = True  # a peer holds the pipe while it owns a handle of it

    def __init__(self, args: list[Any], frames: list[Any]) -> None:
        self.duplex: bool = arg(args, 0, True, bool)
        self.handles: dict[int, _Handle] = {}
        self._ids = itertools.count(3)
        self.live = [0, 0]  # handles per end
        self.gone = [False, False]  # the end was closed for good (its last handle went)
        self.inbox: tuple[deque[list[Any]], deque[list[Any]]] = (deque(), deque())
        self.waiting: tuple[deque[Request], deque[Request]] = (deque(), deque())  # parked recv / poll

    def created(self, peer: str) -> None:
        self._add(1, 0, peer)
        self._add(2, 1, peer)

    def holds(self, peer: str) -> bool:
        return any(h.owner == peer for h in self.handles.values())

    def describe(self) -> str:
        return f"<managed Pipe object, {'duplex' if self.duplex else 'one-way'}, {sum(map(len, self.inbox))} messages>"

    # --- handles ---

    def _add(self, hid: int, end: int, peer: str, pending: bool = False) -> None:
        self.handles[hid] = _Handle(end, peer, pending)
        self.live[end] += 1

    def _handle(self, req: Request) -> tuple[int, _Handle]:
        hid = arg(req.args, 0, None, int)
        handle = self.handles.get(hid) if hid is not None else None
        if handle is None:
            raise Refusal("OSError", CLOSED)
        return hid, handle

    def _drop(self, hid: int, out: Out) -> None:
        handle = self.handles.pop(hid)
        end = handle.end
        self.live[end] -= 1
        for req in self.waiting[end]:  # another thread of that process waits on the handle closed
            if not req.done and req.args[:1] == [hid]:
                out.fail(req, "OSError", CLOSED)
        if self.live[end] == 0 and not self.gone[end]:
            self.gone[end] = True
            other = self.waiting[1 - end]
            for req in other:  # nothing waits while its inbox holds messages: each learns of the EOF
                if req.done:
                    continue
                if req.method == "poll":
                    out.ok(req, True)
                else:
                    out.fail(req, "EOFError", "")
            other.clear()

    def do_dup(self, req: Request, out: Out) -> None:
        """A process pickles its end: a new pending handle, the pickler's until claimed."""
        _, handle = self._handle(req)
        hid = next(self._ids)
        self._add(hid, handle.end, req.peer, pending=True)
        out.ok(req, hid)

    def do_claim(self, req: Request, out: Out) -> None:
        """A process unpickles an end: it takes the pending handle, or (unpickled again) a new one."""
        hid = arg(req.args, 0, 0, int)
        end = arg(req.args, 1, 0, int)
        if end not in (0, 1):
            raise Refusal("ValueError", f"a pipe has ends 0 and 1, not {end}")
        handle = self.handles.get(hid)
        if handle is not None and handle.pending and handle.end == end:
            handle.owner, handle.pending = req.peer, False
        else:
            hid = next(self._ids)
            self._add(hid, end, req.peer)
        out.ok(req, hid)

    def do_close(self, req: Request, out: Out) -> None:
        hid, _ = self._handle(req)
        self._drop(hid, out)
        out.ok(req)

    def peer_gone(self, peer: str, out: Out) -> None:
        for waiting in self.waiting:
            for req in waiting:
                if req.peer == peer:
                    req.done = True
        for hid in [hid for hid, h in self.handles.items() if h.owner == peer]:
            self._drop(hid, out)

    # --- messages ---

    def do_send(self, req: Request, out: Out) -> None:
        _, handle = self._handle(req)
        if not (self.duplex or handle.end == 1):
            raise Refusal("OSError", "connection is read-only")
        to = 1 - handle.end
        if self.gone[to]:
            raise Refusal("BrokenPipeError", "[Errno 32] Broken pipe")
        self.inbox[to].append(req.frames)
        out.ok(req)
        self._settle(to, out)

    def _readable(self, req: Request) -> int:
        _, handle = self._handle(req)
        if not (self.duplex or handle.end == 0):
            raise Refusal("OSError", "connection is write-only")
        return handle.end

    def do_recv(self, req: Request, out: Out) -> None:
        end = self._readable(req)
        if self.inbox[end]:
            out.ok(req, frames=self.inbox[end].popleft())
        elif self.gone[1 - end]:
            out.fail(req, "EOFError", "")
        else:
            self._wait(end, req, out)

    def do_unrecv(self, req: Request, out: Out) -> None:
        """Give back a message whose interrupted receiver never got it: first in line again."""
        end = arg(req.args, 1, 0, int)
        if end not in (0, 1):
            raise Refusal("ValueError", f"a pipe has ends 0 and 1, not {end}")
        self.inbox[end].appendleft(req.frames)
        out.ok(req)
        self._settle(end, out)

    def do_poll(self, req: Request, out: Out) -> None:
        end = self._readable(req)
        if self.inbox[end] or self.gone[1 - end]:
            out.ok(req, True)
        elif not req.blocking:
            out.ok(req, False)
        else:
            self._wait(end, req, out)

    def _wait(self, end: int, req: Request, out: Out) -> None:
        waiting = self.waiting[end]
        if len(waiting) >= 64:  # polls that timed out stay behind as done: sweep them
            live = [r for r in waiting if not r.done]
            waiting.clear()
            waiting.extend(live)
        waiting.append(req)
        out.park(req)

    def expire(self, req: Request, out: Out) -> None:
        out.ok(req, False)  # only a poll has a deadline

    def _settle(self, end: int, out: Out) -> None:
        """A message came for ``end``: wake its pollers, hand messages to its receivers in order."""
        waiting, inbox = self.waiting[end], self.inbox[end]
        while waiting and inbox:
            req = waiting.popleft()
            if req.done:
                continue
            if req.method == "poll":
                out.ok(req, True)
            else:
                out.ok(req, frames=inbox.popleft())


KINDS: dict[str, type[Shared]] = {Pipe.KIND: Pipe}
