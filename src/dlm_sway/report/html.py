"""The HTML report: one self-contained, offline page for a run (or several, for the demo).

A pure function of saved runs, like every report: ``sway report run.json --format
html`` draws exactly what the live run would. The page loads nothing: CSS and a few
lines of keyboard script are inlined, charts are SVG drawn here in Python, and no
font, image or script is fetched (a browser test asserts it). Text from results is
escaped by the template engine (autoescape) and shown with control characters
made visible (:func:`~dlm_sway.report.format.visible_tree`).

Verdict panels read typed fields (``null``, ``tokens``, ``generations``); the
per-section bars, the λ curve and the worst forgetting items come from
``evidence`` for display only, read defensively because a saved file may hold
anything there.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from importlib.resources import files
from typing import Any

from dlm_sway.core.gate import GateDecision
from dlm_sway.core.result import (
    Direction,
    NullSummary,
    ProbeResult,
    SuiteResult,
    SwayScore,
    Verdict,
)
from dlm_sway.report import html_charts as charts
from dlm_sway.report import html_tokens
from dlm_sway.report.format import (
    DASH,
    adapter_label,
    format_duration,
    format_p_holm,
    format_ratio,
    format_raw,
    format_score,
    format_z,
    noise_floor_line,
    null_marker,
    visible_tree,
)

ASSETS = "html_assets"
MAX_ROWS = 40


@dataclass(frozen=True, slots=True)
class HtmlRun:
    """One run to draw: a label (the demo's adapter name; empty for a single run)."""

    label: str
    suite: SuiteResult
    score: SwayScore
    gate: GateDecision | None = None


def to_html(suite: SuiteResult, score: SwayScore, *, gate: GateDecision | None = None) -> str:
    """The report of one run as a self-contained HTML page."""
    return to_html_runs([HtmlRun("", suite, score, gate)])


def to_html_runs(runs: Sequence[HtmlRun], *, title: str = "sway report") -> str:
    """Several runs (e.g. the demo's adapters) on one page, one section each."""
    views = [_run_view(i, visible_tree(run)) for i, run in enumerate(runs)]
    page: str = _template().render(
        title=title,
        runs=views,
        css=_asset("report.css"),
        js=_asset("report.js"),
    )
    return page


@cache
def _asset(name: str) -> str:
    return files("dlm_sway.report").joinpath(ASSETS, name).read_text(encoding="utf-8")


@cache
def _template() -> Any:
    import jinja2

    env = jinja2.Environment(autoescape=True, trim_blocks=True, lstrip_blocks=True)
    env.filters["fmt_raw"] = format_raw
    return env.from_string(_asset("report.html.j2"))


# --- view model ------------------------------------------------------------------------


def _run_view(index: int, run: HtmlRun) -> dict[str, Any]:
    suite, score = run.suite, run.score
    prefix = f"r{index}-"
    traces, most_moved = html_tokens.build(suite.probes, prefix)
    counts = {v.value: sum(1 for p in suite.probes if p.verdict is v) for v in Verdict}
    return {
        "label": run.label,
        "id": prefix.rstrip("-"),
        "header": _header(suite, score, run.gate),
        "counts": counts,
        "probes": [_probe_row(p, prefix) for p in suite.probes],
        "nulls": [_null_panel(p, prefix) for p in suite.probes if _has_null(p)],
        "ablations": [a for a in (_ablation(p) for p in suite.probes) if a is not None],
        "sections": [s for s in (_sections(p) for p in suite.probes) if s is not None],
        "forgetting": [f for f in (_forgetting(p) for p in suite.probes) if f is not None],
        "generations": [(p.name, p.generations[:MAX_ROWS]) for p in suite.probes if p.generations],
        "traces": traces,
        "most_moved": most_moved,
        "health": suite.health,
        "findings": score.findings,
        "noise_floor": noise_floor_line(suite.noise_floor),
    }


def _header(suite: SuiteResult, score: SwayScore, gate: GateDecision | None) -> dict[str, Any]:
    identity = suite.backend_stats.get("identity")
    return {
        "base": suite.base_model_id or DASH,
        "adapter": adapter_label(suite.adapter_id),
        "adapter_path": suite.adapter_id,
        "identity": identity if isinstance(identity, str) else "",
        "version": suite.sway_version or DASH,
        "started": suite.started_at.isoformat(timespec="seconds"),
        "wall": format_duration(suite.wall_seconds),
        "nulls": _null_setup(suite),
        "overall": format_score(score.overall),
        "band": score.band,
        "band_reason": score.band_reason,
        "seed": None if suite.determinism is None else suite.determinism.seed,
        "gate": _gate(gate),
    }


def _null_setup(suite: SuiteResult) -> str:
    """``norm_matched × 10 (t_prediction)`` from the null step, or the first null summary."""
    for p in suite.probes:
        if p.calibration is not None and p.calibration.stats:
            stats = next(iter(p.calibration.stats.values()))
            cached = ", from cache" if p.calibration.from_cache else ""
            return f"{stats.construction} × {stats.n} ({stats.method}{cached})"
    for p in suite.probes:
        if p.null is not None:
            return f"{p.null.construction} × {p.null.k} ({p.null.method})"
    return "no null adapters (fixed thresholds)"


def _gate(gate: GateDecision | None) -> dict[str, Any] | None:
    if gate is None:
        return None
    outcome = "passed" if gate.passed else "not judged" if gate.exit_code == 2 else "FAILED"
    return {
        "outcome": outcome,
        "exit": gate.exit_code,
        "threshold": f"{gate.threshold:g}",
        "reasons": [r.message for r in gate.reasons],
    }


def _probe_row(p: ProbeResult, prefix: str) -> dict[str, Any]:
    return {
        "name": p.name,
        "kind": p.kind,
        "verdict": p.verdict.value,
        "headline": p.headline or p.verdict.value,
        "raw": format_raw(p.raw),
        "z": format_z(p.z_score),
        "p": format_p_holm(p.p_value, p.p_adjusted),
        "ratio": format_ratio(p.effect_ratio),
        "score": format_score(p.score),
        "null": null_marker(p.null),
        "category": p.category or DASH,
        "harm": p.direction is Direction.HARM,
        "message": p.message,
        "anchor": f"{prefix}null-{p.name}" if _has_null(p) else "",
    }


def _has_null(p: ProbeResult) -> bool:
    return p.null is not None and bool(p.null.samples)


def verdict_bar(null: NullSummary, raw: float | None) -> float | None:
    """The raw value where the verdict's z bar lies, on the metric's own scale.

    Inverts the calibration: with K nulls of mean m and SD s on the compared scale
    (log for log-scale metrics), the t-prediction bar is m ± t·s·√(1+1/K) with t the
    K−1-dof quantile of the bar's p; the reference method uses m ± z·s. The side is
    the one the probe's claim points to (read from the sign of its statistic).
    """
    from dlm_sway.core.calibration import LOG_FLOOR, prediction_threshold
    from dlm_sway.core.multiplicity import p_from_z

    if null.degenerate or not math.isfinite(null.z_threshold):
        return None
    xs = [v for v in null.samples if math.isfinite(v)]
    if null.log_scale:
        xs = [math.log(max(v, LOG_FLOOR)) for v in xs]
    k = len(xs)
    if k < 2:
        return None
    m = sum(xs) / k
    reference = null.method == "reference_z"
    sd = math.sqrt(sum((x - m) ** 2 for x in xs) / (k if reference else k - 1))
    if not sd > 0:
        return None
    p_bar = p_from_z(null.z_threshold)
    if not 0.0 < p_bar < 1.0:
        return None
    dist = null.z_threshold * sd if reference else prediction_threshold(k, p_bar) * sd
    sign = 1.0
    if raw is not None and math.isfinite(raw) and null.statistic:
        x = math.log(max(raw, LOG_FLOOR)) if null.log_scale else raw
        if x != m and (x - m) * null.statistic < 0:
            sign = -1.0
    bar = m + sign * dist
    if null.log_scale:
        return math.exp(bar) if bar < 700 else None
    return bar


def _null_panel(p: ProbeResult, prefix: str) -> dict[str, Any]:
    assert p.null is not None
    null = p.null
    bar = verdict_bar(null, p.raw)
    claim = "harm bar" if p.direction is Direction.HARM else "bar"
    bar_label = f"{claim} z ≥ {null.z_threshold:g}"
    samples = [s for s in null.samples if math.isfinite(s)]
    median = null.median
    return {
        "name": p.name,
        "kind": p.kind,
        "anchor": f"{prefix}null-{p.name}",
        "verdict": p.verdict.value,
        "headline": p.headline or p.verdict.value,
        "measured": p.measured,
        "chart": charts.null_strip(
            samples=samples,
            value=p.raw,
            bar=bar,
            log=null.log_scale and all(s > 0 for s in samples),
            verdict=p.verdict.value,
            bar_label=bar_label,
        ),
        "value": format_raw(p.raw),
        "samples": ", ".join(charts.num(s) for s in samples),
        "k": null.k,
        "median": DASH if median is None else format_raw(median),
        "construction": null.construction,
        "method": null.method,
        "bar": f"{bar_label} → {charts.num(bar)}" if bar is not None else f"{bar_label}",
        "z": format_z(p.z_score),
        "p": format_p_holm(p.p_value, p.p_adjusted),
        "degenerate": null.degenerate or "",
        "log": null.log_scale,
    }


# --- evidence-fed panels (display only) --------------------------------------------------


def _number(value: object) -> float | None:
    if value is None or isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if math.isfinite(number) else None


def _ablation(p: ProbeResult) -> dict[str, Any] | None:
    ev = p.evidence
    lams, curve = ev.get("lambdas"), ev.get("mean_divergence_per_lambda")
    if not isinstance(lams, list | tuple) or not isinstance(curve, list | tuple):
        return None
    pts = [(_number(x), _number(y)) for x, y in zip(lams, curve, strict=False)]
    good = [(x, y) for x, y in pts if x is not None and y is not None]
    if len(good) < 2:
        return None
    sat = _number(ev.get("saturation_lambda"))
    return {
        "name": p.name,
        "chart": charts.line_chart(
            [x for x, _ in good],
            [y for _, y in good],
            x_label="λ (adapter scale)",
            y_label="mean divergence from base",
            marker=sat,
            marker_label="saturation λ",
        ),
        "rows": [(f"{x:g}", format_raw(y)) for x, y in good],
        "saturation": DASH if sat is None else f"{sat:g}",
        "linearity": format_raw(_number(ev.get("linearity"))),
    }


def _sections(p: ProbeResult) -> dict[str, Any] | None:
    per = p.evidence.get("per_section")
    if not isinstance(per, list | tuple):
        return None
    entries = [e for e in per if isinstance(e, Mapping)][:MAX_ROWS]
    if not entries:
        return None
    key = next((k for k in ("internalization", "effective_sis", "own_lift") if k in entries[0]), "")
    rows = []
    for e in entries:
        sid, title = e.get("section_id"), e.get("title")
        label = title if isinstance(title, str) and title else str(sid) if sid is not None else DASH
        passed = e.get("passed")
        rows.append((label, _number(e.get(key)), passed if isinstance(passed, bool) else None))
    threshold = _number(p.evidence.get("per_section_threshold"))
    return {
        "name": p.name,
        "what": key.replace("_", " ") or "value",
        "chart": charts.hbars(rows, threshold=threshold, what=key.replace("_", " ")),
        "rows": [(label, format_raw(v), ok) for label, v, ok in rows],
    }


def _forgetting(p: ProbeResult) -> dict[str, Any] | None:
    if p.direction is not Direction.HARM:
        return None
    worst = p.evidence.get("worst_items")
    rows = []
    if isinstance(worst, list | tuple):
        for item in worst[:MAX_ROWS]:
            if isinstance(item, Mapping):
                rows.append(
                    {
                        "id": str(item.get("id", DASH)),
                        "prompt": str(item.get("prompt", "")),
                        "gold": str(item.get("gold", "")),
                        "delta": format_raw(_number(item.get("delta"))),
                    }
                )
    return {
        "name": p.name,
        "verdict": p.verdict.value,
        "headline": p.headline,
        "measured": p.measured,
        "rows": rows,
        # Only an item-level probe can say "no item regressed"; a chunk-level or
        # weight-level one (external_perplexity, gradient_ghost) has no items.
        "itemized": isinstance(worst, list | tuple),
    }


__all__ = ["HtmlRun", "to_html", "to_html_runs", "verdict_bar"]
