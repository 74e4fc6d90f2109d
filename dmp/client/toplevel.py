"""The top-level ``dmp.Queue()``, ``dmp.Lock()``, ``dmp.Value()``, ... of cluster mode.

    dmp.Lock() / Queue() / SimpleQueue() / RLock() / Semaphore() ...
        --manager._create(typeid)--> a reactor object --> a proxy of the class
        below: multiprocessing's own API (``acquire(block=)``, ``close()``, ...)
    dmp.Value(code, x) / Array(code, n)
        --> a ValueProxy / ArrayProxy (+ a managed RLock unless lock=False)
        --> a picklable wrapper with multiprocessing.sharedctypes' API:
            ``get_lock()``, list slices, ``'c'`` arrays' ``value``/``raw``

``dmp.Manager()``'s proxies keep the API of ``multiprocessing.managers``
(``acquire(blocking=)``, array slices as ``array.array``, ...); these classes
keep the API of the objects of ``multiprocessing`` itself, which the same
names give in local mode.
"""

from __future__ import annotations

import array
import ctypes
import multiprocessing.sharedctypes
from collections.abc import Iterator
from typing import Any

from dmp.client.reactor_proxies import (
    AcquirerProxy,
    ArrayProxy,
    ConditionProxy,
    JoinableQueueProxy,
    LockProxy,
    QueueProxy,
    SemaphoreProxy,
    ValueProxy,
)

# multiprocessing's own typecodes ('c' is a character; the rest as array.array's).
typecode_to_type: dict[str, Any] = multiprocessing.sharedctypes.typecode_to_type  # type: ignore[attr-defined]


def make(manager: Any, typeid: str, proxytype: Any, *args: Any) -> Any:
    """A new object ``typeid`` on ``manager``, seen through ``proxytype``."""
    token, exposed = manager._create(typeid, *args)
    return proxytype(token, manager._serializer, manager=manager, authkey=manager._authkey, exposed=exposed)


# --- locks: acquire(block=True, timeout=None), as multiprocessing.synchronize ------------------


class _BlockAcquire:
    """acquire(block=True, timeout=None) as multiprocessing.synchronize has it;
    like multiprocessing, a non-blocking acquire ignores its timeout."""

    def acquire(self, block: bool = True, timeout: float | None = None) -> bool:
        return super().acquire(*((True, timeout) if block else (False, None)))  # type: ignore[misc, no-any-return]


class Lock(_BlockAcquire, LockProxy):
    """A managed lock with ``multiprocessing.Lock``'s API: releasing it unlocked raises ValueError."""

    def release(self) -> None:
        try:
            super().release()
        except RuntimeError:
            raise ValueError("semaphore or lock released too many times") from None


class RLock(_BlockAcquire, AcquirerProxy):
    """A managed recursive lock with ``multiprocessing.RLock``'s API."""

    def release(self) -> None:
        try:
            super().release()
        except RuntimeError:
            raise AssertionError("attempt to release recursive lock not owned by thread") from None


class Semaphore(_BlockAcquire, SemaphoreProxy):
    """A managed (bounded) semaphore with ``multiprocessing.Semaphore``'s API."""


class Condition(_BlockAcquire, ConditionProxy):
    """A managed condition with ``multiprocessing.Condition``'s API."""


# --- queues: close() and join_thread(), as multiprocessing.queues ----------------------------


class _Closing:
    """close() ends this handle's use in this process (the queue itself lives on for the others)."""

    _closed = False

    def _check_closed(self) -> None:
        if self._closed:
            raise ValueError(f"Queue {self!r} is closed")

    def close(self) -> None:
        self._closed = True

    def join_thread(self) -> None:
        # No feeder thread to wait for: a put is in the manager when it returns.
        if not self._closed:
            raise AssertionError(f"Queue {self!r} not closed")

    def cancel_join_thread(self) -> None:
        pass


class Queue(_Closing, QueueProxy):
    """A managed queue with ``multiprocessing.Queue``'s API: ``close()``, ``join_thread()``."""

    def put(self, obj: Any, block: bool = True, timeout: float | None = None) -> None:
        self._check_closed()
        super().put(obj, block, timeout)

    def get(self, block: bool = True, timeout: float | None = None) -> Any:
        if self._closed:
            raise OSError("handle is closed")
        return super().get(block, timeout)


class JoinableQueue(_Closing, JoinableQueueProxy):
    """A managed joinable queue with ``multiprocessing.JoinableQueue``'s API."""

    def put(self, obj: Any, block: bool = True, timeout: float | None = None) -> None:
        self._check_closed()
        super().put(obj, block, timeout)

    def get(self, block: bool = True, timeout: float | None = None) -> Any:
        if self._closed:
            raise OSError("handle is closed")
        return super().get(block, timeout)


class SimpleQueue(QueueProxy):
    """A managed queue with ``multiprocessing.SimpleQueue``'s API: put, get, empty, close."""

    _closed = False

    def put(self, obj: Any) -> None:  # type: ignore[override]
        if self._closed:
            raise OSError("handle is closed")
        super().put(obj)

    def get(self) -> Any:  # type: ignore[override]
        if self._closed:
            raise OSError("handle is closed")
        return super().get()

    def close(self) -> None:
        self._closed = True


# --- Value and Array, as multiprocessing.sharedctypes ----------------------------------------


def _ctype(typecode_or_type: Any) -> Any:
    """The simple ctypes type a typecode or type names; TypeError otherwise."""
    if isinstance(typecode_or_type, str):
        found = typecode_to_type.get(typecode_or_type)
        if found is None:
            raise TypeError(f"bad typecode {typecode_or_type!r}: must be one of {''.join(sorted(typecode_to_type))}")
        return found
    if isinstance(typecode_or_type, type) and issubclass(typecode_or_type, ctypes._SimpleCData):
        return typecode_or_type
    raise TypeError(
        f"{typecode_or_type!r} is not a typecode or a simple ctypes type "
        "(cluster mode shares numbers, characters and bytes, not structures or pointers)"
    )


def _lock_for(manager: Any, lock: Any) -> Any:
    """stdlib's rule: True/None makes an RLock, False none, anything else must be a lock."""
    if lock is True or lock is None:
        return make(manager, "RLock", RLock)
    if lock is False:
        return None
    if not hasattr(lock, "acquire"):
        raise AttributeError(f"{lock!r} has no method 'acquire'")
    return lock


class _Synchronized:
    """get_lock(), acquire/release and ``with``, as multiprocessing.sharedctypes.SynchronizedBase."""

    _lock: Any

    def get_lock(self) -> Any:
        return self._lock

    def acquire(self, *args: Any) -> bool:
        return bool(self._lock.acquire(*args))

    def release(self) -> None:
        self._lock.release()

    def __enter__(self) -> bool:
        return bool(self._lock.__enter__())

    def __exit__(self, *exc: Any) -> None:
        self._lock.__exit__(*exc)


class RawValue:
    """A Value without a lock (``Value(..., lock=False)``): one number, bytes or character in the manager."""

    def __init__(self, proxy: ValueProxy, ctype: Any) -> None:
        self._proxy = proxy
        self._type = ctype

    @property
    def value(self) -> Any:
        return self._proxy.get()

    @value.setter
    def value(self, new: Any) -> None:
        self._proxy.set(self._type(new).value)  # ctypes' own checks: TypeError for a str in an 'i'

    def __reduce__(self) -> Any:
        return (type(self), (self._proxy, self._type))

    def __repr__(self) -> str:
        return f"<{type(self).__name__} of {self._type.__name__} at {id(self):#x}>"


class SynchronizedValue(_Synchronized, RawValue):
    """A Value with a lock: ``get_lock()`` is a managed RLock (or the lock given)."""

    def __init__(self, proxy: ValueProxy, ctype: Any, lock: Any) -> None:
        super().__init__(proxy, ctype)
        self._lock = lock

    def __reduce__(self) -> Any:
        return (type(self), (self._proxy, self._type, self._lock))


def value(manager: Any, typecode_or_type: Any, args: tuple[Any, ...], lock: Any) -> RawValue:
    """``multiprocessing.Value`` in cluster mode."""
    ctype = _ctype(typecode_or_type)
    initial = ctype(*args).value
    proxy = make(manager, "Value", ValueProxy, ctype._type_, initial)
    held = _lock_for(manager, lock)
    return RawValue(proxy, ctype) if held is None else SynchronizedValue(proxy, ctype, held)


# An array's items travel as array.array bytes; a character array as unsigned bytes.
_STORAGE = {"c": "B"}


class RawArray:
    """An Array without a lock: fixed-size items in the manager; slices are lists (bytes for 'c')."""

    def __init__(self, proxy: ArrayProxy, ctype: Any, length: int) -> None:
        self._proxy = proxy
        self._type = ctype
        self._length = length
        self._chars = ctype._type_ == "c"

    def __len__(self) -> int:
        return self._length

    def _item(self, x: Any) -> Any:
        """A Python value as stored (a checked ctypes value; a character as its byte)."""
        v = self._type(x).value
        return v[0] if self._chars else v

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, slice):
            items = self._proxy[index]
            return items.tobytes() if self._chars else items.tolist()
        i = self._index(index)
        item = self._proxy[i]
        return bytes([item]) if self._chars else item

    def __setitem__(self, index: Any, new: Any) -> None:
        if isinstance(index, slice):
            size = len(range(self._length)[index])
            if len(new) != size:
                raise ValueError("Can only assign sequence of same size")
            if self._chars:
                items = array.array("B", bytes(new))
            else:
                items = array.array(self._proxy._token.info, [self._item(x) for x in new])
            self._proxy[index] = items
        else:
            self._proxy[self._index(index)] = self._item(new)

    def _index(self, index: Any) -> int:
        i = index.__index__()
        if i < 0:
            i += self._length
        if not 0 <= i < self._length:
            raise IndexError("invalid index")
        return int(i)

    def __iter__(self) -> Iterator[Any]:
        items = self[:]
        return (bytes([b]) for b in items) if self._chars else iter(items)

    @property
    def raw(self) -> bytes:
        """A character array's bytes, all of them."""
        self._only_chars("raw")
        return self[:]  # type: ignore[no-any-return]

    @raw.setter
    def raw(self, new: bytes) -> None:
        self._only_chars("raw")
        if len(new) > self._length:
            raise ValueError("byte string too long")
        self[: len(new)] = new

    @property
    def value(self) -> bytes:
        """A character array's bytes up to the first NUL."""
        self._only_chars("value")
        return self.raw.split(b"\0", 1)[0]

    @value.setter
    def value(self, new: bytes) -> None:
        self._only_chars("value")
        if len(new) > self._length:
            raise ValueError("byte string too long")
        self.raw = new + b"\0" if len(new) < self._length else new

    def _only_chars(self, name: str) -> None:
        if not self._chars:
            raise AttributeError(f"only an Array of 'c' has {name!r}")

    def __reduce__(self) -> Any:
        return (type(self), (self._proxy, self._type, self._length))

    def __repr__(self) -> str:
        return f"<{type(self).__name__} of {self._length} {self._type.__name__} at {id(self):#x}>"


class SynchronizedArray(_Synchronized, RawArray):
    """An Array with a lock: ``get_lock()`` is a managed RLock (or the lock given)."""

    def __init__(self, proxy: ArrayProxy, ctype: Any, length: int, lock: Any) -> None:
        super().__init__(proxy, ctype, length)
        self._lock = lock

    def __reduce__(self) -> Any:
        return (type(self), (self._proxy, self._type, self._length, self._lock))


def array_of(manager: Any, typecode_or_type: Any, size_or_initializer: Any, lock: Any) -> RawArray:
    """``multiprocessing.Array`` in cluster mode."""
    ctype = _ctype(typecode_or_type)
    code = _STORAGE.get(ctype._type_, ctype._type_)
    if code not in array.typecodes:
        raise TypeError(f"cluster mode cannot share an Array of {ctype.__name__}")
    if isinstance(size_or_initializer, int):
        if size_or_initializer < 0:
            raise ValueError(f"Array length must be >= 0, not {size_or_initializer}")
        items = array.array(code, bytes(array.array(code).itemsize * size_or_initializer))
    elif ctype._type_ == "c":
        items = array.array(code, bytes(size_or_initializer))
    else:
        items = array.array(code, [ctype(x).value for x in size_or_initializer])
    proxy = make(manager, "Array", ArrayProxy, code, items)
    held = _lock_for(manager, lock)
    if held is None:
        return RawArray(proxy, ctype, len(items))
    return SynchronizedArray(proxy, ctype, len(items), held)
