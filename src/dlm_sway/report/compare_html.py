"""``sway compare --format html``: one self-contained page with a trajectory chart.

No script, no stylesheet link, no font, no request of any kind: the chart is an
inline SVG (score 0..1 per run, the composite in bold, one line per probe) and
every number it draws is also in the table below it, so the page reads without
colour and prints.
"""

from __future__ import annotations

from html import escape

from dlm_sway.report.compare import Comparison, cell_text, summary_lines
from dlm_sway.report.format import visible

_PALETTE = (
    "#1f77b4",
    "#ff7f0e",
    "#2ca02c",
    "#d62728",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#7f7f7f",
    "#bcbd22",
    "#17becf",
)
_W, _H, _L, _R, _T, _B = 640, 300, 48, 16, 16, 56
_DASHES = ("", "6 3", "2 2", "8 3 2 3")

_STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:1.5rem;color:#111}
table{border-collapse:collapse;margin:1rem 0}th,td{border:1px solid #999;padding:.25rem .5rem;
text-align:left;vertical-align:top}td.gap{color:#666}td.reg{background:#fde2e2}
svg text{font:11px system-ui,sans-serif}
"""


def _x(i: int, n: int) -> float:
    return _L + (_W - _L - _R) * (i / (n - 1) if n > 1 else 0.5)


def _y(v: float) -> float:
    return _T + (_H - _T - _B) * (1.0 - min(max(v, 0.0), 1.0))


def _series(comparison: Comparison) -> list[tuple[str, list[float | None]]]:
    series: list[tuple[str, list[float | None]]] = [
        ("overall", [r.overall for r in comparison.runs])
    ]
    for row in comparison.rows:
        values = [None if c is None else c.score for c in row.cells]
        if any(v is not None for v in values):
            series.append((row.name, values))
    return series


def trajectory_svg(comparison: Comparison) -> str:
    """Scores across runs as an SVG line chart (gaps break a line; every point has a title)."""
    n = len(comparison.runs)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {_W} {_H}" width="{_W}" '
        f'height="{_H}" role="img" aria-label="score of each probe across runs">'
    ]
    for tick in (0.0, 0.25, 0.5, 0.75, 1.0):
        y = _y(tick)
        parts.append(
            f'<line x1="{_L}" x2="{_W - _R}" y1="{y:.1f}" y2="{y:.1f}" stroke="#ddd"/>'
            f'<text x="{_L - 6}" y="{y + 4:.1f}" text-anchor="end">{tick:.2f}</text>'
        )
    for i, run in enumerate(comparison.runs):
        label = escape(visible(run.label)[:24])
        parts.append(
            f'<text x="{_x(i, n):.1f}" y="{_H - _B + 16}" text-anchor="middle">{label}</text>'
        )
    for k, (name, values) in enumerate(_series(comparison)):
        colour = "#000" if k == 0 else _PALETTE[(k - 1) % len(_PALETTE)]
        width = 3 if k == 0 else 1.5
        dash = "" if k == 0 else _DASHES[(k - 1) // len(_PALETTE) % len(_DASHES)]
        segment: list[str] = []
        segments: list[list[str]] = [segment]
        for i, value in enumerate(values):
            if value is None:
                segment = []
                segments.append(segment)
                continue
            segment.append(f"{_x(i, n):.1f},{_y(value):.1f}")
        for points in segments:
            if len(points) > 1:
                parts.append(
                    f'<polyline fill="none" stroke="{colour}" stroke-width="{width}" '
                    f'stroke-dasharray="{dash}" points="{" ".join(points)}"/>'
                )
        title = escape(visible(name))
        for i, value in enumerate(values):
            if value is not None:
                at = escape(visible(comparison.runs[i].label))
                parts.append(
                    f'<circle cx="{_x(i, n):.1f}" cy="{_y(value):.1f}" r="3" fill="{colour}">'
                    f"<title>{title} @ {at}: {value:.3f}</title></circle>"
                )
    parts.append("</svg>")
    return "".join(parts)


def _legend(comparison: Comparison) -> str:
    items = []
    for k, (name, _) in enumerate(_series(comparison)):
        colour = "#000" if k == 0 else _PALETTE[(k - 1) % len(_PALETTE)]
        items.append(
            f'<li><span style="color:{colour}" aria-hidden="true">&#9632;</span> '
            f"{escape(visible(name))}</li>"
        )
    return "<ul>" + "".join(items) + "</ul>"


def to_html(comparison: Comparison) -> str:
    runs = comparison.runs
    regressed = {(r.probe, r.run) for r in comparison.regressions}
    head = "".join(
        f"<th scope='col'>{escape(visible(r.label))}{' (baseline)' if i == 0 else ''}</th>"
        for i, r in enumerate(runs)
    )
    body = []
    for row in comparison.rows:
        cells = []
        for i, (run, cell) in enumerate(zip(runs, row.cells, strict=True)):
            cls = "gap" if cell is None else "reg" if (row.name, run.label) in regressed else ""
            mark = " (regression)" if cls == "reg" else ""
            cells.append(f"<td class='{cls}'>{escape(cell_text(cell, baseline=i == 0))}{mark}</td>")
        body.append(
            f"<tr><th scope='row'>{escape(visible(row.name))} ({escape(row.kind)})</th>"
            + "".join(cells)
            + "</tr>"
        )
    overall = "".join(f"<td>{r.overall:.2f} [{escape(r.band)}]</td>" for r in runs)
    body.append(f"<tr><th scope='row'>overall</th>{overall}</tr>")
    notes = "".join(f"<li>{escape(line.strip())}</li>" for line in summary_lines(comparison))
    title = f"sway compare — {len(runs)} runs"
    return (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        f"<title>{escape(title)}</title><style>{_STYLE}</style></head><body>"
        f"<h1>{escape(title)}</h1><h2>Score across runs</h2>{trajectory_svg(comparison)}"
        f"{_legend(comparison)}<h2>Probes</h2><table><thead><tr><th scope='col'>probe</th>"
        f"{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"
        f"<h2>Regressions</h2><ul>{notes}</ul></body></html>\n"
    )


__all__ = ["to_html", "trajectory_svg"]
