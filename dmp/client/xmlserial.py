"""What ``BaseManager(serializer="xmlrpclib")`` does to values, as in multiprocessing.

The standard library's xmlrpclib managers send every request and reply through
``xmlrpc.client.dumps``/``loads``: tuples arrive as lists, ``bytes`` as
``xmlrpc.client.Binary``, an object with a ``__dict__`` as a dict of it, and a
value xmlrpc cannot marshal (a function, a set, an int beyond 32 bits) raises
``TypeError``/``OverflowError`` in the sender. dmp's payloads stay cloudpickle
on ZeroMQ; a proxy of an xmlrpclib manager passes each argument and result
through the same dumps/loads round trip, so the values its callers see are
the standard library's.
"""

from __future__ import annotations

import xmlrpc.client
from typing import Any


def xml_roundtrip(obj: Any) -> Any:
    """``obj`` as multiprocessing's xmlrpclib connection delivers it (same calls, same errors)."""
    text = xmlrpc.client.dumps((obj,), None, None, None, True)
    (value,), _method = xmlrpc.client.loads(text)
    return value
