"""The manager does not blame a peer for its own backlog (dmp_server.peers.excused)."""

from __future__ import annotations

import pytest
from dmp_server.peers import BACKLOG_GRACE_BEATS, LIVENESS, excused


def test_nothing_excused_when_on_time_and_caught_up() -> None:
    assert excused(100.0, 0.0, 100.0, 1.0) == 0.0


def test_a_late_check_is_excused_as_before() -> None:
    assert excused(100.0, 3.0, 100.0, 1.0) == pytest.approx(3.0)


def test_time_since_the_socket_was_last_read_empty_is_excused() -> None:
    """A proof or heartbeat that came 1 s after its Hello, behind 6 s of backlog: not expired."""
    assert excused(100.0, 0.0, 94.0, 1.0) == pytest.approx(6.0)
    assert excused(100.0, 2.0, 94.0, 1.0) == pytest.approx(6.0)  # the longer of the two
    deadline = 100.0 - LIVENESS * 1.0 - excused(100.0, 0.0, 94.0, 1.0)
    assert deadline == pytest.approx(94.0 - LIVENESS)  # the window counted up to the last empty read


def test_a_backlog_is_excused_by_at_most_the_grace() -> None:
    """A manager saturated for good still expires a dead peer (bounded grace)."""
    assert excused(1000.0, 0.0, 0.0, 1.0) == pytest.approx(BACKLOG_GRACE_BEATS * 1.0)
    assert excused(1000.0, 0.0, 0.0, 0.5) == pytest.approx(BACKLOG_GRACE_BEATS * 0.5)
    assert excused(1000.0, 50.0, 0.0, 1.0) == pytest.approx(50.0)  # a held-up reactor: as before
