"""BaseManager's serializer argument: only 'pickle' is supported, said clearly."""

from __future__ import annotations

import pytest

from dmp import managers


def test_xmlrpclib_serializer_is_refused_with_the_supported_one_named() -> None:
    with pytest.raises(ValueError, match=r"xmlrpclib.*'pickle'|'pickle'.*xmlrpclib"):
        managers.BaseManager(serializer="xmlrpclib")
    managers.BaseManager(serializer="pickle")
