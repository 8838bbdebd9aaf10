"""``sway compare``: several saved runs side by side, and what regressed since the first.

A pure function of saved runs (no model): :func:`compare_runs` lines the runs up
probe by probe (the union of their probe names, in first-seen order), with each
probe's verdict, raw value, z and score per run and the deltas against the
**first** run, which is the baseline (the checkpoint or adapter the others are
judged against). A probe absent from a run is a gap, shown and listed, never a
crash and never a regression.

A regression, against the baseline, is one of:

- **verdict**: the verdict got worse, on the ladder PASS < WARN < FAIL/ERROR/SKIP
  (a probe that stops being judged lost its evidence); a baseline that was not
  PASS or WARN cannot get worse;
- **score**: the 0..1 score dropped by at least ``max_drop`` (default 0.10, one
  tenth of the scale: the distance between two of the composite's bands' edges
  is 0.25-0.3, so a 0.10 fall is a visible move, while run-to-run jitter on a
  fixed seed is zero);
- **composite**: the overall score dropped by at least ``max_drop``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from rich import box
from rich.table import Table
from rich.text import Text

from dlm_sway.core.result import ProbeResult, SuiteResult, SwayScore, Verdict
from dlm_sway.report.format import DASH, format_raw, format_score, format_z, visible

DEFAULT_MAX_DROP = 0.10
SCHEMA = "sway-compare/1"
_RANK = {Verdict.PASS: 0, Verdict.WARN: 1}
_WORST = 2


@dataclass(frozen=True, slots=True)
class RunInfo:
    label: str
    path: str
    finished_at: str
    base: str
    adapter: str
    overall: float
    band: str


@dataclass(frozen=True, slots=True)
class Cell:
    """One probe in one run, with its deltas against the baseline (None when either is)."""

    verdict: Verdict
    raw: float | None
    z: float | None
    score: float | None
    delta_raw: float | None = None
    delta_z: float | None = None
    delta_score: float | None = None


@dataclass(frozen=True, slots=True)
class ProbeRow:
    name: str
    kind: str
    cells: tuple[Cell | None, ...]  # None: the probe is not in that run (a gap)


@dataclass(frozen=True, slots=True)
class Regression:
    probe: str  # a probe name, or "composite"
    run: str
    kind: str  # "verdict" | "score" | "composite"
    message: str


@dataclass(frozen=True, slots=True)
class Comparison:
    runs: tuple[RunInfo, ...]
    rows: tuple[ProbeRow, ...]
    max_drop: float
    regressions: tuple[Regression, ...]

    @property
    def gaps(self) -> list[tuple[str, str]]:
        """``(probe, run label)`` for each probe missing from a run."""
        return [
            (row.name, run.label)
            for row in self.rows
            for run, cell in zip(self.runs, row.cells, strict=True)
            if cell is None
        ]


def _delta(now: float | None, then: float | None) -> float | None:
    return None if now is None or then is None else now - then


def _rank(verdict: Verdict) -> int:
    return _RANK.get(verdict, _WORST)


def compare_runs(
    runs: Sequence[tuple[str, str, SuiteResult, SwayScore]],
    *,
    max_drop: float = DEFAULT_MAX_DROP,
) -> Comparison:
    """Line up ``(label, path, suite, score)`` runs; the first one is the baseline."""
    if not runs:
        raise ValueError("compare_runs needs at least one run")
    infos = tuple(
        RunInfo(
            label=label,
            path=path,
            finished_at=suite.finished_at.isoformat(),
            base=suite.base_model_id,
            adapter=suite.adapter_id,
            overall=score.overall,
            band=score.band,
        )
        for label, path, suite, score in runs
    )
    names: dict[str, str] = {}
    for _, _, suite, _ in runs:
        for probe in suite.probes:
            names.setdefault(probe.name, probe.kind)
    rows: list[ProbeRow] = []
    regressions: list[Regression] = []
    for name, kind in names.items():
        found = [next((p for p in s.probes if p.name == name), None) for _, _, s, _ in runs]
        first = found[0]
        cells: list[Cell | None] = []
        for i, here in enumerate(found):
            if here is None:
                cells.append(None)
                continue
            cell = Cell(here.verdict, here.raw, here.z_score, here.score)
            if i > 0 and first is not None:
                cell = Cell(
                    here.verdict,
                    here.raw,
                    here.z_score,
                    here.score,
                    _delta(here.raw, first.raw),
                    _delta(here.z_score, first.z_score),
                    _delta(here.score, first.score),
                )
                regressions.extend(_probe_regressions(name, infos[i].label, first, cell, max_drop))
            cells.append(cell)
        rows.append(ProbeRow(name, kind, tuple(cells)))
    for info in infos[1:]:
        drop = infos[0].overall - info.overall
        if drop >= max_drop:
            regressions.append(
                Regression(
                    "composite",
                    info.label,
                    "composite",
                    f"overall {infos[0].overall:.2f} → {info.overall:.2f} "
                    f"({-drop:+.2f}, at least {max_drop:g} lower)",
                )
            )
    return Comparison(infos, tuple(rows), max_drop, tuple(regressions))


def _probe_regressions(
    name: str, label: str, first: ProbeResult, cell: Cell, max_drop: float
) -> list[Regression]:
    out: list[Regression] = []
    if _rank(first.verdict) < _WORST and _rank(cell.verdict) > _rank(first.verdict):
        out.append(
            Regression(
                name,
                label,
                "verdict",
                f"verdict {first.verdict.value.upper()} → {cell.verdict.value.upper()}",
            )
        )
    if cell.delta_score is not None and -cell.delta_score >= max_drop:
        out.append(
            Regression(
                name,
                label,
                "score",
                f"score {first.score:.2f} → {cell.score:.2f} ({cell.delta_score:+.2f}, "
                f"at least {max_drop:g} lower)",
            )
        )
    return out


def _signed(value: float | None, digits: int = 3) -> str:
    if value is None:
        return DASH
    if abs(value) < 0.5 * 10**-digits:
        return f"{0.0:.{digits}f}"
    return f"{value:+.{digits}f}"


def cell_text(cell: Cell | None, *, baseline: bool) -> str:
    """``PASS raw 0.596 z +6.58σ`` (and ``Δraw … Δz …`` after the baseline) or a gap."""
    if cell is None:
        return "(not in this run)"
    text = f"{cell.verdict.value.upper()} {format_raw(cell.raw)} z {format_z(cell.z)}"
    if not baseline:
        text += f" | Δ {_signed(cell.delta_raw)} Δz {_signed(cell.delta_z, 2)}"
    return text


def to_table(comparison: Comparison) -> Table:
    """The terminal table: one row per probe, one column per run (the first is the baseline)."""
    table = Table(
        title=f"sway compare — {len(comparison.runs)} runs, deltas vs {comparison.runs[0].label}",
        box=box.SIMPLE_HEAD,
        header_style="bold",
    )
    table.add_column("probe", no_wrap=True)
    for i, run in enumerate(comparison.runs):
        table.add_column(visible(run.label) + (" (baseline)" if i == 0 else ""))
    regressed = {(r.probe, r.run) for r in comparison.regressions}
    for row in comparison.rows:
        cells: list[Text] = [Text(f"{visible(row.name)}\n{row.kind}")]
        for i, (run, cell) in enumerate(zip(comparison.runs, row.cells, strict=True)):
            style = "dim" if cell is None else "red" if (row.name, run.label) in regressed else ""
            words = cell_text(cell, baseline=i == 0).replace(" | ", "\n")
            cells.append(Text(words, style=style))
        table.add_row(*cells)
    overall = [Text("overall", style="bold")]
    for i, run in enumerate(comparison.runs):
        delta = "" if i == 0 else f"\nΔ {_signed(run.overall - comparison.runs[0].overall, 2)}"
        style = "red" if ("composite", run.label) in regressed else "bold"
        overall.append(Text(f"{format_score(run.overall)} [{run.band}]{delta}", style=style))
    table.add_row(*overall)
    return table


def summary_lines(comparison: Comparison) -> list[str]:
    """Regressions first (each with its reason), then the gaps; plain text."""
    lines: list[str] = []
    if comparison.regressions:
        lines.append(f"{len(comparison.regressions)} regression(s) vs {comparison.runs[0].label}:")
        lines.extend(
            f"  {visible(r.run)}: {visible(r.probe)}: {r.message}" for r in comparison.regressions
        )
    else:
        lines.append(
            f"no regression vs {comparison.runs[0].label} "
            f"(verdict worse, or score/overall down by ≥ {comparison.max_drop:g})"
        )
    gaps = comparison.gaps
    if gaps:
        lines.append("gaps (probe not in that run): " + ", ".join(f"{p} in {r}" for p, r in gaps))
    return lines


def _md(text: str) -> str:
    return visible(text).replace("|", "\\|").replace("\n", " ")


def to_markdown(comparison: Comparison) -> str:
    runs = comparison.runs
    lines = [
        f"# sway compare — {len(runs)} runs",
        "",
        "| run | finished | adapter | overall | band |",
        "|---|---|---|---:|---|",
    ]
    for i, run in enumerate(runs):
        label = _md(run.label) + (" (baseline)" if i == 0 else "")
        lines.append(
            f"| {label} | {run.finished_at} | {_md(run.adapter)} | "
            f"{format_score(run.overall)} | {run.band} |"
        )
    lines += ["", "| probe | " + " | ".join(_md(r.label) for r in runs) + " |"]
    lines.append("|---" * (len(runs) + 1) + "|")
    for row in comparison.rows:
        cells = [cell_text(c, baseline=i == 0) for i, c in enumerate(row.cells)]
        lines.append(f"| {_md(row.name)} ({row.kind}) | " + " | ".join(map(_md, cells)) + " |")
    lines += ["", "## Regressions", ""]
    lines += [f"- {_md(line.strip())}" for line in summary_lines(comparison)]
    return "\n".join(lines) + "\n"


def _cell_json(cell: Cell | None) -> dict[str, Any] | None:
    if cell is None:
        return None
    return {
        "verdict": cell.verdict.value,
        "raw": cell.raw,
        "z": cell.z,
        "score": cell.score,
        "delta_raw": cell.delta_raw,
        "delta_z": cell.delta_z,
        "delta_score": cell.delta_score,
    }


def to_json(comparison: Comparison) -> str:
    payload = {
        "schema": SCHEMA,
        "baseline": comparison.runs[0].label,
        "max_drop": comparison.max_drop,
        "runs": [
            {
                "label": r.label,
                "path": r.path,
                "finished_at": r.finished_at,
                "base": r.base,
                "adapter": r.adapter,
                "overall": r.overall,
                "band": r.band,
            }
            for r in comparison.runs
        ],
        "probes": [
            {"name": row.name, "kind": row.kind, "runs": [_cell_json(c) for c in row.cells]}
            for row in comparison.rows
        ],
        "regressions": [
            {"probe": r.probe, "run": r.run, "kind": r.kind, "message": r.message}
            for r in comparison.regressions
        ],
        "gaps": [{"probe": p, "run": r} for p, r in comparison.gaps],
    }
    return json.dumps(payload, indent=2, allow_nan=False) + "\n"


__all__ = [
    "DEFAULT_MAX_DROP",
    "Cell",
    "Comparison",
    "ProbeRow",
    "Regression",
    "RunInfo",
    "cell_text",
    "compare_runs",
    "summary_lines",
    "to_json",
    "to_markdown",
    "to_table",
]
