"""Modules imported on first use, never while this process forks.

A module one thread is importing when another forks is half-imported in the
child, its import lock held by a thread the child does not have: the
child's first import of it waits forever. A pool's worker forked while the
caller's thread imports cloudpickle for its first lambda would hang on the
very task that lambda is. :func:`load` imports under a lock every
``os.fork`` of this process takes first (``os.register_at_fork``, builtin
methods: no Python runs), so a fork waits for such an import to end, once.
"""

from __future__ import annotations

import _thread
import importlib
import os
from types import ModuleType

# Reentrant: a fork from this very thread while it imports (a signal handler's)
# goes ahead rather than wait for itself. The child's copy is held by the
# forking thread, the one thread it has: released there as in the parent.
_loading = _thread.RLock()
os.register_at_fork(before=_loading.acquire, after_in_parent=_loading.release, after_in_child=_loading.release)


def load(name: str) -> ModuleType:
    """``importlib.import_module(name)``, with no fork of this process under way meanwhile.

    Raises:
        ImportError: as importlib does.
    """
    with _loading:
        return importlib.import_module(name)
