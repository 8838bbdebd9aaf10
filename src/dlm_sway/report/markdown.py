"""The markdown report: a run as a document for a pull request, a wiki or a CI summary.

Like every report it is a pure function of ``(SuiteResult, SwayScore)``, and it
reads nothing that :func:`~dlm_sway.report.json_report.from_json` does not
restore, so a saved run renders to the same text as the live one; verdict
columns come from typed fields (``null``, ``category``), and ``evidence`` only
feeds the per-probe detail tables. Numbers go
through the shared formatters (an em dash for anything unmeasured); text from
probes is made table-safe (pipes escaped, line breaks flattened) and code spans
are fenced with enough backticks to hold whatever they quote.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from dlm_sway.core.result import HealthCheck, ProbeResult, SuiteResult, SwayScore
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

PROBE_HEADERS = (
    "name",
    "kind",
    "verdict",
    "score",
    "raw",
    "effect ratio",
    "ci95",
    "z",
    "p (Holm)",
    "null",
    "time",
    "note",
)
_RIGHT_ALIGNED = frozenset(
    {"score", "raw", "effect ratio", "ci95", "z", "p (Holm)", "time", "weight"}
)
#: Keys of a ``per_section`` entry, in order of preference, for each column of the detail table.
SECTION_ID_KEYS = ("section_id", "id")
SECTION_TITLE_KEYS = ("title", "tag", "kind")
SECTION_VALUE_KEYS = ("internalization", "effective_sis", "value", "clean_recall", "score", "raw")
#: A detail table never runs longer than this; the rest is summarised in one line.
MAX_DETAIL_ROWS = 50


def to_markdown(suite: SuiteResult, score: SwayScore) -> str:
    """The whole report as GitHub-flavoured markdown, ending in one newline."""
    suite, score = visible_tree(suite), visible_tree(score)
    blocks: list[str] = [
        "# sway report",
        _summary(suite, score),
        "## Components\n\n" + _components(suite, score),
        "## Probes\n\n" + _probes(suite),
    ]
    for block in (
        _findings(score),
        _health(suite.health),
        _uncalibrated(suite),
        _degenerate_nulls(suite),
        _details(suite),
    ):
        if block:
            blocks.append(block)
    return "\n\n".join(blocks) + "\n"


# --- text helpers ------------------------------------------------------------------------


def flatten(text: str) -> str:
    """One line: every run of line breaks (and the spaces around them) becomes one space."""
    return re.sub(r"\s*[\r\n]+\s*", " ", text).strip()


def cell(text: str) -> str:
    """Text that is safe inside a table cell: flattened, with pipes escaped."""
    return flatten(text).replace("|", "\\|")


def code(text: str) -> str:
    """An inline code span that holds ``text`` verbatim, whatever backticks it contains."""
    flat = flatten(text)
    if not flat:
        return DASH
    longest = max((len(run) for run in re.findall(r"`+", flat)), default=0)
    fence = "`" * (longest + 1)
    padded = f" {flat} " if flat.startswith("`") or flat.endswith("`") else flat
    return f"{fence}{padded}{fence}"


def table(
    headers: Sequence[str], rows: Iterable[Sequence[str]], *, numeric: Iterable[str] = ()
) -> str:
    """A GFM table; cells must already be made safe with :func:`cell` or :func:`code`.

    Number columns (the probe table's, plus any named in ``numeric``) are right-aligned.
    """
    right = _RIGHT_ALIGNED | set(numeric)
    align = ["---:" if h in right else "---" for h in headers]
    lines = [_row(headers), _row(align)]
    lines.extend(_row(row) for row in rows)
    return "\n".join(lines)


def _row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def _utc(moment: datetime) -> str:
    aware = moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
    return aware.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


# --- sections ----------------------------------------------------------------------------


def _summary(suite: SuiteResult, score: SwayScore) -> str:
    overall = f"{format_score(score.overall)} {code(score.band)}"
    if score.band_reason:
        overall += f" — {flatten(score.band_reason)}"
    items = [
        ("Overall", overall),
        ("Base", code(suite.base_model_id or "(unknown base)")),
        ("Adapter", code(adapter_label(suite.adapter_id))),
        ("Wall", f"{format_duration(suite.wall_seconds)} (started {_utc(suite.started_at)})"),
    ]
    if suite.determinism is not None:
        det = suite.determinism
        text = f"{cell(det.class_)} (seed={det.seed})"
        if det.notes:
            text += " — " + cell("; ".join(det.notes))
        items.append(("Determinism", text))
    floor = noise_floor_line(suite.noise_floor).removeprefix("noise floor: ")
    if floor:
        items.append(("Noise floor", floor))
    backend = backend_line(suite.backend_stats)
    if backend:
        items.append(("Backend", backend))
    provenance = f"sway {cell(suite.sway_version or '?')}"
    if suite.spec_path:
        provenance += f", spec {code(suite.spec_path)}"
    items.append(("Version", provenance))
    return "\n".join(f"- **{label}:** {value}" for label, value in items)


def _components(suite: SuiteResult, score: SwayScore) -> str:
    present = set(score.weights) | set(score.components)
    categories = [c for c in CATEGORIES if c in present] + sorted(present - set(CATEGORIES))
    if not categories:
        return "_no categories were scored_"
    scored = scored_categories(suite)
    rows = []
    for category in categories:
        weight = score.weights.get(category)
        value = score.components.get(category)
        has_probes = category in scored and value is not None
        notes = []
        if weight is None:
            notes.append("not weighted")
        elif weight == 0:
            notes.append("informational")
        if not has_probes:
            notes.append("no scored probes")
        rows.append(
            [
                cell(category),
                format_score(value if has_probes else None),
                DASH if weight is None or not math.isfinite(weight) else f"{weight:g}",
                ", ".join(notes),
            ]
        )
    return table(("category", "score", "weight", "note"), rows)


def _probes(suite: SuiteResult) -> str:
    if not suite.probes:
        return "_this run has no probe results_"
    return table(PROBE_HEADERS, (_probe_row(result) for result in suite.probes))


def _probe_row(result: ProbeResult) -> list[str]:
    return [
        cell(result.name),
        code(result.kind),
        f"**{result.verdict.value.upper()}**",
        format_score(result.score),
        format_raw(result.raw),
        format_ratio(result.effect_ratio),
        format_ci(result.ci_95),
        format_z(result.z_score),
        format_p_holm(result.p_value, result.p_adjusted),
        null_marker(result.null),
        format_duration(result.duration_s),
        cell(probe_note(result)),
    ]


def _findings(score: SwayScore) -> str:
    if not score.findings:
        return ""
    items = "\n".join(f"{i}. {flatten(f)}" for i, f in enumerate(score.findings, start=1))
    return f"## Top findings\n\n{items}"


def _health(checks: tuple[HealthCheck, ...]) -> str:
    if not checks:
        return ""
    lines = []
    for check in checks:
        line = f"- **{flatten(check.level or 'info')}**"
        if check.code:
            line += f" {code(check.code)}"
        line += f": {flatten(check.message)}"
        if check.fix:
            line += f" — {flatten(check.fix)}"
        lines.append(line)
    return "## Health checks\n\n" + "\n".join(lines)


def _uncalibrated(suite: SuiteResult) -> str:
    entries = collect_uncalibrated(suite)
    if not entries:
        return ""
    lines = [
        f"- {flatten(label)}: {flatten(reason)}" if reason else f"- {flatten(label)}"
        for label, reason in entries
    ]
    return (
        "## Not null-calibrated\n\n"
        "These entries were judged on fixed thresholds only (no z-score, no p-value):\n\n"
        + "\n".join(lines)
    )


def _degenerate_nulls(suite: SuiteResult) -> str:
    entries = collect_degenerate_nulls(suite)
    if not entries:
        return ""
    lines = [f"- {flatten(name)}: {flatten(why)}" for name, why in entries]
    return (
        "## Unusable null distributions\n\n"
        "The null adapters could not judge these entries, so fixed thresholds did:\n\n"
        + "\n".join(lines)
    )


# --- per-probe detail --------------------------------------------------------------------


def _details(suite: SuiteResult) -> str:
    parts = []
    for result in suite.probes:
        tables = [t for t in _detail_tables(result.evidence) if t]
        if tables:
            heading = f"### {flatten(result.name)} ({code(result.kind)})"
            parts.append("\n\n".join([heading, *tables]))
    return "## Details\n\n" + "\n\n".join(parts) if parts else ""


def _detail_tables(evidence: Mapping[str, Any]) -> list[str]:
    return [
        _section_table(evidence.get("per_section")),
        _lambda_table(evidence.get("lambdas"), evidence.get("mean_divergence_per_lambda")),
        _cluster_table(evidence),
    ]


def _first(entry: Mapping[str, Any], keys: Sequence[str]) -> tuple[str, Any]:
    for key in keys:
        value = entry.get(key)
        if value is not None and value != "":
            return key, value
    return "", None


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        return float(value)
    except OverflowError:  # an int beyond any float, from a hand-edited file
        return None


def _passed(value: object) -> str:
    if value is True:
        return "yes"
    if value is False:
        return "**no**"
    return DASH


def _capped(
    rows: list[list[str]], headers: Sequence[str], what: str, numeric: Sequence[str]
) -> str:
    text = table(headers, rows[:MAX_DETAIL_ROWS], numeric=numeric)
    if len(rows) > MAX_DETAIL_ROWS:
        text += f"\n\n_… and {len(rows) - MAX_DETAIL_ROWS} more {what}_"
    return text


def _section_table(per_section: object) -> str:
    """``per_section`` (section_internalization, leakage…): id, title, value, passed."""
    if not isinstance(per_section, list | tuple):
        return ""
    entries = [entry for entry in per_section if isinstance(entry, Mapping)]
    if not entries:
        return ""
    value_key = next(
        (key for key in SECTION_VALUE_KEYS if any(key in entry for entry in entries)), ""
    )
    rows = []
    for entry in entries:
        _, section_id = _first(entry, SECTION_ID_KEYS)
        _, title = _first(entry, SECTION_TITLE_KEYS)
        rows.append(
            [
                DASH if section_id is None else code(str(section_id)),
                DASH if title is None else cell(str(title)),
                format_raw(_number(entry.get(value_key))),
                _passed(entry.get("passed")),
            ]
        )
    value_header = value_key.replace("_", " ") if value_key else "value"
    headers = ("section", "title", value_header, "passed")
    caption = f"Per section ({len(entries)}):"
    return f"{caption}\n\n{_capped(rows, headers, 'sections', (value_header,))}"


def _lambda_table(lambdas: object, curve: object) -> str:
    """``mean_divergence_per_lambda`` (adapter_ablation): the response curve, one row per λ."""
    if not isinstance(curve, list | tuple) or not curve:
        return ""
    lams: list[Any] = list(lambdas) if isinstance(lambdas, list | tuple) else []
    if len(lams) != len(curve):
        lams = [None] * len(curve)
    rows = []
    for lam, value in zip(lams, curve, strict=True):
        number = _number(lam)
        rows.append([DASH if number is None else f"{number:g}", format_raw(_number(value))])
    return "Mean divergence per λ:\n\n" + table(
        ("λ", "mean divergence"), rows, numeric=("λ", "mean divergence")
    )


def _cluster_table(evidence: Mapping[str, Any]) -> str:
    """``per_cluster_mean`` (cluster_kl): size, mean divergence and exemplars per cluster."""
    means = evidence.get("per_cluster_mean", evidence.get("per_cluster_mean_kl"))
    if isinstance(means, list | tuple):
        keyed: dict[str, Any] = {str(i): value for i, value in enumerate(means)}
    elif isinstance(means, Mapping):
        keyed = {str(key): value for key, value in means.items()}
    else:
        return ""
    if not keyed:
        return ""
    sizes = _by_cluster(evidence.get("per_cluster_size"))
    exemplars = _by_cluster(evidence.get("cluster_exemplars"))
    rows = []
    for key in sorted(keyed, key=_cluster_order):
        size = _number(sizes.get(key))
        examples = exemplars.get(key)
        shown = (
            "; ".join(cell(str(e)) for e in examples)
            if isinstance(examples, list | tuple)
            else DASH
        )
        rows.append(
            [
                cell(key),
                DASH if size is None else f"{size:,.0f}",
                format_raw(_number(keyed[key])),
                shown or DASH,
            ]
        )
    return "Per cluster:\n\n" + _capped(
        rows,
        ("cluster", "size", "mean divergence", "exemplars"),
        "clusters",
        ("size", "mean divergence"),
    )


def _by_cluster(value: object) -> dict[str, Any]:
    if isinstance(value, list | tuple):
        return {str(i): item for i, item in enumerate(value)}
    if isinstance(value, Mapping):
        return {str(key): item for key, item in value.items()}
    return {}


def _cluster_order(key: str) -> tuple[int, float, str]:
    try:
        return (0, float(key), key)
    except (ValueError, OverflowError):
        return (1, 0.0, key)


__all__ = ["PROBE_HEADERS", "cell", "code", "flatten", "table", "to_markdown"]
