"""What a worker calls for each task: the job's runner applied to the task.

A job with no runner has tasks that are ``(func, args, kwds)`` triples
(``apply``); a map job's runner is a :class:`MapChunk` whose tasks are
lists of items. Runners pickle by value together with the user's function.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def call(task: tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]]) -> Any:
    func, args, kwds = task
    return func(*args, **kwds)


class MapChunk:
    """Runs ``func`` over one chunk of a map's items (``star``: items are arg tuples)."""

    __slots__ = ("func", "star")

    def __init__(self, func: Callable[..., Any], star: bool) -> None:
        self.func = func
        self.star = star

    def __call__(self, items: list[Any]) -> list[Any]:
        func = self.func
        if self.star:
            return [func(*args) for args in items]
        return [func(x) for x in items]

    def __reduce__(self) -> Any:
        return (MapChunk, (self.func, self.star))
