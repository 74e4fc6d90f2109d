"""Payload frames: cloudpickle at protocol 5 with large buffers out of band.

``dumps(obj)`` returns ``[pickle, buffer, buffer, ...]``: numpy arrays, and
bytes, bytearray and memoryview objects of at least ``OOB_THRESHOLD`` bytes
near the top of the object, travel as their own ZeroMQ frames instead of
being copied into the pickle. ``loads(frames)`` reverses it; numpy arrays are
rebuilt on the received frame without a copy.

Local mode pickles by reference first (the workers are forked, so they can
import everything the parent could) and falls back to cloudpickle for what
plain pickle refuses (lambdas, closures); cluster mode uses cloudpickle so
that ``__main__`` travels by value (small plain data, and a call of an
importable function on it, go through plain pickle: cloudpickle would write
the same bytes). cloudpickle is imported on first use (dmp._cloud): a local
pool that never needs it never loads it.
"""

from __future__ import annotations

import linecache
import pickle
import re
import sys
import traceback
import types
from collections.abc import Iterable
from typing import Any

from dmp import _lazy
from dmp.errors import RemoteError, RemoteTraceback

# Below this many bytes a buffer is cheaper to copy into the pickle than to
# send as its own frame (a frame costs a few microseconds of bookkeeping).
OOB_THRESHOLD = 64 * 1024


def _rebuild_bytes(buf: Any) -> bytes:
    return bytes(buf)


def _rebuild_bytearray(buf: Any) -> bytearray:
    return bytearray(buf)


def _rebuild_memoryview(buf: Any) -> memoryview:
    return memoryview(buf)


class _OOB:
    """Wraps a large bytes-like object so that protocol 5 sends it out of band."""

    __slots__ = ("obj",)

    def __init__(self, obj: Any) -> None:
        self.obj = obj

    def __reduce_ex__(self, protocol: Any) -> Any:
        obj = self.obj
        if isinstance(obj, bytes):
            return (_rebuild_bytes, (pickle.PickleBuffer(obj),))
        if isinstance(obj, bytearray):
            return (_rebuild_bytearray, (pickle.PickleBuffer(obj),))
        return (_rebuild_memoryview, (pickle.PickleBuffer(obj),))


_BYTESLIKE = (bytes, bytearray, memoryview)
# Types worth a closer look when scanning a container: big buffers hide in them.
_LOOK_INSIDE = frozenset({bytes, bytearray, memoryview, tuple, list, dict})
# Lists longer than this are judged by a sample of their items (first, middle, last).
_SAMPLE_ABOVE = 64


def _wrap_large(obj: Any, depth: int = 2) -> Any:
    """Wrap large bytes-like objects at the top levels of tuples, lists and dicts."""
    kind = type(obj)
    if kind in (bytes, bytearray, memoryview):
        if kind is memoryview and not obj.contiguous:
            return obj
        nbytes = obj.nbytes if kind is memoryview else len(obj)
        return _OOB(obj) if nbytes >= OOB_THRESHOLD else obj
    if not depth:
        return obj
    if kind is tuple or kind is list:
        if len(obj) > _SAMPLE_ABOVE and _LOOK_INSIDE.isdisjoint(
            {type(obj[0]), type(obj[len(obj) // 2]), type(obj[-1])}
        ):
            # A long list of scalars (a map chunk, its results): scanning every
            # item costs more than pickling them. A big bytes hidden in the
            # middle of such a list is pickled in band: correct, one copy more.
            return obj
        # set(map(type, ...)) runs in C: a list of 10k ints costs ~0.1-0.25 ms.
        if _LOOK_INSIDE.isdisjoint(set(map(type, obj))):
            return obj
        wrapped = [_wrap_large(x, depth - 1) for x in obj]
        if any(a is not b for a, b in zip(wrapped, obj)):
            return kind(wrapped)
    elif kind is dict:
        if not _LOOK_INSIDE.isdisjoint(set(map(type, obj.values()))):
            return {k: _wrap_large(v, depth - 1) for k, v in obj.items()}
    return obj


def _pickle(obj: Any, by_value: bool) -> list[Any]:
    """Frames of ``obj``: plain pickle first unless ``by_value``, cloudpickle for what it refuses."""
    buffers: list[Any] = []

    def take(buf: pickle.PickleBuffer) -> bool:
        # False means "out of band": the buffer becomes its own frame.
        if buf.raw().nbytes >= OOB_THRESHOLD:
            buffers.append(buf.raw())
            return False
        return True

    if not by_value:
        try:
            return [pickle.dumps(obj, protocol=5, buffer_callback=take), *buffers]
        except (pickle.PicklingError, AttributeError, TypeError):
            buffers.clear()
    data = _cloud_dumps(obj, take)
    return [data, *buffers]


# dmp._cloud once imported: hot paths read ``_cloud_module or _cloud()`` (no call once loaded).
_cloud_module: Any = None


def _cloud() -> Any:
    """dmp._cloud (cloudpickle and what dmp adds to it), imported on the first call
    (dmp._lazy: no fork of this process meanwhile)."""
    global _cloud_module
    if _cloud_module is None:
        _cloud_module = _lazy.load("dmp._cloud")
    return _cloud_module


def _cloud_dumps(obj: Any, take: Any) -> bytes:
    """cloudpickle's pickle of ``obj`` (dmp._cloud.dumps)."""
    return (_cloud_module or _cloud()).dumps(obj, take)  # type: ignore[no-any-return]


# Exact types whose pickle is the same by value and by reference, and never
# holds a large buffer: small plain data (most task results, proxy arguments)
# is pickled with plain pickle, without building a cloudpickle Pickler
# (~0.2 µs instead of ~1.7 µs for a scalar).
_SCALARS = frozenset({int, float, str, bool, type(None), complex})
_SMALL_BYTES = frozenset({bytes, bytearray})
_CONTAINERS = frozenset({tuple, list, dict})


def _plain(obj: Any, depth: int = 3) -> bool:
    """Small plain data: scalars, short bytes, and short tuples, lists and dicts of them."""
    kind = type(obj)
    if kind in _SCALARS:
        return True
    if kind in _SMALL_BYTES:
        return len(obj) < OOB_THRESHOLD
    if not depth or kind not in _CONTAINERS or len(obj) > 16:
        return False
    if kind is dict:
        for k, v in obj.items():
            if type(k) not in _SCALARS or (type(v) not in _SCALARS and not _plain(v, depth - 1)):
                return False
        return True
    for x in obj:
        if type(x) not in _SCALARS and not _plain(x, depth - 1):
            return False
    return True


def dumps(obj: Any, *, by_value: bool = True) -> list[Any]:
    """Pickle ``obj`` into frames.

    Raises:
        Exception: whatever pickling raised (PicklingError, TypeError, ...).
    """
    if _plain(obj):
        return [pickle.dumps(obj, protocol=5)]
    if type(obj) is tuple and len(obj) == 3 and _plain(obj[1]) and _plain(obj[2]):
        frames = _call_by_reference(obj, by_value)  # an apply's task
        # None: plain pickle refused, or is not wanted; cloudpickle at once (by_value=True).
        return frames if frames is not None else _pickle(obj, True)
    return _pickle(_wrap_large(obj), by_value)


def _call_by_reference(task: tuple[Any, Any, Any], by_value: bool) -> list[Any] | None:
    """Plain pickle's frames of a call ``(func, args, kwds)`` whose arguments are small
    plain data: in local mode (not ``by_value``) whatever ``func`` is, else if ``func``
    is importable (cloudpickle would write the very same references; its judgement
    loads cloudpickle). None if not, or if plain pickle refused (a lambda, a closure,
    a function its name no longer leads to): cloudpickle takes over."""
    if by_value and not (_cloud_module or _cloud()).by_reference(task[0]):
        return None
    try:
        return [pickle.dumps(task, protocol=5)]
    except (pickle.PicklingError, AttributeError, TypeError):
        return None


def dumps_call(func: Any, args: tuple[Any, ...], kwds: dict[str, Any], *, by_value: bool = True) -> list[Any]:
    """Frames of an apply task ``(func, args, kwds)``: :func:`dumps` of the triple.

    When the arguments are small plain data (:func:`_plain`) nothing in the
    triple can be a large buffer, so the scan for one is skipped (it costs
    more than the pickling); a buffer the function itself holds (a numpy
    array in a closure) still goes out of band.

    Raises:
        Exception: whatever pickling raised (PicklingError, TypeError, ...).
    """
    task = (func, args, kwds)
    if _plain(args) and (not kwds or _plain(kwds)):
        frames = _call_by_reference(task, by_value)
        return frames if frames is not None else _pickle(task, True)
    return _pickle(_wrap_large(task), by_value)


def dumps_quick(obj: Any) -> list[Any]:
    """:func:`dumps` for shared-object calls: plain ``pickle`` first, whatever the object.

    Plain pickle's bytes are kept when they mean what cloudpickle's would: it
    succeeded (a lambda or a local function raises, and goes to cloudpickle),
    the bytes name no ``__main__`` global (cloudpickle sends those by value:
    the receiver may not have them), no module is registered to travel by
    value (:func:`send_by_value`), and they are under ``OOB_THRESHOLD`` (a
    big buffer inside would travel out of band). Anything else is pickled
    again by :func:`dumps`, so only large payloads pay twice.
    """
    cloud = _cloud_module
    if cloud is None and "cloudpickle" in sys.modules:
        cloud = _cloud()  # loaded by the program itself: what it registered counts
    # Modules registered to travel by value (send_by_value, or cloudpickle's own
    # register_pickle_by_value): none while cloudpickle is not loaded.
    modules = () if cloud is None else cloud.BY_VALUE_MODULES
    if modules is not None and not modules:
        try:
            data = pickle.dumps(obj, protocol=5)
        except (pickle.PicklingError, AttributeError, TypeError):
            pass
        else:
            if len(data) < OOB_THRESHOLD and b"__main__" not in data:
                return [data]
    return dumps(obj)


def loads(frames: list[Any]) -> Any:
    """Unpickle frames made by :func:`dumps`. Only ever call on authenticated data."""
    if len(frames) == 1:
        return pickle.loads(frames[0])
    return pickle.loads(frames[0], buffers=frames[1:])


# --- exceptions --------------------------------------------------------------


def dump_exception(exc: BaseException, *, by_value: bool = True, where: str = "") -> list[Any]:
    """Pickle an exception with its formatted traceback; degrade to RemoteError.

    ``where`` (e.g. "node 'gpu-1' (10.0.0.7), pid 4242") heads the traceback
    text, so the caller sees which process raised it.
    """
    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    head = f"Raised in {where}\n" if where else ""
    tb = f'\n"""\n{head}{tb}"""'
    exc.__traceback__ = None
    try:
        frames = dumps((exc, tb), by_value=by_value)
        pickle.loads(frames[0], buffers=frames[1:])  # must also load on the far side
        return frames
    except Exception:
        stand_in = RemoteError(f"{type(exc).__module__}.{type(exc).__qualname__}", str(exc))
        return dumps((stand_in, tb), by_value=by_value)


def load_exception(frames: list[Any]) -> BaseException:
    """Rebuild an exception; its remote traceback becomes ``__cause__``."""
    try:
        exc, tb = loads(frames)
    except Exception as err:
        exc, tb = RemoteError(type(err).__name__, f"could not unpickle the task's exception: {err}"), ""
    if tb:
        exc.__cause__ = RemoteTraceback(with_local_source(tb))
    return exc  # type: ignore[no-any-return]


_FRAME = re.compile(r'^  File "(?P<file>[^"]+)", line (?P<line>\d+), in .*$')


def with_local_source(tb: str) -> str:
    """Fill in the source lines a remote traceback could not show.

    A function sent by value runs where its file does not exist, so the
    remote traceback names file and line but shows no code; the caller's
    host usually has that file: show its line there.
    """
    lines = tb.split("\n")
    out: list[str] = []
    for i, line in enumerate(lines):
        out.append(line)
        m = _FRAME.match(line)
        if m is None or (i + 1 < len(lines) and lines[i + 1].startswith("    ")):
            continue  # not a frame, or its source is already there
        source = linecache.getline(m["file"], int(m["line"])).strip()
        if source:
            out.append(f"    {source}")
    return "\n".join(out)


def send_by_value(modules: Iterable[Any]) -> None:
    """Pickle these modules' functions and classes by value (for nodes that lack them);
    no module, no cloudpickle loaded.

    Raises TypeError for something that is neither a module nor a module name.
    """
    import importlib

    for module in modules:
        if isinstance(module, str):
            module = importlib.import_module(module)
        if not isinstance(module, types.ModuleType):
            raise TypeError(f"modules= takes modules or module names, not {module!r}")
        _cloud().register_by_value(module)
