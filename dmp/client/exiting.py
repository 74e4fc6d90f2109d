"""Exit hooks that run after multiprocessing has waited for this process's children.

The standard library's exit handler (``multiprocessing.util._exit_function``,
registered with :mod:`atexit` when ``multiprocessing`` is imported) terminates
the daemonic children and joins the others, then runs the finalizers of
negative priority. dmp imports ``multiprocessing`` before it could register
any :mod:`atexit` handler of its own, and :mod:`atexit` runs handlers last in,
first out: an :mod:`atexit` handler of dmp would run *before* that join, and
closing a cluster link there lost every non-daemonic remote ``Process`` the
script had not joined. So dmp's teardown at exit of what remote processes
use (cluster links, loopback clusters, proxy connections) is a finalizer of
negative priority instead. Local pools' engines still stop in an
:mod:`atexit` handler, before that join: their workers are multiprocessing
children the engine itself reaps.
"""

from __future__ import annotations

from collections.abc import Callable
from multiprocessing import util as _mp_util

#: Priorities of dmp's exit finalizers: engines and proxy connections first,
#: then the loopback clusters whose daemons they talk to.
LINKS = -100
CLUSTERS = -110


def after_children(fn: Callable[[], None], priority: int = LINKS) -> Callable[[], None]:
    """Runs ``fn`` when this process exits, after multiprocessing has joined
    its non-daemonic children (and terminated the daemonic ones); usable as a
    decorator. ``fn`` must not raise.

    Registered in this process only, as an :mod:`atexit` handler would be: a
    child that multiprocessing forks starts with no finalizers and leaves
    through ``os._exit``, and a finalizer inherited by a plain ``os.fork()``
    does nothing there (it belongs to another pid), so a child never tears
    down its parent's engines.
    """
    _mp_util.Finalize(None, fn, exitpriority=priority)
    return fn
