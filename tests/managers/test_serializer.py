"""BaseManager's serializer argument: 'pickle' and 'xmlrpclib' work, anything else is named."""

from __future__ import annotations

import queue

import pytest

from dmp import managers


def test_unknown_serializer_is_refused_with_the_supported_ones_named() -> None:
    with pytest.raises(ValueError, match=r"'json'.*'pickle' or 'xmlrpclib'"):
        managers.BaseManager(serializer="json")


@pytest.mark.timeout(60)
def test_xmlrpclib_manager_serves_as_pickle_does() -> None:
    with managers.SyncManager(serializer="xmlrpclib") as m:
        q = m.Queue()
        values = ["hello", None, True, 2.25, [1, 2], {"k": "v"}]
        for v in values:
            q.put(v)
        assert [q.get(timeout=5) for _ in values] == values
        with pytest.raises(queue.Empty):
            q.get(timeout=0.05)
