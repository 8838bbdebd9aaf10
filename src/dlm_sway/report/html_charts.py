"""Inline SVG charts for the HTML report, drawn in Python (no plotting bundle, no network).

Each chart is a small ``<svg role="img">`` with a ``<title>`` saying in words what
it shows, and a ``<title>`` on every mark, so the numbers are there without colour
and without hovering. Every string that reaches the SVG is escaped here.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from markupsafe import Markup, escape

WIDTH = 640
LOG_FLOOR = 1e-12


def num(value: float) -> str:
    """A compact number for labels: 3 significant digits, scientific when tiny/huge."""
    if value == 0:
        return "0"
    if abs(value) < 1e-3 or abs(value) >= 1e5:
        return f"{value:.2e}"
    return f"{value:.3g}"


@dataclass(frozen=True, slots=True)
class Scale:
    """Maps data values to pixels on [lo_px, hi_px], linear or log10."""

    lo: float
    hi: float
    lo_px: float
    hi_px: float
    log: bool = False

    def _t(self, v: float) -> float:
        return math.log10(max(v, LOG_FLOOR)) if self.log else v

    def __call__(self, v: float) -> float:
        a, b = self._t(self.lo), self._t(self.hi)
        frac = 0.5 if b == a else (self._t(v) - a) / (b - a)
        return round(self.lo_px + frac * (self.hi_px - self.lo_px), 1)

    def ticks(self, n: int = 5) -> list[float]:
        if self.log:
            a, b = math.floor(math.log10(max(self.lo, LOG_FLOOR))), math.ceil(math.log10(self.hi))
            step = max(1, math.ceil((b - a) / n))
            mults = (1.0, 2.0, 5.0) if b - a <= 2 else (1.0,)
            marks = [m * 10.0**e for e in range(a, b + 1, step) for m in mults]
            return [v for v in marks if self.lo <= v <= self.hi]
        span = self.hi - self.lo
        if span <= 0:
            return [self.lo]
        raw = span / n
        mag = 10 ** math.floor(math.log10(raw))
        step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
        first = math.ceil(self.lo / step) * step
        return [first + i * step for i in range(int((self.hi - first) / step + 1e-9) + 1)]


def domain(
    values: Sequence[float], *, log: bool, include_zero: bool = False
) -> tuple[float, float]:
    """A padded [lo, hi] holding every value (positive values only on a log axis)."""
    vs = [v for v in values if math.isfinite(v) and (v > 0 or not log)]
    if include_zero and not log:
        vs.append(0.0)
    if not vs:
        return (1e-3, 1.0) if log else (0.0, 1.0)
    lo, hi = min(vs), max(vs)
    if log:
        lo, hi = max(lo, LOG_FLOOR), max(hi, LOG_FLOOR)
        if hi / lo < 10:
            mid = math.sqrt(hi * lo)
            lo, hi = mid / 3.3, mid * 3.3
        return lo / 1.5, hi * 1.5
    if hi == lo:
        pad = abs(hi) * 0.1 or 1.0
        return lo - pad, hi + pad
    pad = (hi - lo) * 0.08
    return lo - pad, hi + pad


def _svg(height: int, title: str, body: list[str], *, width: int = WIDTH) -> Markup:
    head = (
        f'<svg class="chart" viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
        f'role="img" xmlns="http://www.w3.org/2000/svg"><title>{escape(title)}</title>'
    )
    return Markup(head + "".join(body) + "</svg>")


def _axis(scale: Scale, y: float, *, fmt: str = "") -> list[str]:
    out = [f'<line class="axis" x1="{scale.lo_px}" x2="{scale.hi_px}" y1="{y}" y2="{y}"/>']
    for t in scale.ticks():
        x = scale(t)
        label = f"{t:g}" if fmt == "g" else num(t)
        out.append(f'<line class="tick" x1="{x}" x2="{x}" y1="{y}" y2="{y + 4}"/>')
        out.append(f'<text class="tl" x="{x}" y="{y + 15}" text-anchor="middle">{label}</text>')
    return out


def null_strip(
    *,
    samples: Sequence[float],
    value: float | None,
    bar: float | None,
    log: bool,
    verdict: str,
    bar_label: str,
    unit: str = "",
) -> Markup:
    """The adapter's value (a diamond) against every null value (a dot each), with the
    verdict's bar (a dashed line) where it can be placed on the metric's own scale."""
    finite = [s for s in samples if math.isfinite(s)]
    marks = [*finite, *(v for v in (value, bar) if v is not None)]
    lo, hi = domain(marks, log=log)
    sc = Scale(lo, hi, 24, WIDTH - 24, log)
    body: list[str] = []
    if bar is not None and math.isfinite(bar):
        x = sc(bar)
        body.append(
            f'<line class="bar" x1="{x}" x2="{x}" y1="8" y2="56"><title>'
            f"{escape(bar_label)}: {escape(num(bar))}</title></line>"
        )
        body.append(f'<text class="tl" x="{x}" y="8" text-anchor="middle">bar</text>')
    for i, s in enumerate(finite):
        y = 34 + ((i * 7) % 17) - 8  # deterministic vertical jitter: coinciding nulls stay visible
        body.append(
            f'<circle class="null" cx="{sc(s)}" cy="{y}" r="4"><title>null {i + 1}: '
            f"{escape(num(s))}</title></circle>"
        )
    if value is not None and math.isfinite(value):
        x = sc(value)
        body.append(
            f'<path class="adapter v-{escape(verdict)}" d="M{x} 20 L{x + 8} 34 L{x} 48 '
            f'L{x - 8} 34 Z"><title>adapter: {escape(num(value))}</title></path>'
        )
    body += _axis(sc, 62)
    what = f"adapter {num(value)}" if value is not None else "adapter not measured"
    title = f"{what} against {len(finite)} null adapter values{' (log scale)' if log else ''}"
    if unit:
        title += f", {unit}"
    return _svg(82, title, body)


def line_chart(
    xs: Sequence[float],
    ys: Sequence[float],
    *,
    x_label: str,
    y_label: str,
    marker: float | None = None,
    marker_label: str = "",
) -> Markup:
    """A response curve (points joined by a line), with an optional dashed x marker."""
    pts = [(x, y) for x, y in zip(xs, ys, strict=True) if math.isfinite(x) and math.isfinite(y)]
    xlo, xhi = domain([p[0] for p in pts], log=False)
    ylo, yhi = domain([p[1] for p in pts], log=False, include_zero=True)
    sx = Scale(xlo, xhi, 56, WIDTH - 16)
    sy = Scale(ylo, yhi, 170, 12)
    body = ['<line class="axis" x1="56" x2="56" y1="12" y2="170"/>']
    for t in sy.ticks(4):
        y = sy(t)
        body.append(f'<line class="grid" x1="56" x2="{WIDTH - 16}" y1="{y}" y2="{y}"/>')
        body.append(f'<text class="tl" x="50" y="{y + 4}" text-anchor="end">{num(t)}</text>')
    if marker is not None and math.isfinite(marker) and xlo <= marker <= xhi:
        x = sx(marker)
        body.append(
            f'<line class="bar" x1="{x}" x2="{x}" y1="12" y2="170"><title>'
            f"{escape(marker_label)}: {escape(num(marker))}</title></line>"
        )
    if pts:
        path = " ".join(f"{sx(x)},{sy(y)}" for x, y in pts)
        body.append(f'<polyline class="curve" points="{path}"/>')
    for x, y in pts:
        body.append(
            f'<circle class="pt" cx="{sx(x)}" cy="{sy(y)}" r="4"><title>'
            f"{escape(x_label)} {x:g}: {escape(num(y))}</title></circle>"
        )
    body += _axis(sx, 170, fmt="g")
    body.append(
        f'<text class="al" x="{(56 + WIDTH - 16) / 2}" y="198" text-anchor="middle">'
        f"{escape(x_label)}</text>"
    )
    title = f"{y_label} against {x_label} at {len(pts)} points"
    return _svg(204, title, body)


def hbars(
    rows: Sequence[tuple[str, float | None, bool | None]],
    *,
    threshold: float | None,
    what: str,
) -> Markup:
    """One horizontal bar per (label, value, passed) from a zero line; a dashed threshold."""
    values = [v for _, v, _ in rows if v is not None and math.isfinite(v)]
    extra = [threshold] if threshold is not None and math.isfinite(threshold) else []
    lo, hi = domain([*values, *extra], log=False, include_zero=True)
    label_w = 200
    sc = Scale(lo, hi, label_w + 8, WIDTH - 60)
    row_h = 22
    height = 24 + row_h * len(rows) + 20
    zero = sc(0.0)
    body: list[str] = []
    for i, (label, value, passed) in enumerate(rows):
        y = 20 + i * row_h
        short = label if len(label) <= 28 else label[:27] + "…"
        body.append(
            f'<text class="rl" x="{label_w}" y="{y + 14}" text-anchor="end">{escape(short)}</text>'
        )
        if value is None or not math.isfinite(value):
            body.append(f'<text class="tl" x="{zero + 4}" y="{y + 14}">not measured</text>')
            continue
        x = sc(value)
        left, w = min(x, zero), max(abs(x - zero), 1.0)
        cls = "pass" if passed else "fail" if passed is False else "neutral"
        body.append(
            f'<rect class="hb {cls}" x="{round(left, 1)}" y="{y + 3}" width="{round(w, 1)}" '
            f'height="{row_h - 6}"><title>{escape(label)}: {escape(num(value))}'
            f"{'' if passed is None else ' (passed)' if passed else ' (not passed)'}"
            "</title></rect>"
        )
        body.append(
            f'<text class="tl" x="{max(x, zero) + 4}" y="{y + 14}">{escape(num(value))}</text>'
        )
    bottom = 20 + row_h * len(rows)
    body.append(f'<line class="axis" x1="{zero}" x2="{zero}" y1="16" y2="{bottom}"/>')
    if extra:
        x = sc(extra[0])
        body.append(
            f'<line class="bar" x1="{x}" x2="{x}" y1="12" y2="{bottom}"><title>threshold '
            f"{escape(num(extra[0]))}</title></line>"
        )
        body.append(f'<text class="tl" x="{x}" y="10" text-anchor="middle">threshold</text>')
    body += _axis(sc, bottom + 2)
    return _svg(height, f"{what}: one bar per row, {len(rows)} rows", body)


__all__ = ["Scale", "domain", "hbars", "line_chart", "null_strip", "num"]
