"""Ctrl-C between steps, never in the middle of one (internal).

A caller waiting on a result runs dmp's I/O itself (the client link, or the
embedded reactor in local mode). In the main thread, a KeyboardInterrupt
could land halfway through handling a message: a result received but not
delivered, the scheduler half updated, and the pool broken for the next
call. A caller that runs dmp's I/O holds ``critical`` for the whole time
(its finally-clauses included: a lock left held would hang everyone) and
opens ``interruptible`` only around its blocking waits: a SIGINT is raised
there at once, as with multiprocessing, and is held anywhere else until the
step ends.

Python runs signal handlers in the main thread only, so only the main
thread counts. The handler is installed the first time it is needed, and
only over Python's default one (a handler of the user's is left alone); it
behaves exactly like the default outside a critical step.

A forked child starts with a depth of 0, nothing pending, and its own main
thread (the one that forked): reset on its first step, which finds
``_unforked`` empty. Its at-fork handler is that list's builtin ``clear``:
no Python runs at the fork (each Python function a fresh child runs costs
it a page copy or two, and a pool's workers are forked children).
"""

from __future__ import annotations

import os
import signal
import threading
from types import FrameType, TracebackType

_main = threading.main_thread().ident
# Emptied in every forked child: _main, _depth and _pending are its parent's until its first step.
_unforked = [True]
os.register_at_fork(after_in_child=_unforked.clear)
_depth = 0
_pending = False
_installed = False


def _handler(signum: int, frame: FrameType | None) -> None:
    global _pending
    if _depth > 0:
        _pending = True
        return
    signal.default_int_handler(signum, frame)


def _install() -> None:
    global _installed
    _installed = True
    try:
        if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
            signal.signal(signal.SIGINT, _handler)
    except ValueError:  # not the main interpreter's main thread after all
        pass


class _Critical:
    """``with critical:`` around one step; reentrant, free outside the main thread."""

    __slots__ = ()

    def __enter__(self) -> None:
        global _depth
        if not _unforked:
            _after_fork()
        if threading.get_ident() == _main:
            if not _installed:
                _install()
            _depth += 1

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        global _depth, _pending
        if not _unforked:
            _after_fork()
        if threading.get_ident() != _main:
            return
        # Never below 0: a SIGINT taken on the first bytecodes of an
        # ``interruptible`` exit (the wait returned, the depth not yet put
        # back) leaves the depth at 0 here. Below 0, every later SIGINT would
        # be held and raised at some later, unrelated wait.
        _depth = max(_depth - 1, 0)
        if _depth == 0 and _pending:
            _pending = False
            if kind is None:
                raise KeyboardInterrupt


class _Interruptible:
    """``with interruptible:`` around the blocking wait inside a critical step:
    a SIGINT held so far is raised now, and one arriving during the wait at once."""

    __slots__ = ("_saved",)

    def __init__(self) -> None:
        self._saved: list[int] = []

    def __enter__(self) -> None:
        global _depth, _pending
        if threading.get_ident() != _main:
            return
        self._saved.append(_depth)
        _depth = 0
        if _pending:
            _pending = False
            self._leave()
            raise KeyboardInterrupt

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if threading.get_ident() == _main:
            self._leave()

    def _leave(self) -> None:
        global _depth
        _depth = self._saved.pop()


critical = _Critical()
interruptible = _Interruptible()


def _after_fork() -> None:
    """In a forked child, on its main thread's first step: the state starts afresh, as in
    a new process. (Only there: that thread alone counts, and two threads must not both
    reset it. Another thread's ident is never the parent's main thread's, which is what
    ``_main`` says until then.)"""
    global _main, _depth, _pending
    main = threading.main_thread().ident
    if threading.get_ident() == main:
        _main, _depth, _pending = main, 0, False
        _unforked.append(True)
