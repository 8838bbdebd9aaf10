"""The rich terminal report.

Everything user-supplied (probe names, messages, paths) goes through
:class:`rich.text.Text`, never through markup, so a message such as
``pip install 'dlm-sway[hf]'`` prints verbatim instead of being eaten as a style tag.
Messages are printed as the results carry them: the judge wrote them from the
same numbers the table prints (a WARN row's note says why it is not a PASS).
"""

from __future__ import annotations

from collections.abc import Mapping

from rich import box
from rich.cells import cell_len
from rich.console import Console, Group, RenderableType
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from dlm_sway.core.result import HealthCheck, ProbeResult, SuiteResult, SwayScore, Verdict
from dlm_sway.probes.base import CATEGORIES
from dlm_sway.report.format import (
    DASH,
    adapter_label,
    backend_line,
    collect_degenerate_nulls,
    collect_uncalibrated,
    format_ci,
    format_duration,
    format_p_holm,
    format_ratio,
    format_raw,
    format_score,
    format_z,
    noise_floor_line,
    null_marker,
    probe_note,
    scored_categories,
    visible_tree,
)

BAR_CELLS = 10
NOTE_MIN_WIDTH = 24
PROBE_COLUMNS = (
    "name",
    "kind",
    "verdict",
    "score",
    "raw",
    "effect",
    "ci95",
    "z",
    "p",
    "null",
    "time",
    "note",
)
_LEFT_ALIGNED = frozenset({"name", "kind", "verdict"})
VERDICT_STYLES: Mapping[Verdict, str] = {
    Verdict.PASS: "bold green",
    Verdict.FAIL: "bold red",
    Verdict.WARN: "bold yellow",
    Verdict.SKIP: "dim",
    Verdict.ERROR: "bold magenta",
}
HEALTH_STYLES: Mapping[str, str] = {
    "error": "bold red",
    "warn": "yellow",
    "info": "cyan",
}
BAND_STYLES: Mapping[str, str] = {
    "noise": "bold red",
    "partial": "bold yellow",
    "healthy": "bold green",
    "suspicious": "bold magenta",
}


def render_terminal(
    suite: SuiteResult, score: SwayScore, *, console: Console | None = None
) -> None:
    """Print the full report for one run to ``console`` (stdout when omitted)."""
    out = console if console is not None else Console()
    suite, score = visible_tree(suite), visible_tree(score)
    # Soft wrap (a pipe, a CI log): nothing is laid out to the width, so the box fits its text.
    out.print(_header_panel(suite, score, expand=not out.soft_wrap))
    out.print(_probe_section(suite, out))
    for block in (_findings(score), _health(suite.health), _footers(suite)):
        if block is not None:
            out.print(block)
    out.print(_status_line(suite), style="dim", overflow="fold")


def _score_style(value: float) -> str:
    if value >= 0.6:
        return "bold green"
    if value >= 0.3:
        return "bold yellow"
    return "bold red"


def _header_panel(suite: SuiteResult, score: SwayScore, *, expand: bool = True) -> Panel:
    overall = Text("overall: ")
    overall.append(format_score(score.overall), style=_score_style(score.overall))
    overall.append("  ")
    overall.append(f"[ {score.band} ]", style=BAND_STYLES.get(score.band, "bold"))
    if score.band_reason:
        overall.append(f"  {score.band_reason}", style="dim")
    base = suite.base_model_id or "(unknown base)"
    title = Text(f"sway — {base} vs {adapter_label(suite.adapter_id)}", style="bold")
    return Panel(
        Group(overall, Text(""), _components_grid(suite, score)),
        title=title,
        title_align="left",
        box=box.ROUNDED,
        expand=expand,
    )


def _components_grid(suite: SuiteResult, score: SwayScore) -> RenderableType:
    # Canonical order, not dict order: a report re-read from sorted-key JSON must look the same.
    present = set(score.weights) | set(score.components)
    categories = [c for c in CATEGORIES if c in present] + sorted(present - set(CATEGORIES))
    scored = scored_categories(suite)
    grid = Table.grid(padding=(0, 2))
    for _ in range(3):
        grid.add_column(no_wrap=True)
    grid.add_column()
    for category in categories:
        weight = score.weights.get(category)
        value = score.components.get(category)
        has_probes = category in scored and value is not None
        if weight is None:
            label = Text("(not weighted)", style="dim")
        elif weight == 0:
            label = Text("(informational, weight=0)", style="dim")
        else:
            label = Text(f"weight={weight:g}", style="dim")
        if not has_probes:
            label.append("  no scored probes", style="dim")
        grid.add_row(
            Text(category),
            Text(format_score(value if has_probes else None)),
            _bar(value if has_probes else None),
            label,
        )
    return grid


def _bar(value: float | None) -> Text:
    filled = 0 if value is None else min(max(round(value * BAR_CELLS), 0), BAR_CELLS)
    bar = Text("█" * filled, style=_score_style(value) if value is not None else "dim")
    bar.append("░" * (BAR_CELLS - filled), style="dim")
    return bar


def _probe_section(suite: SuiteResult, console: Console) -> RenderableType:
    """The probe table when it fits the console, else one stacked entry per probe.

    Every column but the note is kept on one line, and the note needs room to
    wrap. When the table is a little too wide, the p cell goes on two lines
    (``p=…`` over ``(Holm …)``); when even that does not fit (an 80-column CI
    log), rich would crush the columns to a character or two, so the stacked
    form is used instead.
    """
    if not suite.probes:
        return Text("(this run has no probe results)", style="dim")
    rows = [_probe_cells(result) for result in suite.probes]
    if _table_width(rows) > console.options.max_width:
        rows = [_probe_cells(result, split_p=True) for result in suite.probes]
        if _table_width(rows) > console.options.max_width:
            return _probe_stack(suite)
    table = Table(box=box.SIMPLE_HEAD, header_style="bold", pad_edge=False, collapse_padding=True)
    for header in PROBE_COLUMNS:
        if header == "note":
            table.add_column(header, overflow="fold")
        elif header in _LEFT_ALIGNED:
            table.add_column(header, no_wrap=True)
        else:
            table.add_column(header, justify="right", no_wrap=True)
    for row in rows:
        table.add_row(*row)
    return table


def _table_width(rows: list[list[Text]]) -> int:
    """The table's width with every fixed column unwrapped and the note at its minimum."""
    fixed = [
        max(
            [
                cell_len(header),
                *(cell_len(line) for row in rows for line in row[i].plain.split("\n")),
            ]
        )
        for i, header in enumerate(PROBE_COLUMNS[:-1])
    ]
    # Between two columns: one divider cell and one (collapsed) padding cell; no outer edges.
    return sum(fixed) + NOTE_MIN_WIDTH + 2 * len(PROBE_COLUMNS) - 1


def _probe_cells(result: ProbeResult, *, split_p: bool = False) -> list[Text]:
    p_cell = format_p_holm(result.p_value, result.p_adjusted)
    if split_p:
        p_cell = p_cell.replace(" (Holm", "\n(Holm", 1)
    return [
        Text(result.name),
        Text(result.kind, style="cyan"),
        _verdict(result.verdict),
        Text(format_score(result.score)),
        Text(format_raw(result.raw)),
        Text(format_ratio(result.effect_ratio)),
        Text(format_ci(result.ci_95)),
        Text(format_z(result.z_score)),
        Text(p_cell),
        Text(null_marker(result.null)),
        Text(format_duration(result.duration_s)),
        Text(probe_note(result)),
    ]


def _probe_stack(suite: SuiteResult) -> Table:
    grid = Table.grid(padding=(0, 1))
    grid.add_column(no_wrap=True)
    grid.add_column(overflow="fold")
    for result in suite.probes:
        head = Text(result.name, style="bold")
        head.append(f" ({result.kind})", style="cyan")
        head.append(f"  score {format_score(result.score)}")
        # Two short lines rather than one that wraps at 80 columns: the measurement,
        # then its standing against the nulls.
        measured = Text(
            f"raw {format_raw(result.raw)} · effect {format_ratio(result.effect_ratio)} · "
            f"ci95 {format_ci(result.ci_95)} · {format_duration(result.duration_s)}",
            style="dim",
        )
        p_value = format_p_holm(result.p_value, result.p_adjusted)
        calibrated = Text(
            f"z {format_z(result.z_score)} · {'p ' if p_value.startswith(DASH) else ''}"
            f"{p_value} · null {null_marker(result.null)}",
            style="dim",
        )
        body = [head, measured, calibrated]
        note = probe_note(result)
        if note:
            body.append(Text(note))
        grid.add_row(_verdict(result.verdict), Group(*body))
    return grid


def _verdict(verdict: Verdict) -> Text:
    return Text(verdict.value.upper(), style=VERDICT_STYLES.get(verdict, ""))


def _findings(score: SwayScore) -> RenderableType | None:
    if not score.findings:
        return None
    grid = Table.grid(padding=(0, 1))
    grid.add_column(justify="right", no_wrap=True)
    grid.add_column(overflow="fold")
    for i, finding in enumerate(score.findings, start=1):
        grid.add_row(Text(f"  {i}."), Text(finding))
    return Group(Text("top findings:", style="bold"), grid)


def _health(checks: tuple[HealthCheck, ...]) -> RenderableType | None:
    """``[level] message — fix`` for each check, coloured by level, in the order given."""
    if not checks:
        return None
    grid = Table.grid(padding=(0, 1))
    grid.add_column(no_wrap=True)
    grid.add_column(overflow="fold")
    for check in checks:
        level = check.level or "info"
        style = HEALTH_STYLES.get(level.lower(), "bold")
        line = Text(check.message, style=style)
        if check.fix:
            line.append(f" — {check.fix}")
        grid.add_row(Text(f"  [{level}]", style=style), line)
    return Group(Text("health:", style="bold"), grid)


def _footers(suite: SuiteResult) -> RenderableType | None:
    lines: list[Text] = []
    uncalibrated = collect_uncalibrated(suite)
    if uncalibrated:
        listed = "; ".join(
            f"{label}: {reason}" if reason else label for label, reason in uncalibrated
        )
        lines.append(
            Text(f"not null-calibrated (fixed thresholds, no z-score): {listed}", style="yellow")
        )
    degenerate = collect_degenerate_nulls(suite)
    if degenerate:
        listed = "; ".join(f"{name}: {why}" for name, why in degenerate)
        lines.append(
            Text(
                f"unusable null distribution (fixed thresholds instead): {listed}",
                style="yellow",
            )
        )
    return Group(*lines) if lines else None


def _status_line(suite: SuiteResult) -> Text:
    parts = [f"wall {format_duration(suite.wall_seconds)}", f"sway {suite.sway_version or '?'}"]
    if suite.determinism is not None:
        parts.append(f"det: {suite.determinism.class_} (seed={suite.determinism.seed})")
    backend = backend_line(suite.backend_stats)
    if backend:
        parts.append(backend)
    floor = noise_floor_line(suite.noise_floor)
    if floor:
        parts.append(floor)
    return Text(" | ".join(parts))


__all__ = ["render_terminal"]
