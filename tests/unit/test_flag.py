"""dmp.client.flag.Flag: the one-shot Event behind every AsyncResult."""

from __future__ import annotations

import threading

from dmp.client.credit import Credit
from dmp.client.flag import Flag


def test_unset_wait_times_out_and_says_so() -> None:
    flag = Flag()
    assert not flag.is_set()
    assert flag.wait(0.01) is False
    assert flag.wait(-1.0) is False  # a negative timeout is no wait, as with Event


def test_set_wakes_every_waiter_and_later_waits_return_at_once() -> None:
    flag = Flag()
    woke: list[bool] = []
    started = threading.Barrier(5)

    def waiter() -> None:
        started.wait(10)
        woke.append(flag.wait(30))

    threads = [threading.Thread(target=waiter) for _ in range(4)]
    for t in threads:
        t.start()
    started.wait(10)
    flag.set()
    flag.set()  # a second set is harmless
    for t in threads:
        t.join(30)
    assert woke == [True] * 4
    assert flag.is_set() and flag.wait(0) and flag.wait(None)


def test_credit_release_wakes_a_waiting_feeder() -> None:
    credit = Credit(1)
    credit.charge(1)
    got: list[bool] = []
    t = threading.Thread(target=lambda: got.append(credit.take(1, lambda: True)))
    t.start()
    while credit._waiting == 0 and t.is_alive():  # the feeder waits in take()
        t.join(0.001)
    credit.release(1)
    t.join(30)
    assert got == [True] and credit.outstanding == 1
