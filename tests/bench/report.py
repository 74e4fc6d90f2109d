"""Turns outcomes into the plain-text table and the ``--json`` document."""

from __future__ import annotations

import os
import platform
import sys
import time
from dataclasses import dataclass
from typing import Any

from tests.bench.contenders import BASELINE, CANDIDATE
from tests.bench.framework import Benchmark, Config, Outcome, Row, ratio

#: outcomes[benchmark name][contender name]
Outcomes = dict[str, dict[str, Outcome]]


@dataclass(frozen=True)
class Verdict:
    ratio: float | None
    #: "ok", "MISS", or "-" when there is no ratio to judge.
    mark: str


def verdict(row: Row, bench_outcomes: dict[str, Outcome]) -> Verdict:
    base, cand = bench_outcomes.get(BASELINE), bench_outcomes.get(CANDIDATE)
    r = ratio(
        row,
        base.median(row.name) if base else None,
        cand.median(row.name) if cand else None,
    )
    if r is None:
        return Verdict(None, "-")
    return Verdict(r, "ok" if r >= row.target else "MISS")


def fmt_value(v: float) -> str:
    if v >= 1000:
        return f"{v:,.0f}"
    if v >= 100:
        return f"{v:.0f}"
    if v >= 10:
        return f"{v:.1f}"
    return f"{v:.2f}"


class _Notes:
    """Numbered footnotes, one per distinct (contender, status, reason)."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self._index: dict[tuple[str, str, str], int] = {}

    def ref(self, contender: str, status: str, reason: str) -> str:
        key = (contender, status, reason)
        if key not in self._index:
            self._index[key] = len(self.lines) + 1
            self.lines.append(f"[{self._index[key]}] {contender}: {status}: {reason}")
        return f"[{self._index[key]}]"


def _cell(row: Row, contender: str, outcome: Outcome | None, notes: _Notes) -> str:
    if outcome is None:
        return "-"
    value = outcome.median(row.name)
    if value is None:
        if outcome.status == "ok":
            return "-"
        return f"{outcome.status} {notes.ref(contender, outcome.status, outcome.reason)}"
    text = fmt_value(value)
    if outcome.reason:
        text += f" {notes.ref(contender, 'note', outcome.reason)}"
    return text


def render_table(
    benches: list[Benchmark], outcomes: Outcomes, contenders: list[str], config: Config
) -> str:
    notes = _Notes()
    header = ["row", "unit", *contenders, f"ratio ({CANDIDATE} vs mp)", "target"]
    body: list[list[str]] = []
    for bench in benches:
        for row in bench.rows:
            got = outcomes.get(bench.name, {})
            v = verdict(row, got)
            cells = [_cell(row, c, got.get(c), notes) for c in contenders]
            shown_ratio = f"{v.ratio:.2f}x" if v.ratio is not None else "-"
            body.append(
                [row.name, row.unit, *cells, shown_ratio, f">= {row.target:.1f}x  {v.mark}"]
            )
    widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]
    numeric = set(range(2, len(header) - 1))

    def line(cells: list[str]) -> str:
        return " | ".join(
            c.rjust(w) if i in numeric else c.ljust(w)
            for i, (c, w) in enumerate(zip(cells, widths))
        ).rstrip()

    mode = (
        "quick mode: reduced sizes, 1 repetition"
        if config.quick
        else f"median of >= {config.reps} repetitions"
    )
    out = [
        f"dmp benchmarks ({mode}; processes={config.processes}; "
        f"Python {platform.python_version()}, {os.cpu_count()} CPUs)",
        "ratio > 1.00x means dmp is better (throughput: dmp/mp; latency: mp/dmp)",
        "",
        line(header),
        "-+-".join("-" * w for w in widths),
        *(line(r) for r in body),
    ]
    if notes.lines:
        out += ["", *notes.lines]
    out += ["", "rows:"]
    out += [f"  {row.name}: {row.description}" for bench in benches for row in bench.rows]
    return "\n".join(out)


def to_json(
    benches: list[Benchmark], outcomes: Outcomes, contenders: list[str], config: Config
) -> dict[str, Any]:
    rows = []
    for bench in benches:
        got = outcomes.get(bench.name, {})
        for row in bench.rows:
            v = verdict(row, got)
            rows.append({
                "name": row.name,
                "benchmark": bench.name,
                "kind": bench.kind.value,
                "unit": row.unit,
                "direction": row.direction.value,
                "description": row.description,
                "target_ratio": row.target,
                "ratio": v.ratio,
                "target": v.mark,
                "results": {
                    c: {
                        "status": got[c].status,
                        "reason": got[c].reason,
                        "median": got[c].median(row.name),
                        "values": [rep[row.name] for rep in got[c].reps if row.name in rep],
                        "elapsed_s": got[c].elapsed_s,
                        "traceback": got[c].detail,
                    }
                    for c in contenders
                    if c in got
                },
            })  # fmt: skip
    return {
        "meta": {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "python": sys.version,
            "platform": platform.platform(),
            "cpu_count": os.cpu_count(),
            "config": config.__dict__,
            "baseline": BASELINE,
            "candidate": CANDIDATE,
            "contenders": contenders,
        },
        "rows": rows,
    }
