"""Session-wide fixtures: whatever daemon a test failed to stop dies when the session (xdist worker) ends."""

from __future__ import annotations

import sys
from collections.abc import Iterator

import pytest

from tests.daemons import kill_leftovers


@pytest.fixture(scope="session", autouse=True)
def daemons_swept() -> Iterator[None]:
    """Kill (by process group) every daemon tests/daemons.py started and nobody stopped."""
    yield
    leftovers = kill_leftovers()
    if leftovers:
        sys.stderr.write(f"tests/daemons.py: killed {len(leftovers)} leftover daemon group(s): {leftovers}\n")
