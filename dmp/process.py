"""``dmp.Process``: multiprocessing's Process, forked locally.

In local mode this is the standard library's fork-started process (same pid,
sentinel, exitcode and ``current_process`` semantics). Cluster mode, where the
target runs on a worker node, builds on the same class.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from dmp import _config

_ForkProcess: Any = multiprocessing.get_context("fork").Process


class Process(_ForkProcess):  # type: ignore[misc]
    """A process running ``target(*args, **kwargs)``; subclass and override ``run`` as usual."""

    def __init__(
        self,
        group: None = None,
        target: Callable[..., Any] | None = None,
        name: str | None = None,
        args: Iterable[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
        *,
        daemon: bool | None = None,
        address: object = None,
    ) -> None:
        super().__init__(group, target, name, tuple(args), dict(kwargs or {}), daemon=daemon)
        target_ = _config.resolve(address)
        if target_.address is not None:
            raise NotImplementedError("cluster mode Process is not available yet")
        self._dmp_address = target_.address


current_process = multiprocessing.current_process
active_children = multiprocessing.active_children
parent_process = multiprocessing.parent_process
