"""dmp's version, read from the one place it is written: pyproject.toml's ``version``.

An installed dmp (wheel or editable) reads it from the distribution's metadata;
a source checkout that was never installed reads the pyproject.toml beside it.
"""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

# The distribution's name on the package index differs from the import name:
# `dmp` there is an unrelated project.
DIST_NAME = "dmp-multiprocessing"


def _read_version() -> str:
    try:
        return importlib.metadata.version(DIST_NAME)
    except importlib.metadata.PackageNotFoundError:
        pass
    pyproject = Path(__file__).resolve().parent.parent / "pyproject.toml"
    try:
        import tomllib

        with pyproject.open("rb") as fh:
            version = tomllib.load(fh)["project"]["version"]
    except (OSError, ValueError, KeyError, TypeError):
        return "0+unknown"
    return str(version)


__version__ = _read_version()
