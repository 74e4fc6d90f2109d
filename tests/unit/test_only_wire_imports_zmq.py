"""Only dmp/wire/transport.py and dmp/wire/peer.py may import zmq: everything else
in dmp/ talks to the manager through a Channel or a PeerLoop."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

DMP = Path(__file__).resolve().parents[2] / "dmp"
ALLOWED = {"wire/transport.py", "wire/peer.py"}


def zmq_imports(source: str, filename: str = "<src>") -> list[str]:
    """Every ``import zmq``, ``import zmq.x``, ``from zmq[.x] import ...`` and ``__import__("zmq")``."""
    found = []
    for node in ast.walk(ast.parse(source, filename)):
        if isinstance(node, ast.Import):
            modules = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and not node.level:
            modules = [node.module or ""]
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, (ast.Name, ast.Attribute))
            and (node.func.id if isinstance(node.func, ast.Name) else node.func.attr) in ("__import__", "import_module")
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            modules = [node.args[0].value]
        else:
            continue
        found += [f"{filename}:{node.lineno}: imports {m}" for m in modules if m == "zmq" or m.startswith("zmq.")]
    return found


def _modules() -> list[Path]:
    return sorted(DMP.rglob("*.py"))


def test_the_allowed_modules_exist_and_do_import_zmq() -> None:
    for name in ALLOWED:
        assert zmq_imports((DMP / name).read_text()), name


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(DMP)))
def test_no_other_dmp_module_imports_zmq(path: Path) -> None:
    if str(path.relative_to(DMP)) in ALLOWED:
        return
    assert zmq_imports(path.read_text(), str(path)) == []


@pytest.mark.parametrize(
    "source",
    [
        "import zmq",
        "import os, zmq.auth",
        "import zmq as z",
        "from zmq import Poller",
        "from zmq.auth import load_certificate",
        "def f():\n    import zmq\n",
        "__import__('zmq')",
        "importlib.import_module('zmq.asyncio')",
    ],
)
def test_checker_catches_every_form(source: str) -> None:
    assert zmq_imports(source)


@pytest.mark.parametrize("source", ["import zmqlike", "from dmp.wire import transport", "from . import zmq"])
def test_checker_allows_innocent_imports(source: str) -> None:
    assert zmq_imports(source) == []
