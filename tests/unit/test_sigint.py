"""The Ctrl-C guard's bookkeeping survives a SIGINT that lands between a wait's end and its exit."""

from __future__ import annotations

import os
import signal

import pytest

from dmp.client import sigint

pytestmark = pytest.mark.timeout(30)


def test_an_interrupt_on_an_interruptible_exit_leaves_later_interrupts_immediate() -> None:
    with pytest.raises(KeyboardInterrupt):
        with sigint.critical:
            sigint.interruptible.__enter__()
            # The wait returned; SIGINT is taken before __exit__ puts the depth back,
            # as Python may run the handler on the first bytecode of __exit__.
            raise KeyboardInterrupt
    assert sigint._depth == 0 and not sigint._pending
    # Outside every step a SIGINT raises at once, as Python's default handler does.
    with pytest.raises(KeyboardInterrupt):
        os.kill(os.getpid(), signal.SIGINT)
        for _ in range(1000):  # the handler runs at the next bytecode boundary
            pass
    assert not sigint._pending
