"""cloudpickle's part of dmp.serialization: imported by it on first use, never at start-up.

A local pool of importable functions pickles with plain pickle alone, so it
never loads cloudpickle (and the ~20 modules it imports: platform, uuid,
dis...), whose pages every fork of the pool's process would copy
(docs/performance.md); the first lambda, closure, cluster payload or
``modules=`` loads it.
"""

from __future__ import annotations

import io
import types
from typing import Any

import cloudpickle


class Pickler(cloudpickle.CloudPickler):  # type: ignore[misc]
    """cloudpickle, but functions sent by value keep their file name.

    cloudpickle writes every code object's file as ``<dynamic-code>`` (so
    its payloads are byte-for-byte reproducible); a remote traceback then
    cannot say where a task's frames come from. dmp sends the real name, and
    the caller's side fills in the source lines (dmp.serialization.with_local_source).
    """

    def reducer_override(self, obj: Any) -> Any:
        if type(obj) is types.CodeType:
            rebuild, args = cloudpickle.cloudpickle._code_reduce(obj)
            return rebuild, tuple(obj.co_filename if a == "<dynamic-code>" else a for a in args)
        return super().reducer_override(obj)


def dumps(obj: Any, take: Any) -> bytes:
    """cloudpickle's protocol 5 pickle of ``obj``; ``take`` is the buffer callback."""
    out = io.BytesIO()
    Pickler(out, protocol=5, buffer_callback=take).dump(obj)
    return out.getvalue()


# cloudpickle's modules registered to travel by value (register_by_value, or
# cloudpickle's own register_pickle_by_value); None if this cloudpickle keeps
# them elsewhere: then dmp.serialization never takes its plain-pickle shortcuts.
BY_VALUE_MODULES: Any = getattr(getattr(cloudpickle, "cloudpickle", None), "_PICKLE_BY_VALUE_MODULES", None)

# Functions cloudpickle pickles by reference (importable, module-level, not
# in ``__main__``), as cloudpickle judged them once: the judgement costs more
# than pickling a small call. Only such functions are held (their module
# holds them anyway); at most this many.
_BY_REFERENCE: dict[Any, None] = {}
_BY_REFERENCE_MAX = 4096


def by_reference(func: Any) -> bool:
    """Whether cloudpickle would pickle ``func`` by reference, i.e. plain pickle's way."""
    if type(func) is not types.FunctionType or BY_VALUE_MODULES is None or BY_VALUE_MODULES:
        return False  # a module registered by value: cloudpickle decides, every time
    if func in _BY_REFERENCE:
        return True
    if not cloudpickle.cloudpickle._should_pickle_by_reference(func):
        return False
    if len(_BY_REFERENCE) < _BY_REFERENCE_MAX:
        _BY_REFERENCE[func] = None
    return True


def register_by_value(module: types.ModuleType) -> None:
    """cloudpickle pickles ``module``'s functions and classes by value from now on."""
    cloudpickle.register_pickle_by_value(module)
