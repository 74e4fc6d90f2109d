"""Session-wide fixtures: whatever daemon a test failed to stop dies when the session (xdist worker) ends."""

from __future__ import annotations

import signal
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.daemons import kill_leftovers

# Some tests press Ctrl-C (SIGINT to themselves or to a command they start),
# as a user at a terminal would. A shell starts background jobs with SIGINT
# ignored, and children inherit that: give this process (and so the commands
# it starts) the default Ctrl-C back, whatever launched the suite.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(scope="session", autouse=True)
def daemons_swept() -> Iterator[None]:
    """Kill (by process group) every daemon tests/daemons.py started and nobody stopped."""
    yield
    leftovers = kill_leftovers()
    if leftovers:
        sys.stderr.write(f"tests/daemons.py: killed {len(leftovers)} leftover daemon group(s): {leftovers}\n")


@pytest.fixture(autouse=True)
def sigint_left_as_found() -> Iterator[None]:
    """A test may not leave Ctrl-C held (dmp's critical-step depth) or its handler replaced:
    every later Ctrl-C test in the same process would then fail for no reason of its own."""
    from dmp.client import sigint

    handler = signal.getsignal(signal.SIGINT)
    yield
    assert sigint._depth == 0, f"the test left dmp's Ctrl-C guard held (depth {sigint._depth})"
    now = signal.getsignal(signal.SIGINT)
    assert now is handler or now is sigint._handler or handler is sigint._handler, (
        f"the test left SIGINT's handler replaced: {handler!r} -> {now!r}")


@pytest.fixture
def markers(tmp_path: Path) -> Path:
    """A fresh directory where tasks leave marker files (how a test sees what ran, and how often)."""
    d = tmp_path / "markers"
    d.mkdir()
    return d
