"""Module-level task functions the benchmark pools run.

They live at module level in an importable module so the standard
library pickles them by reference; dmp (cloudpickle) does the same.
"""

from __future__ import annotations

from typing import Any


def square(x: int) -> int:
    """The tiny task: as little work as a call can do."""
    return x * x


def identity(x: Any) -> Any:
    """Sends the argument straight back (the payload row returns its array)."""
    return x
