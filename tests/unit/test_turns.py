"""dmp.client.turns.Turns alone, around a toy reactor: who steps, who blocks, who may run now.

The real reactors behind it are covered by tests/test_local_turns.py (the
embedded daemon) and tests/cluster/test_link.py (the client link).
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Callable

import pytest

from dmp.client.turns import Turns

pytestmark = pytest.mark.timeout(30)


class Toy:
    """A reactor whose poll waits on a condition and whose handle runs queued actions."""

    def __init__(self, *, reenter: bool = False) -> None:
        self.cond = threading.Condition()
        self.queue: collections.deque[Callable[[], None]] = collections.deque()
        self.steps: collections.Counter[str] = collections.Counter()
        self.poked = False
        self.turns = Turns(self.poll, self.handle, self.wake, reenter=reenter)

    def poll(self, limit: float | None) -> bool:
        with self.cond:
            self.cond.wait_for(lambda: bool(self.queue) or self.poked, 1.0 if limit is None else limit)
            self.poked = False
            return bool(self.queue)

    def handle(self, ready: bool) -> None:
        self.steps[threading.current_thread().name] += 1
        for _ in range(len(self.queue)):  # what the poll saw; the rest waits for the next step
            self.queue.popleft()()

    def wake(self) -> None:
        with self.cond:
            self.poked = True
            self.cond.notify_all()

    def later(self, action: Callable[[], None]) -> None:
        with self.cond:
            self.queue.append(action)
            self.cond.notify_all()


def serving(toy: Toy) -> threading.Thread:
    def run() -> None:
        while not toy.turns.stopped:
            toy.turns.serve(None)

    thread = threading.Thread(target=run, name="serving", daemon=True)
    thread.start()
    return thread


def stop(toy: Toy, thread: threading.Thread) -> None:
    toy.turns.close(lambda: None)
    thread.join(10)
    assert not thread.is_alive()


def test_a_waiting_caller_takes_the_steps_itself() -> None:
    toy = Toy()
    thread = serving(toy)
    try:
        for _ in range(20):
            done = threading.Event()
            toy.later(done.set)
            toy.turns.wait(done.is_set, done.wait, 10)
            assert done.is_set()
        assert toy.steps[threading.current_thread().name] > 0
    finally:
        stop(toy, thread)


def test_nobody_waiting_the_serving_thread_steps() -> None:
    toy = Toy()
    thread = serving(toy)
    try:
        done = threading.Event()
        toy.later(done.set)
        assert done.wait(10)
        assert toy.steps["serving"] > 0
    finally:
        stop(toy, thread)


def test_a_handover_given_up_leaves_the_serving_thread_serving() -> None:
    # The serving thread is busy handling while a caller asks for the turn,
    # and the caller's wait ends (here: its third look) before it gets it.
    # Its wish to lead must not keep the serving thread stepped back for good.
    toy = Toy()
    thread = serving(toy)
    try:
        started, go_on = threading.Event(), threading.Event()
        toy.later(lambda: (started.set(), go_on.wait(10)))  # a long handler
        assert started.wait(10)
        looks = iter(range(3))
        toy.turns.wait(lambda: next(looks, None) is None, lambda t: None, 10)
        go_on.set()
        later = threading.Event()
        toy.later(later.set)
        assert later.wait(10), "the serving thread stopped stepping"
    finally:
        stop(toy, thread)


def test_run_now_only_on_a_free_turn_and_never_after_close() -> None:
    toy = Toy()
    ran: list[str] = []
    assert toy.turns.run_now(ran.append, "free")
    inside: list[bool] = []
    toy.later(lambda: inside.append(toy.turns.run_now(ran.append, "taken")))
    toy.turns.wait(lambda: bool(inside), lambda t: None, 10)
    assert inside == [False]
    toy.turns.close(lambda: None)
    assert not toy.turns.run_now(ran.append, "closed")
    assert ran == ["free"]


@pytest.mark.parametrize("reenter", [False, True])
def test_a_callback_waiting_on_the_turn(reenter: bool) -> None:
    toy = Toy(reenter=reenter)
    blocked: list[float | None] = []
    second = threading.Event()

    def callback() -> None:
        toy.later(second.set)
        toy.turns.wait(second.is_set, blocked.append, 5)

    first = threading.Event()
    toy.later(lambda: (callback(), first.set()))
    toy.turns.wait(first.is_set, first.wait, 10)
    assert first.is_set()
    if reenter:
        assert blocked == [] and second.is_set()  # it stepped itself
    else:
        assert len(blocked) == 1  # it blocked: the handler is not reentrant
