"""Test modules whose functions travel to cluster nodes by value, registered only while their tests run.

A module registered at import (``cloudpickle.register_pickle_by_value`` at
module level) stays registered for every later test of that process, and
with any module registered dmp's plain-pickle shortcuts are off
(``dmp._cloud.by_reference``, ``dmp.serialization.dumps_quick``): those tests would not
test what users run. So the registration is a module-scoped fixture.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from types import ModuleType

import cloudpickle


@contextlib.contextmanager
def pickled_by_value(*modules: ModuleType) -> Iterator[None]:
    """cloudpickle sends ``modules``' functions by value inside (nodes cannot import tests/); as before after."""
    registered = cloudpickle.list_registry_pickle_by_value()
    mine = [m for m in modules if m.__name__ not in registered]
    for module in mine:
        cloudpickle.register_pickle_by_value(module)
    try:
        yield
    finally:
        for module in mine:
            cloudpickle.unregister_pickle_by_value(module)
