"""The shared objects the manager hosts itself: what every kind has in common.

    ObjectServer --call(req, out)--> Queue | JoinableQueue | Lock | RLock |
        Semaphore | BoundedSemaphore | Event | Condition | Barrier | Value | Array
    each call answers now (out.ok / out.fail), or parks the request
    (out.park: it waits, with its deadline) until a later call wakes it;
    a deadline that passes is expire(req); a departed peer is peer_gone(peer);
    an interrupted caller's parked request is marked done, then cancel(req)

No I/O, no clock, no pickles: an item is a list of payload frames passed
through untouched; a Value is its pickled bytes; an Array is raw machine
items (``array.array`` layout) cut by index arithmetic.

This module holds the contract (Request, Out, Refusal, the Shared base);
the kinds live in ``shared_data`` (Queue, JoinableQueue, Value, Array:
objects that hold data) and ``shared_sync`` (Lock, RLock, Condition,
Semaphore, BoundedSemaphore, Event, Barrier: objects that only make callers
wait); ``objects.KINDS`` names them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, ClassVar

from dmp.wire import protocol
from dmp.wire.protocol import ObjStatus
from dmp_server.scheduler import Command, Send

Owner = tuple[str, int]  # (peer, thread)


class Refusal(Exception):
    """A request the object refuses; becomes ObjReply(FAILED, [name, text])."""

    def __init__(self, name: str, text: str) -> None:
        super().__init__(text)
        self.name = name
        self.text = text


@dataclass(slots=True, eq=False)
class Request:
    """One call on an object; lives on while it is parked."""

    peer: str
    ref: int
    thread: int
    method: str
    args: list[Any]
    frames: list[Any]
    timeout: float = -1.0  # -1: wait forever; 0: do not wait
    done: bool = False  # answered (or its peer left): skip it wherever it still sits
    stage: int = 0  # Condition.wait: 0 waiting for notify, 1 notified, 2 timed out
    saved: int = 0  # Condition.wait: the recursion count to restore

    @property
    def owner(self) -> Owner:
        return (self.peer, self.thread)

    @property
    def blocking(self) -> bool:
        return self.timeout != 0


@dataclass(slots=True)
class Out:
    """What one event produced: replies to send and requests to park."""

    commands: list[Command] = field(default_factory=list)
    parked: list[tuple[Request, float]] = field(default_factory=list)  # (request, timeout)
    notes: list[str] = field(default_factory=list)  # log lines for the reactor
    # peer_gone: the peer vanished (killed, silent) rather than saying Bye.
    crashed: bool = True

    def ok(self, req: Request, value: Any = None, frames: list[Any] | None = None) -> None:
        req.done = True
        self.commands.append(Send(req.peer, protocol.ObjReply(req.ref, ObjStatus.OK, value), frames or []))

    def fail(self, req: Request, name: str, text: str) -> None:
        req.done = True
        msg = protocol.ObjReply(req.ref, ObjStatus.FAILED, [name, text])
        self.commands.append(Send(req.peer, msg))

    def park(self, req: Request, timeout: float | None = None) -> None:
        self.parked.append((req, req.timeout if timeout is None else timeout))


def arg(args: list[Any], i: int, default: Any, kind: type | tuple[type, ...]) -> Any:
    value = args[i] if len(args) > i else default
    if value is not default and (not isinstance(value, kind) or (isinstance(value, bool) and kind is int)):
        raise Refusal("TypeError", f"argument {i + 1} must be {getattr(kind, '__name__', kind)}, not {type(value).__name__}")
    return value


def live(reqs: Iterable[Request]) -> list[Request]:
    return [r for r in reqs if not r.done]


def abandon(requests: Iterable[Request], peer: str) -> None:
    """Parked requests of a peer that left: nobody waits for them any more."""
    for req in requests:
        if req.peer == peer:
            req.done = True


class Shared:
    """Base of the reactor kinds."""

    KIND: ClassVar[str] = ""
    # Whether holds(peer) decides who holds the object (checked after each call).
    TRACKS_HOLDERS: ClassVar[bool] = False

    def __init__(self, args: list[Any], frames: list[Any]) -> None:
        pass

    def created(self, peer: str) -> None:
        """``peer`` made this object (called once, right after the constructor)."""

    def holds(self, peer: str) -> bool:
        """With TRACKS_HOLDERS: whether ``peer`` still holds the object after its call."""
        return True

    # Per kind, method name -> its do_<name> (made once per class: no getattr per call).
    _DO: ClassVar[dict[str, Callable[[Any, Request, Out], None]]] = {}

    # Per kind, the calls it may answer without a Request: method name -> a function of
    # (object, args, frames) giving (value, frames) when the call is answered now and
    # changes nothing else (no parked call woken, nothing parked), else None (the
    # full path, call(), then runs). A kind that tracks holders has none.
    QUICK: ClassVar[dict[str, Callable[[Any, list[Any], list[Any]], tuple[Any, list[Any]] | None]]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls._DO = {name[3:]: getattr(cls, name) for name in dir(cls) if name.startswith("do_")}

    def call(self, req: Request, out: Out) -> None:
        handler = self._DO.get(req.method)
        if handler is None:
            if req.method in ("__repr__", "__str__"):  # what str(proxy) shows, as multiprocessing's fallback
                out.ok(req, self.describe())
                return
            raise Refusal("AttributeError", f"{self.KIND} has no method {req.method!r}")
        handler(self, req, out)

    def describe(self) -> str:
        return f"<managed {self.KIND} object>"

    def expire(self, req: Request, out: Out) -> None:
        """``req``'s deadline passed while it was parked."""

    def peer_gone(self, peer: str, out: Out) -> None:
        """``peer`` left: forget its parked requests, give back what it held."""

    def cancel(self, req: Request, out: Out) -> None:
        """Parked ``req`` was cancelled (already marked done, never answered).

        Most kinds need nothing more: they skip done requests wherever they sit.
        """
