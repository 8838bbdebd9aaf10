"""``sway trace``: where a traced run's time went, from the JSONL ``--trace`` wrote.

Per probe and phase (wall seconds, scoring calls, forwards, tokens, cache hits),
per view, and the slowest scoring calls. Reading is lenient about single bad
lines (a run killed mid-write leaves half a line) and counts them; a file with no
event at all is not a trace.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from rich import box
from rich.console import Group, RenderableType
from rich.table import Table

from dlm_sway.core.errors import SpecValidationError
from dlm_sway.report.format import visible


@dataclass
class Bucket:
    """Totals for one probe, phase or view."""

    name: str
    kind: str = ""
    verdict: str = ""
    seconds: float | None = None  # the probe's or phase's own wall time (None for a view)
    calls: int = 0
    prompts: int = 0
    hits: int = 0
    forwards: int = 0
    tokens: int = 0
    forward_seconds: float = 0.0

    def add(self, event: Mapping[str, Any]) -> None:
        self.calls += 1
        self.prompts += _int(event.get("prompts"))
        self.hits += _int(event.get("hits"))
        self.forwards += _int(event.get("forwards"))
        self.tokens += _int(event.get("tokens"))
        self.forward_seconds += _float(event.get("seconds"))


@dataclass
class TraceSummary:
    spec: str = ""
    wall_seconds: float | None = None
    events: int = 0
    bad_lines: int = 0
    sections: dict[str, Bucket] = field(default_factory=dict)  # probes and phases, in order
    views: dict[str, Bucket] = field(default_factory=dict)
    slowest: list[dict[str, Any]] = field(default_factory=list)

    @property
    def totals(self) -> Bucket:
        total = Bucket("total")
        for view in self.views.values():
            for name in ("calls", "prompts", "hits", "forwards", "tokens", "forward_seconds"):
                setattr(total, name, getattr(total, name) + getattr(view, name))
        return total


def _int(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _float(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return 0.0
    return float(value)


def summarise(lines: Iterable[str], *, slowest: int = 10) -> TraceSummary:
    """Fold trace lines into per-section, per-view totals and the slowest calls."""
    out = TraceSummary()
    calls: list[dict[str, Any]] = []
    for line in lines:
        if not line.strip():
            continue
        try:
            event = json.loads(line)
        except ValueError:
            out.bad_lines += 1
            continue
        if not isinstance(event, dict) or not isinstance(event.get("event"), str):
            out.bad_lines += 1
            continue
        out.events += 1
        kind = event["event"]
        if kind == "trace":
            out.spec = str(event.get("spec", ""))
        elif kind in ("start", "end"):
            name = str(event.get("name", "?"))
            what = event.get("what")
            bucket = out.sections.setdefault(
                name, Bucket(name, kind=str(event.get("kind", what or "")))
            )
            if kind == "end":
                bucket.seconds = _float(event.get("seconds"))
                bucket.verdict = str(event.get("verdict", ""))
        elif kind == "score":
            probe = str(event.get("probe", "<unassigned>"))
            out.sections.setdefault(probe, Bucket(probe)).add(event)
            view = view_label(event)
            out.views.setdefault(view, Bucket(view)).add(event)
            if _int(event.get("forwards")) > 0:
                calls.append(event)
        elif kind == "done":
            out.wall_seconds = _float(event.get("seconds"))
    calls.sort(key=lambda e: _float(e.get("seconds")), reverse=True)
    out.slowest = calls[: max(slowest, 0)]
    return out


def view_label(event: dict[str, Any]) -> str:
    """The call's view, and how many other views its forwards scored too (a sweep)."""
    view = str(event.get("view", "?"))
    shared = event.get("shared")
    if isinstance(shared, list) and shared:
        return f"{view} + {len(shared)} shared"
    return view


def read_trace(path: Any, *, slowest: int = 10) -> TraceSummary:
    """Summarise a trace file; an unreadable or event-less file is a SpecValidationError."""
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:  # noqa: PTH123
            summary = summarise(handle, slowest=slowest)
    except IsADirectoryError:
        raise SpecValidationError("is a folder, expected a trace file", source=str(path)) from None
    except OSError as exc:
        raise SpecValidationError(
            f"cannot read trace file: {exc.strerror or exc}", source=str(path)
        ) from None
    if summary.events == 0:
        raise SpecValidationError(
            "no trace events in this file (write one with `sway run SPEC --trace FILE`)",
            source=str(path),
        )
    return summary


def _sec(value: float | None) -> str:
    return "—" if value is None else f"{value:.3f}s"


def _share(part: float, whole: float | None) -> str:
    return f"{100 * part / whole:.0f}%" if whole else "—"


def to_dict(summary: TraceSummary) -> dict[str, Any]:
    def bucket(b: Bucket) -> dict[str, Any]:
        return dict(vars(b))

    return {
        "schema": "sway-trace-summary/1",
        "spec": summary.spec,
        "wall_seconds": summary.wall_seconds,
        "events": summary.events,
        "bad_lines": summary.bad_lines,
        "totals": bucket(summary.totals),
        "sections": [bucket(b) for b in summary.sections.values()],
        "views": [bucket(b) for b in sorted(summary.views.values(), key=_by_time)],
        "slowest": summary.slowest,
    }


def _by_time(b: Bucket) -> float:
    return -b.forward_seconds


def _header(summary: TraceSummary) -> str:
    t = summary.totals
    text = (
        f"trace of {summary.spec or '(unknown spec)'}: wall {_sec(summary.wall_seconds)}, "
        f"{t.calls} scoring call(s), {t.forwards} forward(s), {t.tokens} token(s), "
        f"{_sec(t.forward_seconds)} in forwards, cache hits {t.hits}/{t.prompts}"
    )
    if summary.bad_lines:
        text += f" ({summary.bad_lines} unreadable line(s) skipped)"
    return text


def _rows(summary: TraceSummary) -> tuple[list[list[str]], list[list[str]], list[list[str]]]:
    wall = summary.wall_seconds
    sections = [
        [
            visible(b.name),
            b.kind,
            b.verdict.upper(),
            _sec(b.seconds),
            _share(b.seconds or 0.0, wall),
            str(b.calls),
            str(b.forwards),
            str(b.tokens),
            _sec(b.forward_seconds),
        ]
        for b in summary.sections.values()
    ]
    views = [
        [visible(b.name), str(b.calls), str(b.forwards), str(b.tokens), _sec(b.forward_seconds)]
        for b in sorted(summary.views.values(), key=_by_time)
    ]
    slow = [
        [
            visible(str(e.get("probe", ""))),
            visible(view_label(e)),
            visible(str(e.get("op", ""))),
            str(_int(e.get("prompts"))),
            str(_int(e.get("forwards"))),
            str(_int(e.get("tokens"))),
            _sec(_float(e.get("seconds"))),
        ]
        for e in summary.slowest
    ]
    return sections, views, slow


SECTION_COLS = (
    "probe/phase",
    "kind",
    "verdict",
    "wall",
    "share",
    "calls",
    "fwd",
    "tokens",
    "fwd time",
)
VIEW_COLS = ("view", "calls", "fwd", "tokens", "fwd time")
SLOW_COLS = ("probe", "view", "op", "prompts", "fwd", "tokens", "time")


def to_renderable(summary: TraceSummary) -> RenderableType:
    sections, views, slow = _rows(summary)
    tables: list[RenderableType] = []
    for title, cols, rows in (
        ("per probe and phase", SECTION_COLS, sections),
        ("per view", VIEW_COLS, views),
        ("slowest scoring calls", SLOW_COLS, slow),
    ):
        if not rows:
            continue
        table = Table(title=title, box=box.SIMPLE_HEAD, title_justify="left")
        for col in cols:
            table.add_column(col, no_wrap=True)
        for row in rows:
            table.add_row(*row)
        tables.append(table)
    return Group(_header(summary), *tables)


def to_markdown(summary: TraceSummary) -> str:
    sections, views, slow = _rows(summary)
    lines = ["# sway trace", "", _header(summary)]
    for title, cols, rows in (
        ("Per probe and phase", SECTION_COLS, sections),
        ("Per view", VIEW_COLS, views),
        ("Slowest scoring calls", SLOW_COLS, slow),
    ):
        if rows:
            lines += ["", f"## {title}", "", "| " + " | ".join(cols) + " |"]
            lines.append("|---" * len(cols) + "|")
            lines += ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


__all__ = [
    "Bucket",
    "TraceSummary",
    "read_trace",
    "summarise",
    "to_dict",
    "to_markdown",
    "to_renderable",
]
