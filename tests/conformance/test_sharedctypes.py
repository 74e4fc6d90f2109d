"""Value and Array conformance: typecodes, locks, sharing with children."""

from __future__ import annotations

from typing import Any

import pytest

from . import _funcs as f

pytestmark = pytest.mark.timeout(30)


def _run(mp: Any, target: Any, *args: Any) -> Any:
    p = mp.Process(target=target, args=args)
    p.start()
    p.join(10)
    if p.is_alive():
        p.kill()
        p.join(5)
    assert p.exitcode == 0
    return p


@pytest.mark.parametrize(
    ("typecode", "initial", "new"),
    [("i", 7, -3), ("d", 1.5, 2.25), ("c", b"x", b"y")],
)
def test_value_typecodes(mp: Any, typecode: str, initial: Any, new: Any) -> None:
    v = mp.Value(typecode, initial)
    assert v.value == initial
    v.value = new
    assert v.value == new


@pytest.mark.parametrize(("typecode", "new"), [("i", 42), ("d", 3.5), ("c", b"z")])
def test_value_set_by_child(mp: Any, typecode: str, new: Any) -> None:
    v = mp.Value(typecode, 0 if typecode != "c" else b"a")
    _run(mp, f.set_value, v, new)
    assert v.value == new


def test_value_get_lock_counter(mp: Any) -> None:
    v = mp.Value("i", 0)
    lock = v.get_lock()
    assert lock.acquire(timeout=1)
    lock.release()
    procs = [mp.Process(target=f.value_increment, args=(v, 300)) for _ in range(3)]
    try:
        for p in procs:
            p.start()
    finally:
        for p in procs:
            p.join(20)
    assert [p.exitcode for p in procs] == [0, 0, 0]
    assert v.value == 900


def test_value_lock_false_has_no_lock(mp: Any) -> None:
    v = mp.Value("i", 5, lock=False)
    assert v.value == 5
    assert not hasattr(v, "get_lock")
    _run(mp, f.set_value, v, 6)
    assert v.value == 6


def test_value_with_given_lock(mp: Any) -> None:
    lock = mp.RLock()
    v = mp.Value("i", 0, lock=lock)
    assert v.get_lock() is lock


def test_value_bad_typecode(mp: Any) -> None:
    with pytest.raises((TypeError, ValueError)):
        mp.Value("not-a-typecode", 0)


def test_bad_values_raise_as_ctypes_does(mp: Any) -> None:
    with pytest.raises(TypeError):
        mp.Value("i", "x")
    with pytest.raises(TypeError):
        mp.Array("i", [1, "a"])
    with pytest.raises(ValueError):
        mp.Array("i", -1)
    a = mp.Array("d", 3)
    with pytest.raises(ValueError):
        a[0:2] = [1.0]
    with pytest.raises(IndexError):
        a[-4]
    assert mp.Value("d").value == 0.0


def test_array_int(mp: Any) -> None:
    a = mp.Array("i", 10)
    assert len(a) == 10
    assert a[:] == [0] * 10
    _run(mp, f.fill_array, a)
    assert a[:] == [i * i for i in range(10)]
    assert list(a) == [i * i for i in range(10)]
    assert a[2:5] == [4, 9, 16]
    a[0:3] = [7, 8, 9]
    assert a[:4] == [7, 8, 9, 9]
    with pytest.raises(IndexError):
        a[10]


def test_array_double_from_sequence(mp: Any) -> None:
    a = mp.Array("d", [1.0, 2.5, -3.25])
    assert a[:] == [1.0, 2.5, -3.25]
    _run(mp, f.fill_array, a)
    assert a[:] == [0.0, 1.0, 4.0]


def test_array_char(mp: Any) -> None:
    a = mp.Array("c", b"hello")
    assert len(a) == 5
    assert a.value == b"hello"
    assert a.raw == b"hello"
    a.value = b"hi"
    assert a.value == b"hi"
    assert a.raw == b"hi\x00lo"
    assert a[0] == b"h"
    assert a[1:3] == b"i\x00"
    assert list(a) == [b"h", b"i", b"\x00", b"l", b"o"]
    a[3:5] = b"LO"
    assert a.raw == b"hi\x00LO"


def test_array_get_lock(mp: Any) -> None:
    a = mp.Array("i", 3)
    with a.get_lock():
        a[0] = 1
    assert a.get_lock().acquire(timeout=1)
    a.get_lock().release()
    assert a[:] == [1, 0, 0]


def test_array_lock_false(mp: Any) -> None:
    a = mp.Array("i", [1, 2, 3], lock=False)
    assert not hasattr(a, "get_lock")
    _run(mp, f.fill_array, a)
    assert a[:] == [0, 1, 4]
