"""What a manager's typeids are: their registrations, and the reactor kinds' argument encoders.

    BaseManager.register(typeid, callable, ...) --> Registration in the class's registry
    callable is a ReactorKind: the manager's reactor serves it (dmp_server.shared_*);
        its encoder turns the constructor's arguments into plain data and payload frames
    any other callable: the object host calls it (HOST_BUILTINS it knows itself)
"""

from __future__ import annotations

import array
from dataclasses import dataclass
from typing import Any

from dmp import serialization

# Typeids every object host knows itself: their callables never travel.
HOST_BUILTINS = frozenset({"dict", "list", "Namespace", "Pool", "Iterator", "AsyncResult", "ActionBarrier"})


class ReactorKind:
    """A typeid the manager serves itself; turns constructor arguments into plain data."""

    def __init__(self, kind: str, encode: Any) -> None:
        self.kind = kind
        self.encode = encode  # (*args, **kwds) -> (plain args, payload frames, token info)

    def __repr__(self) -> str:
        return f"<dmp reactor kind {self.kind}>"


def no_args() -> tuple[list[Any], list[Any], Any]:
    return [], [], None


def queue_args(maxsize: int = 0) -> tuple[list[Any], list[Any], Any]:
    return [int(maxsize)], [], None


def semaphore_args(value: int = 1) -> tuple[list[Any], list[Any], Any]:
    if value < 0:
        raise ValueError("semaphore initial value must be >= 0")
    return [int(value)], [], None


def condition_args(lock: Any = None) -> tuple[list[Any], list[Any], Any]:
    if lock is not None:
        raise TypeError("a managed Condition has its own lock in dmp; lock= is not supported")
    return [], [], None


def barrier_args(parties: int, action: Any = None, timeout: float | None = None) -> tuple[list[Any], list[Any], Any]:
    if action is not None:  # SyncManager.Barrier sends these to the object host instead
        raise TypeError("the manager's reactor Barrier runs no action")
    return [int(parties), timeout], [], None


def value_args(typecode: str, value: Any, lock: Any = True) -> tuple[list[Any], list[Any], Any]:
    return [typecode], serialization.dumps(value), typecode


def array_args(typecode: str, sequence: Any, lock: Any = True) -> tuple[list[Any], list[Any], Any]:
    return [typecode], [array.array(typecode, sequence).tobytes()], typecode


@dataclass(frozen=True)
class Registration:
    callable: Any
    exposed: tuple[str, ...] | None
    method_to_typeid: dict[str, str] | None
    proxytype: Any
    create_method: bool = True
