"""dmp.serialization: cloudpickle frames with out-of-band buffers, exceptions."""

from __future__ import annotations

import pickle
import types
from typing import Any

import numpy as np
import pytest

from dmp.errors import RemoteError, RemoteTraceback
from dmp.serialization import (
    OOB_THRESHOLD,
    _cloud_dumps,
    dump_exception,
    dumps,
    dumps_call,
    load_exception,
    loads,
)

pytestmark = pytest.mark.timeout(30)


def _wire(frames: list[Any]) -> list[Any]:
    """What the far side gets: each frame as its own buffer (no shared objects)."""
    return [bytearray(memoryview(f).cast("B")) for f in frames]


@pytest.mark.parametrize(
    "obj",
    [
        None,
        0,
        -(2**70),
        3.5,
        "text ✓",
        b"bytes",
        [1, [2, (3, {"k": {4, 5}})]],
        {"a": 1, ("t", 2): frozenset({1})},
        range(5),
        Exception("plain"),
    ],
    ids=repr,
)
@pytest.mark.parametrize("by_value", [True, False])
def test_plain_data_round_trips(obj: Any, by_value: bool) -> None:
    frames = dumps(obj, by_value=by_value)
    got = loads(_wire(frames))
    if isinstance(obj, Exception):
        assert type(got) is type(obj) and got.args == obj.args
    else:
        assert got == obj and type(got) is type(obj)


def test_small_objects_make_exactly_one_frame() -> None:
    for obj in (1, "x" * 100, b"y" * (OOB_THRESHOLD - 1), list(range(1000)), {"k": b"v" * 100}):
        assert len(dumps(obj)) == 1, obj


@pytest.mark.parametrize("obj", [0, -(2**70), 2.5, True, None, 1j, "", "text ✓", "s" * (OOB_THRESHOLD - 1)], ids=repr)
def test_plain_scalars_pickle_exactly_as_cloudpickle_would(obj: Any) -> None:
    """The fast path for scalars (most task results) skips cloudpickle, not its output."""
    assert dumps(obj) == [_cloud_dumps(obj, lambda buf: True)]
    assert dumps(obj, by_value=False) == [pickle.dumps(obj, protocol=5)]


def test_large_str_still_takes_the_general_path() -> None:
    text = "t" * (OOB_THRESHOLD + 1)
    assert loads(_wire(dumps(text))) == text


def test_lambda_and_closure_travel_by_value() -> None:
    base = 10

    def make_adder(n: int) -> Any:
        return lambda x: x + n + base

    add = make_adder(5)
    frames = dumps(add, by_value=True)
    got = loads(_wire(frames))
    assert got(1) == 16
    assert loads(_wire(dumps(lambda: "hi", by_value=True)))() == "hi"


def test_a_call_of_an_importable_function_pickles_exactly_as_cloudpickle_would() -> None:
    """An apply's task (function, args, kwds) skips cloudpickle when it would write references only."""
    import operator
    import os.path

    for call in ((operator.add, (2, 3), {}), (os.path.join, ("a", "b"), {"x": None}), (_square, (7,), {})):
        assert dumps(call) == [_cloud_dumps(call, lambda buf: True)], call
        assert dumps_call(*call) == [_cloud_dumps(call, lambda buf: True)], call
    fn, args, kwds = loads(_wire(dumps((_square, (7,), {}))))
    assert fn is _square and fn(*args, **kwds) == 49


def test_a_call_of_an_importable_function_builds_no_cloudpickler(monkeypatch: pytest.MonkeyPatch) -> None:
    from dmp import _cloud

    def no_pickler(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("cloudpickle's Pickler was built")

    # No module registered by value (another suite's conftest may register one in this process).
    monkeypatch.setattr(_cloud, "BY_VALUE_MODULES", set())
    monkeypatch.setattr(_cloud, "Pickler", no_pickler)
    assert loads(_wire(dumps((_square, (7,), {"unused": None}))))[0] is _square
    assert loads(_wire(dumps_call(_square, (7,), {"unused": None})))[0] is _square
    with pytest.raises(AssertionError, match="Pickler was built"):
        dumps((lambda x: x, (7,), {}))
    with pytest.raises(AssertionError, match="Pickler was built"):
        dumps_call(lambda x: x, (7,), {})


def test_a_local_call_is_plain_pickle_whatever_cloudpickle_would_judge(monkeypatch: pytest.MonkeyPatch) -> None:
    """Local mode (by_value=False): plain pickle first, never cloudpickle's judgement (which
    would load it); cloudpickle only for what plain pickle refuses."""
    from dmp import _cloud

    def no_pickler(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("cloudpickle's Pickler was built")

    monkeypatch.setattr(_cloud, "Pickler", no_pickler)
    monkeypatch.setattr(_cloud, "BY_VALUE_MODULES", {__name__})  # would turn the cluster's shortcut off
    plain = [pickle.dumps((_square, (7,), {}), protocol=5)]
    assert dumps((_square, (7,), {}), by_value=False) == plain
    assert dumps_call(_square, (7,), {}, by_value=False) == plain
    monkeypatch.undo()
    fn, args, _ = loads(_wire(dumps_call(lambda x: x + 1, (1,), {}, by_value=False)))
    assert fn(*args) == 2
    fn, args, _ = loads(_wire(dumps((lambda x: x - 1, (1,), {}), by_value=False)))
    assert fn(*args) == 0


def test_a_call_of_a_function_defined_in_a_test_module_or_main_still_travels_right() -> None:
    """Whatever cloudpickle would send by value (a lambda, a closure, a __main__ function) still is."""
    base = 3
    closure = lambda x: x + base  # noqa: E731
    fn, args, _ = loads(_wire(dumps((closure, (1,), {}))))
    assert fn(*args) == 4
    main_fn = types.FunctionType(_square.__code__, {"__name__": "__main__"}, "main_square")
    main_fn.__module__ = "__main__"
    main_fn.__qualname__ = "main_square"
    frames = dumps((main_fn, (5,), {}))
    assert frames == [_cloud_dumps((main_fn, (5,), {}), lambda buf: True)]  # by value: no name to look up
    fn, args, _ = loads(_wire(frames))
    assert fn(*args) == 25


def test_a_module_registered_by_value_turns_the_shortcut_off() -> None:
    import cloudpickle

    from tests.unit import _by_value_helper as helper

    reference = dumps((helper.triple, (2,), {}))
    cloudpickle.register_pickle_by_value(helper)
    try:
        frames = dumps((helper.triple, (2,), {}))
        assert frames != reference and frames == [_cloud_dumps((helper.triple, (2,), {}), lambda buf: True)]
    finally:
        cloudpickle.unregister_pickle_by_value(helper)
    assert dumps((helper.triple, (2,), {})) == reference


def test_a_function_its_name_no_longer_leads_to_falls_back_to_cloudpickle() -> None:
    from tests.unit import _by_value_helper as helper

    old = helper.triple
    assert dumps((old, (2,), {}))  # judged once by reference
    helper.triple = lambda x: -x  # type: ignore[assignment]
    try:
        fn, args, _ = loads(_wire(dumps((old, (2,), {}))))
        assert fn(*args) == 6  # the old function itself, by value, not what the name means now
    finally:
        helper.triple = old  # type: ignore[method-assign]


def test_lambda_falls_back_to_cloudpickle_by_reference_mode() -> None:
    square = lambda x: x * x  # noqa: E731
    with pytest.raises((pickle.PicklingError, AttributeError, TypeError)):
        pickle.dumps(square)
    assert loads(_wire(dumps(square, by_value=False)))(7) == 49


def test_numpy_array_travels_out_of_band() -> None:
    arr = np.arange(1024 * 1024 // 8, dtype=np.float64).reshape(512, -1)  # 1 MiB
    frames = dumps(arr)
    assert len(frames) > 1
    assert sum(memoryview(f).nbytes for f in frames[1:]) >= arr.nbytes
    assert len(frames[0]) < 4096  # the pickle itself holds no copy of the data
    got = loads(_wire(frames))
    assert isinstance(got, np.ndarray)
    assert got.dtype == arr.dtype and got.shape == arr.shape
    np.testing.assert_array_equal(got, arr)
    assert got.flags.writeable
    got[0, 0] = -1.0
    assert arr[0, 0] == 0.0  # the received array does not alias the sender's


def test_numpy_array_inside_a_tuple_goes_out_of_band() -> None:
    arr = np.ones(OOB_THRESHOLD, dtype=np.uint8)
    frames = dumps(("args", arr, 3))
    assert len(frames) == 2
    name, got, n = loads(_wire(frames))
    assert name == "args" and n == 3
    np.testing.assert_array_equal(got, arr)


@pytest.mark.parametrize("kind", [bytes, bytearray])
@pytest.mark.parametrize("by_value", [True, False])
def test_large_bytes_go_out_of_band_and_keep_their_type(kind: type, by_value: bool) -> None:
    data = kind(bytes(range(256)) * (OOB_THRESHOLD // 256 + 1))
    for obj in (data, (1, data), [data, "x"], {"payload": data}):
        frames = dumps(obj, by_value=by_value)
        assert len(frames) == 2, type(obj)
        assert memoryview(frames[1]).nbytes == len(data)
        got = loads(_wire(frames))
        inner = got if isinstance(obj, kind) else got[1] if isinstance(obj, tuple) else (
            got[0] if isinstance(obj, list) else got["payload"]
        )
        assert type(inner) is kind
        assert inner == data


def test_long_lists_are_judged_by_a_sample() -> None:
    big = b"b" * OOB_THRESHOLD
    # A big buffer at a sampled place (first, middle, last) of a long list goes out of band...
    for at in (0, 100, 200):
        items: list[object] = list(range(201))
        items[at] = big
        frames = dumps(items)
        assert len(frames) == 2, at
        assert loads(_wire(frames))[at] == big
    # ...one elsewhere in a long list of scalars travels in band: still right, one copy more.
    items = list(range(201))
    items[7] = big
    frames = dumps(items)
    assert len(frames) == 1
    assert loads(_wire(frames)) == items
    # A short list is always scanned in full.
    short: list[object] = [1, big, 2, 3]
    assert len(dumps(short)) == 2


def test_large_memoryview_goes_out_of_band() -> None:
    data = memoryview(b"m" * OOB_THRESHOLD)
    frames = dumps(data)
    assert len(frames) == 2
    got = loads(_wire(frames))
    assert bytes(got) == bytes(data)


# --- exceptions --------------------------------------------------------------------


def raise_value_error_here() -> None:
    raise ValueError("the task failed: 42")


def test_exception_keeps_type_message_and_remote_traceback() -> None:
    try:
        raise_value_error_here()
    except ValueError as exc:
        frames = dump_exception(exc)
    got = load_exception(_wire(frames))
    assert type(got) is ValueError
    assert str(got) == "the task failed: 42"
    assert isinstance(got.__cause__, RemoteTraceback)
    assert "raise_value_error_here" in str(got.__cause__)
    assert "ValueError: the task failed: 42" in got.__cause__.tb


class Unpicklable(Exception):
    def __init__(self, msg: str) -> None:
        super().__init__(msg)
        self.lock = __import__("threading").Lock()


class NeedsTwoArgs(Exception):
    """Pickles fine but cannot be rebuilt: __init__ wants two args, args holds one."""

    def __init__(self, a: str, b: str) -> None:
        super().__init__(f"{a}/{b}")


def raise_unpicklable() -> None:
    raise Unpicklable("holds a lock")


@pytest.mark.parametrize(
    ("make", "type_name", "text"),
    [
        (lambda: Unpicklable("holds a lock"), "Unpicklable", "holds a lock"),
        (lambda: NeedsTwoArgs("x", "y"), "NeedsTwoArgs", "x/y"),
    ],
    ids=["pickling-fails", "unpickling-fails"],
)
def test_unpicklable_exception_degrades_to_remote_error(make: Any, type_name: str, text: str) -> None:
    try:
        raise make()
    except Exception as exc:
        frames = dump_exception(exc)
    got = load_exception(_wire(frames))
    assert type(got) is RemoteError
    assert got.type_name.endswith(type_name)
    assert text in str(got)
    assert isinstance(got.__cause__, RemoteTraceback)


def test_remote_traceback_names_the_raising_function_after_degrading() -> None:
    try:
        raise_unpicklable()
    except Unpicklable as exc:
        got = load_exception(_wire(dump_exception(exc)))
    assert "raise_unpicklable" in str(got.__cause__)


def test_load_exception_of_garbage_gives_remote_error() -> None:
    got = load_exception([b"not a pickle"])
    assert isinstance(got, RemoteError)
    assert "could not unpickle" in str(got)


def test_remote_traceback_names_where_it_was_raised_and_shows_local_source(tmp_path: Any) -> None:
    import linecache

    source = tmp_path / "job_module.py"
    source.write_text("def f(x):\n    y = x + 1\n    raise ValueError(f'bad {y}')\n")
    # What a worker on another host formats: file and line, but no source there.
    remote_tb = (
        'Traceback (most recent call last):\n'
        f'  File "{source}", line 3, in f\n'
        "ValueError: bad 2\n"
    )
    linecache.clearcache()
    from dmp.serialization import with_local_source

    shown = with_local_source(remote_tb)
    assert f'  File "{source}", line 3, in f\n    raise ValueError(f\'bad {{y}}\')\n' in shown
    # Lines that already carry source, and files that do not exist here, are left alone.
    assert with_local_source(shown) == shown
    missing = remote_tb.replace(str(source), "/nonexistent/x.py")
    assert with_local_source(missing) == missing

    try:
        raise KeyError("k")
    except KeyError as exc:
        frames = dump_exception(exc, where="node 'n1' (10.0.0.7), pid 42")
    err = load_exception(frames)
    assert isinstance(err, KeyError)
    assert "Raised in node 'n1' (10.0.0.7), pid 42" in str(err.__cause__)


def test_functions_sent_by_value_keep_their_file_name() -> None:
    """cloudpickle would write <dynamic-code>; a remote traceback must name the real file and line."""
    import types

    namespace: dict[str, Any] = {}
    exec(compile("def g(x):\n    return 1 / x\n", "/srv/jobs/my_job.py", "exec"), namespace)
    g = namespace["g"]
    g.__module__ = "__main__"  # as a script's function: pickled by value
    clone = loads(dumps(g))
    assert isinstance(clone.__code__, types.CodeType) and clone is not g
    assert clone.__code__.co_filename == "/srv/jobs/my_job.py"
    try:
        clone(0)
    except ZeroDivisionError as exc:
        assert exc.__traceback__ is not None
        last = exc.__traceback__
        while last.tb_next is not None:
            last = last.tb_next
        assert (last.tb_frame.f_code.co_filename, last.tb_lineno) == ("/srv/jobs/my_job.py", 2)


@pytest.mark.parametrize("by_value", [True, False])
def test_an_apply_task_round_trips_by_either_route(by_value: bool) -> None:
    offset = 3
    add = lambda x, y=0: x + y + offset  # noqa: E731  (by value even in by-reference mode)
    for func, args, kwds in [(divmod, (7, 2), {}), (add, (1,), {"y": 2}), (sorted, ([3, 1, 2],), {})]:
        frames = dumps_call(func, args, kwds, by_value=by_value)
        assert len(frames) == 1
        got_func, got_args, got_kwds = loads(_wire(frames))
        assert got_args == args and got_kwds == kwds
        assert got_func(*got_args, **got_kwds) == func(*args, **kwds)


@pytest.mark.parametrize("by_value", [True, False])
def test_an_apply_tasks_large_buffers_still_go_out_of_band(by_value: bool) -> None:
    arr = np.ones(OOB_THRESHOLD, dtype=np.uint8)
    big = bytes(OOB_THRESHOLD)
    frames = dumps_call(len, (big,), {}, by_value=by_value)  # not plain: the general path
    assert len(frames) == 2 and loads(_wire(frames))[1] == (big,)
    held = lambda: int(arr.sum())  # noqa: E731  a buffer in the function's closure
    frames = dumps_call(held, (), {}, by_value=by_value)
    assert len(frames) == 2 and len(frames[0]) < OOB_THRESHOLD
    assert loads(_wire(frames))[0]() == OOB_THRESHOLD


def _square(x: int) -> int:
    return x * x
