"""Every module of the library and the manager daemon stays under LIMIT lines
(issue 9): a module that grows past it is split along a role a reader can name."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LIMIT = 400


def _modules() -> list[Path]:
    return sorted([*(ROOT / "dmp").rglob("*.py"), *(ROOT / "server" / "dmp_server").rglob("*.py")])


def test_the_tree_has_modules_to_check() -> None:
    names = {p.relative_to(ROOT).as_posix() for p in _modules()}
    assert {"dmp/client/pool.py", "server/dmp_server/scheduler.py"} <= names


def test_every_module_is_under_the_limit() -> None:
    over = []
    for path in _modules():
        name = path.relative_to(ROOT).as_posix()
        lines = len(path.read_text().splitlines())
        if lines >= LIMIT:
            over.append(f"{name}: {lines} lines")
    assert not over, f"modules of {LIMIT} lines or more (split them by role): {over}"
