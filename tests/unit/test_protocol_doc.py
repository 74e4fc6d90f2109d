"""docs/protocol.md's table of message types agrees with dmp.wire.protocol: names, codes, directions, fields."""

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


def parse_table(text: str) -> dict[str, tuple[int, list[str], str]]:
    """type name -> (code, field names, direction) from the table whose header is COLUMNS."""
    lines = text.splitlines()
    heads = [i for i, ln in enumerate(lines) if ln.lstrip().startswith("|") and _cells(ln) == COLUMNS]
    assert len(heads) == 1, f"expected one table with columns {COLUMNS} in {DOC}, found {len(heads)}"
    start = heads[0]
    rows: dict[str, tuple[int, list[str], str]] = {}
    for line in lines[start + 2 :]:
        if not line.lstrip().startswith("|"):
            break
        cells = _cells(line)
        assert len(cells) == len(COLUMNS), f"row has {len(cells)} cells: {line}"
        name = cells[0].strip("`")
        assert name not in rows, f"{name} listed twice"
        rows[name] = (int(cells[1]), _FIELD.findall(cells[3]), cells[2])
    return rows


@pytest.fixture(scope="module")
def table() -> dict[str, tuple[int, list[str], str]]:
    return parse_table(DOC.read_text())


def test_same_message_types(table: dict[str, tuple[int, list[str], str]]) -> None:
    documented = set(table)
    actual = set(protocol.message_types())
    assert documented == actual, (
        f"missing from the doc: {sorted(actual - documented)}; "
        f"not in dmp.wire.protocol: {sorted(documented - actual)}"
    )


def test_same_codes(table: dict[str, tuple[int, list[str], str]]) -> None:
    for name, cls in protocol.message_types().items():
        assert table[name][0] == cls.TYPE, f"{name}: doc says code {table[name][0]}, code is {cls.TYPE}"


def test_same_fields_in_order(table: dict[str, tuple[int, list[str], str]]) -> None:
    for name, cls in protocol.message_types().items():
        fields = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
        assert table[name][1] == fields, f"{name}: doc lists {table[name][1]}, dataclass has {fields}"


_ANY_PEER = {"client", "worker", "node", "status"}


def direction(cls: type[protocol.Message]) -> str:
    """How the table writes who sends ``cls`` to whom."""
    if set(cls.SENDERS) == set(cls.RECEIVERS) == _ANY_PEER | {"manager"}:
        return "either direction"

    def side(names: tuple[str, ...]) -> str:
        if set(names) == _ANY_PEER:
            return "any peer"
        return ", ".join("object host" if n == "host" else n for n in names)

    return f"{side(cls.SENDERS)} → {side(cls.RECEIVERS)}"


def test_same_directions(table: dict[str, tuple[int, list[str], str]]) -> None:
    for name, cls in protocol.message_types().items():
        assert table[name][2] == direction(cls), f"{name}: doc says {table[name][2]!r}, catalogue {direction(cls)!r}"


def test_each_message_has_one_direction() -> None:
    """Only Heartbeat and Bye go both ways; every other type is sent by the
    manager or to it, never both, so no type changes meaning with direction."""
    for name, cls in protocol.message_types().items():
        if name in ("Heartbeat", "Bye"):
            continue
        assert ("manager" in cls.SENDERS) != ("manager" in cls.RECEIVERS), name
        assert not set(cls.SENDERS) & set(cls.RECEIVERS), name


def test_parser_notices_a_missing_row_and_a_reordered_field() -> None:
    """The checks above can fail: a doc edited out of step is caught."""
    text = DOC.read_text()
    without = "\n".join(ln for ln in text.splitlines() if not ln.startswith("| Welcome |"))
    assert "Welcome" not in parse_table(without)
    swapped = text.replace("`peer_id`, `heartbeat_s`", "`heartbeat_s`, `peer_id`", 1)
    assert parse_table(swapped)["Welcome"][1] != [
        f.name for f in dataclasses.fields(protocol.Welcome)
    ]
    turned = text.replace("| TaskDone | 15 | worker → manager |", "| TaskDone | 15 | manager → client |", 1)
    assert parse_table(turned)["TaskDone"][2] != direction(protocol.TaskDone)


def test_status_and_error_codes_are_documented() -> None:
    text = DOC.read_text()
    for status in protocol.Status:
        assert re.search(rf"\| `{status.name}` \| {int(status)} \|", text), status
    for code in protocol.ErrorCode:
        assert f"| `{code.value}` |" in text, code
