"""Nothing under server/ can unpickle: the manager routes user payloads untouched."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SERVER = Path(__file__).resolve().parents[2] / "server"
FORBIDDEN = {"pickle", "cPickle", "_pickle", "cloudpickle", "dill", "marshal", "dmp.serialization"}


def _imports(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, dotted module) for every import, including ``from dmp import serialization``."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.append((node.lineno, node.module))
            found += [(node.lineno, f"{node.module}.{alias.name}") for alias in node.names]
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, (ast.Name, ast.Attribute))
            and (node.func.id if isinstance(node.func, ast.Name) else node.func.attr)
            in ("__import__", "import_module")
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            found.append((node.lineno, node.args[0].value))
    return found


def forbidden_imports(source: str, filename: str = "<src>") -> list[str]:
    bad = []
    for line, module in _imports(ast.parse(source, filename)):
        if any(module == f or module.startswith(f + ".") for f in FORBIDDEN):
            bad.append(f"{filename}:{line}: imports {module}")
    return bad


def _server_files() -> list[Path]:
    return sorted(SERVER.rglob("*.py"))


def test_there_is_server_code_to_check() -> None:
    names = {p.name for p in _server_files()}
    assert {"daemon.py", "scheduler.py"} <= names


@pytest.mark.parametrize("path", _server_files(), ids=lambda p: str(p.relative_to(SERVER)))
def test_server_module_imports_no_unpickler(path: Path) -> None:
    assert forbidden_imports(path.read_text(), str(path)) == []


@pytest.mark.parametrize(
    "source",
    [
        "import pickle",
        "import os, cloudpickle",
        "import dill as d",
        "from marshal import loads",
        "from pickle import loads as l",
        "import dmp.serialization",
        "from dmp import serialization",
        "from dmp.serialization import loads",
        "def f():\n    import pickle\n",
        "try:\n    import cPickle\nexcept ImportError:\n    pass\n",
        "__import__('pickle')",
        "importlib.import_module('cloudpickle')",
    ],
)
def test_checker_catches_every_form(source: str) -> None:
    assert forbidden_imports(source)


@pytest.mark.parametrize(
    "source",
    ["import pickletools_not", "from dmp import protocol", "import msgpack", "from . import pickle_free"],
)
def test_checker_allows_innocent_imports(source: str) -> None:
    assert forbidden_imports(source) == []


# Loaded by importing the daemon: the source check above cannot see what an
# import drags in through dmp's package __init__ or a module it imports.
NEVER_LOADED_BY_DAEMON = ("cloudpickle", "dill", "dmp.serialization", "dmp.client", "dmp.node")


def test_importing_the_daemon_loads_no_unpickler_and_no_client() -> None:
    import subprocess
    import sys

    probe = (
        "import sys, dmp_server.daemon, dmp_server.scheduler, dmp_server.objects\n"
        "print('\\n'.join(sorted(sys.modules)))\n"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    ).stdout.split()
    assert "dmp_server.daemon" in loaded  # the probe really imported the daemon
    bad = [m for m in loaded if any(m == f or m.startswith(f + ".") for f in NEVER_LOADED_BY_DAEMON)]
    assert bad == []
