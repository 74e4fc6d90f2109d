"""A module whose function a test registers for pickling by value (tests/unit/test_serialization.py)."""


def triple(x: int) -> int:
    return 3 * x
