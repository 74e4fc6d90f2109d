"""docs/protocol.md's table of message types agrees with dmp/protocol.py."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from dmp.wire import protocol

DOC = Path(__file__).resolve().parents[2] / "docs" / "protocol.md"
COLUMNS = ["type", "code", "direction", "fields", "payload frames", "reply"]
# `name` or `name=default` inside backticks.
_FIELD = re.compile(r"`([A-Za-z_][A-Za-z0-9_]*)(?:=[^`]*)?`")


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def parse_table(text: str) -> dict[str, tuple[int, list[str]]]:
    """type name -> (code, field names) from the table whose header is COLUMNS."""
    lines = text.splitlines()
    heads = [i for i, ln in enumerate(lines) if ln.lstrip().startswith("|") and _cells(ln) == COLUMNS]
    assert len(heads) == 1, f"expected one table with columns {COLUMNS} in {DOC}, found {len(heads)}"
    start = heads[0]
    rows: dict[str, tuple[int, list[str]]] = {}
    for line in lines[start + 2 :]:
        if not line.lstrip().startswith("|"):
            break
        cells = _cells(line)
        assert len(cells) == len(COLUMNS), f"row has {len(cells)} cells: {line}"
        name = cells[0].strip("`")
        assert name not in rows, f"{name} listed twice"
        rows[name] = (int(cells[1]), _FIELD.findall(cells[3]))
    return rows


@pytest.fixture(scope="module")
def table() -> dict[str, tuple[int, list[str]]]:
    return parse_table(DOC.read_text())


def test_same_message_types(table: dict[str, tuple[int, list[str]]]) -> None:
    documented = set(table)
    actual = set(protocol.message_types())
    assert documented == actual, (
        f"missing from the doc: {sorted(actual - documented)}; "
        f"not in dmp.wire.protocol: {sorted(documented - actual)}"
    )


def test_same_codes(table: dict[str, tuple[int, list[str]]]) -> None:
    for name, cls in protocol.message_types().items():
        assert table[name][0] == cls.TYPE, f"{name}: doc says code {table[name][0]}, code is {cls.TYPE}"


def test_same_fields_in_order(table: dict[str, tuple[int, list[str]]]) -> None:
    for name, cls in protocol.message_types().items():
        fields = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
        assert table[name][1] == fields, f"{name}: doc lists {table[name][1]}, dataclass has {fields}"


def test_parser_notices_a_missing_row_and_a_reordered_field() -> None:
    """The checks above can fail: a doc edited out of step is caught."""
    text = DOC.read_text()
    without = "\n".join(ln for ln in text.splitlines() if not ln.startswith("| Welcome |"))
    assert "Welcome" not in parse_table(without)
    swapped = text.replace("`peer_id`, `version`", "`version`, `peer_id`", 1)
    assert parse_table(swapped)["Welcome"][1] != [
        f.name for f in dataclasses.fields(protocol.Welcome)
    ]


def test_status_and_error_codes_are_documented() -> None:
    text = DOC.read_text()
    for status in protocol.Status:
        assert re.search(rf"\| `{status.name}` \| {int(status)} \|", text), status
    for code in protocol.ErrorCode:
        assert f"| `{code.value}` |" in text, code
