"""Cluster-mode ``Pipe()``: connection ends whose pipe the manager hosts (``dmp_server.pipes``).

    end.send(obj) --ObjCall(send, [handle], pickle)--> manager: the other end's inbox
    end.recv()    --ObjCall(recv, [handle])-->  a message, or parked until one comes,
                  or EOFError once every handle of the other end is closed

Each end object is one *handle* of its end, as a descriptor is: ``close()``
(or garbage collection) drops it, and a process that exits drops all of its
handles. Pickling an end (to pass it to a ``Process``, or through a queue)
makes a new handle in the manager, held by the pickling process until the
process that unpickles it takes it over: the end stays open in between even
if the sender closes its own handle at once, as with a forked child.

The methods, their checks and their errors are those of
``multiprocessing.connection.Connection``; ``fileno()`` raises
``io.UnsupportedOperation``: a remote pipe has no descriptor here.
"""

from __future__ import annotations

import io
import os
import pickle
import threading
from typing import Any

from dmp import _lazy
from dmp.client import proxylink
from dmp.errors import ManagerUnavailableError
from dmp.wire import protocol
from dmp.wire.protocol import ObjStatus

_ERRORS: dict[str, type[BaseException]] = {
    "EOFError": EOFError,
    "OSError": OSError,
    "BrokenPipeError": BrokenPipeError,
    "ReferenceError": ReferenceError,
    "ValueError": ValueError,
    "TypeError": TypeError,
}


class _Unrecv(proxylink.Undo):
    """A recv answered after its caller gave up: the message goes back first in line."""

    def call(self, call: protocol.ObjCall, reply: protocol.ObjReply) -> protocol.ObjCall | None:
        if reply.status != ObjStatus.OK:
            return None
        return protocol.ObjCall(0, call.oid, "unrecv", [0, call.args[1]], -1.0, call.thread)


_UNRECV = _Unrecv("unrecv")


def create(address: str, duplex: bool) -> tuple[PipeConnection, PipeConnection]:
    """A new pipe in the manager at ``address``: its two ends, held by this process.

    Raises:
        ManagerUnavailableError: no manager answered in time.
        AuthenticationError: the manager refused the authkey.
    """
    reply, _ = proxylink.connection(address).request(protocol.ObjCreate(0, "Pipe", "Pipe", [bool(duplex)]))
    _check(reply)
    return PipeConnection(address, reply.oid, 0, 1, duplex), PipeConnection(address, reply.oid, 1, 2, duplex)


def _check(reply: protocol.ObjReply) -> None:
    if reply.status == ObjStatus.OK:
        return
    name, text = reply.value if isinstance(reply.value, list) and len(reply.value) == 2 else ("RuntimeError", str(reply.value))
    cls = _ERRORS.get(name, RuntimeError)
    raise cls(text) if text else cls()


class PipeConnection:
    """One end of a cluster Pipe, with the API of ``multiprocessing.connection.Connection``."""

    def __init__(self, address: str, oid: int, end: int, handle: int, duplex: bool) -> None:
        self._address = address
        self._oid = oid
        self._end = end
        self._handle: int | None = handle
        self._readable = duplex or end == 0
        self._writable = duplex or end == 1
        self._pid = os.getpid()
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        state = "closed" if self._handle is None else f"handle {self._handle}"
        return f"<dmp PipeConnection, end {self._end} of pipe {self._oid} at {self._address}, {state}>"

    # --- state ---

    @property
    def closed(self) -> bool:
        """True if the connection is closed."""
        return self._handle is None

    @property
    def readable(self) -> bool:
        """True if the connection is readable."""
        return self._readable

    @property
    def writable(self) -> bool:
        """True if the connection is writable."""
        return self._writable

    def _live(self) -> int:
        handle = self._handle
        if handle is None:
            raise OSError("handle is closed")
        return handle

    def _check_readable(self) -> int:
        handle = self._live()
        if not self._readable:
            raise OSError("connection is write-only")
        return handle

    def _check_writable(self) -> int:
        handle = self._live()
        if not self._writable:
            raise OSError("connection is read-only")
        return handle

    def _call(self, method: str, args: list[Any], frames: list[Any] | None = None, timeout: float = -1.0,
              undo: proxylink.Undo | None = None) -> tuple[Any, list[Any]]:
        msg = protocol.ObjCall(0, self._oid, method, args, timeout, threading.get_ident())
        reply, out = proxylink.connection(self._address).request(msg, frames or [], undo)
        _check(reply)
        return reply.value, out

    def fileno(self) -> int:
        """A cluster pipe has no file descriptor in this process.

        Raises:
            OSError: the connection is closed.
            io.UnsupportedOperation: always otherwise (an ``OSError`` and a ``ValueError``).
        """
        self._live()
        raise io.UnsupportedOperation("a cluster Pipe connection has no file descriptor (it lives in the dmp manager)")

    # --- sending ---

    def send_bytes(self, buf: Any, offset: int = 0, size: int | None = None) -> None:
        """Send the bytes data from a bytes-like object (``buf[offset:offset + size]``).

        Raises:
            OSError: the connection is closed or read-only.
            ValueError: ``offset`` or ``size`` lie outside the buffer.
            BrokenPipeError: every handle of the other end is closed.
        """
        handle = self._check_writable()
        m = memoryview(buf)
        if m.itemsize > 1:
            m = m.cast("B")
        n = m.nbytes
        if offset < 0:
            raise ValueError("offset is negative")
        if n < offset:
            raise ValueError("buffer length < offset")
        if size is None:
            size = n - offset
        elif size < 0:
            raise ValueError("size is negative")
        elif offset + size > n:
            raise ValueError("buffer length < offset + size")
        self._call("send", [handle], [bytes(m[offset : offset + size])])

    def send(self, obj: Any) -> None:
        """Send a (picklable) object; cloudpickle, so lambdas and closures travel too.

        Raises:
            OSError: the connection is closed or read-only.
            BrokenPipeError: every handle of the other end is closed.
        """
        cloudpickle = _lazy.load("cloudpickle")  # on first use, as in dmp.serialization

        handle = self._check_writable()
        self._call("send", [handle], [cloudpickle.dumps(obj, protocol=5)])

    # --- receiving ---

    def _recv(self, handle: int) -> bytes:
        _, frames = self._call("recv", [handle, self._end], undo=_UNRECV)
        return bytes(frames[0]) if frames else b""

    def recv_bytes(self, maxlength: int | None = None) -> bytes:
        """Receive bytes data as a bytes object.

        Raises:
            OSError: the connection is closed or write-only, or the message is longer
                than ``maxlength`` (the end then reads no more: a one-way end is closed,
                as in multiprocessing).
            EOFError: nothing is left to receive and the other end is closed.
            ValueError: ``maxlength`` is negative.
        """
        if maxlength is not None and maxlength < 0:
            raise ValueError("negative maxlength")
        data = self._recv(self._check_readable())
        if maxlength is not None and len(data) > maxlength:
            # As multiprocessing: the stream is no longer trusted for reading.
            if self._writable:
                self._readable = False
            else:
                self.close()
            raise OSError("bad message length")
        return data

    def recv_bytes_into(self, buf: Any, offset: int = 0) -> int:
        """Receive bytes data into a writable bytes-like object at byte ``offset``; return its length.

        Raises:
            multiprocessing.BufferTooShort: the message does not fit; its bytes are ``args[0]``.
            OSError: the connection is closed or write-only.
            EOFError: nothing is left to receive and the other end is closed.
            ValueError: ``offset`` is negative or past the buffer's end.
        """
        from multiprocessing import BufferTooShort

        handle = self._check_readable()
        with memoryview(buf) as m:
            itemsize = m.itemsize
            bytesize = itemsize * len(m)
            if offset < 0:
                raise ValueError("negative offset")
            if offset > bytesize:
                raise ValueError("offset too large")
            data = self._recv(handle)
            size = len(data)
            if bytesize < offset + size:
                raise BufferTooShort(data)
            with m.cast("B") as raw:
                raw[offset : offset + size] = data
            return size

    def recv(self) -> Any:
        """Receive a (picklable) object.

        Raises:
            OSError: the connection is closed or write-only.
            EOFError: nothing is left to receive and the other end is closed.
        """
        return pickle.loads(self._recv(self._check_readable()))

    def poll(self, timeout: float | None = 0.0) -> bool:
        """Whether there is any input available to be read (or the other end closed: recv will not wait).

        ``timeout`` None waits without limit.

        Raises:
            OSError: the connection is closed or write-only.
        """
        handle = self._check_readable()
        wait = -1.0 if timeout is None else max(0.0, float(timeout))
        return bool(self._call("poll", [handle, self._end], timeout=wait)[0])

    # --- closing and passing on ---

    def close(self) -> None:
        """Close this handle of the end; the end closes when its last handle does."""
        with self._lock:
            handle, self._handle = self._handle, None
        if handle is None or self._pid != os.getpid():
            return
        try:
            proxylink.connection(self._address).request(
                protocol.ObjCall(0, self._oid, "close", [handle], -1.0, threading.get_ident())
            )
        except ManagerUnavailableError:
            pass  # the manager is gone, and the pipe with it: closed all the same
        # A refusal means the manager dropped the handle already (this process's
        # connection was lost and made again): closed all the same.

    def __enter__(self) -> PipeConnection:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __del__(self) -> None:
        handle = getattr(self, "_handle", None)
        if handle is None or self._pid != os.getpid():
            return
        try:
            conn = proxylink.existing(self._address)
            if conn is not None:  # nobody waits for the answer (this may be any thread, at any time)
                conn.post(protocol.ObjCall(0, self._oid, "close", [handle], -1.0, 0))
        except Exception:  # interpreter shutdown: the exit's Bye drops our handles anyway
            pass

    def __reduce__(self) -> Any:
        """A new handle of this end, held by this process until the unpickling process takes it."""
        handle = self._live()
        dup, _ = self._call("dup", [handle])
        return (_rebuild, (self._address, self._oid, self._end, int(dup), self._readable and self._writable))


def _rebuild(address: str, oid: int, end: int, handle: int, duplex: bool) -> PipeConnection:
    """Unpickle an end: this process takes over the handle made when it was pickled."""
    conn = PipeConnection(address, oid, end, handle, duplex)
    conn._handle = int(conn._call("claim", [handle, end])[0])
    return conn
