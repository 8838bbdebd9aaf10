"""Number formatting and footer helpers shared by every report format.

One rule runs through all of them: a value that is missing (None) or not
finite renders as an em dash. A report must never print ``0.00`` for a number
that was never measured, nor leak ``nan``/``inf`` into a table.

Every helper reads a result's typed fields (``category``, ``null``,
``calibration``), never its ``evidence`` and never the probe registry, so a
saved run renders the same wherever it is re-read. z and p are printed exactly
as :mod:`dlm_sway.core.judge` writes them into messages: a table and the
message beside it can never disagree.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping
from datetime import datetime
from enum import Enum
from typing import Any, TypeVar, cast

from dlm_sway.core.judge import format_p as judge_p
from dlm_sway.core.result import NullSummary, ProbeResult, SuiteResult, Verdict

_T = TypeVar("_T")
DASH = "—"
#: The category of a result nobody stamped one on (built outside the runner).
FALLBACK_CATEGORY = "adherence"


def result_category(result: ProbeResult) -> str:
    """The category a result scores under: the one the runner stamped on it."""
    return result.category or FALLBACK_CATEGORY


def is_scored(result: ProbeResult) -> bool:
    """Whether a result enters the composite: not SKIP/ERROR and a finite score."""
    if result.verdict in (Verdict.SKIP, Verdict.ERROR) or result.score is None:
        return False
    return math.isfinite(float(result.score))


def scored_categories(suite: SuiteResult) -> set[str]:
    """Categories with at least one result that entered the composite."""
    return {result_category(result) for result in suite.probes if is_scored(result)}


def _number(value: object) -> float | None:
    """``value`` as a finite float, or None when it is missing, not numeric or not finite
    (an int too large for a float, as a hand-edited run file may hold, is not finite)."""
    if value is None or isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if math.isfinite(number) else None


#: Characters a terminal or markdown viewer would act on instead of showing: C0/C1 controls
#: (ESC starts ANSI sequences), DEL, and the Unicode bidi overrides/isolates. Tab and newline
#: are layout, not commands, and stay; a carriage return becomes a newline.
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def visible(text: str) -> str:
    """``text`` with every control character shown as its escape (``\\x1b``), so a string
    from a result (a prompt echoed in a message, a hand-edited run file) cannot drive the
    terminal — clear it, recolour it, reorder it."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")  # a line break, never an overwrite
    return _CONTROL.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), text)


def visible_tree(value: _T) -> _T:
    """A copy of ``value`` (a result, a score, a gate decision, or any dataclass/dict/list/
    tuple of them) with :func:`visible` applied to every plain string in it, keys included.

    The renderers call it once on what they are given, so no call site can forget it.
    """
    return cast("_T", _visible_any(value))


def _visible_any(value: object) -> object:
    if type(value) is str:
        return visible(value)
    if isinstance(value, str | Enum | int | float | datetime) or value is None:
        return value
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        changes = {
            f.name: _visible_any(getattr(value, f.name))
            for f in dataclasses.fields(value)
            if f.init
        }
        return dataclasses.replace(value, **changes)
    if isinstance(value, Mapping):
        return {_visible_any(k): _visible_any(v) for k, v in value.items()}
    if isinstance(value, list | tuple | frozenset | set):
        return type(value)(_visible_any(item) for item in value)
    return value


def format_score(value: float | None) -> str:
    """A [0, 1] score: two decimals."""
    number = _number(value)
    return DASH if number is None else f"{number:.2f}"


def format_raw(value: float | None) -> str:
    """A probe's own metric: three decimals, grouped thousands, scientific when tiny."""
    number = _number(value)
    if number is None:
        return DASH
    if number != 0 and abs(number) < 1e-3:
        return f"{number:.2e}"
    return f"{number:,.3f}"


def format_z(value: float | None) -> str:
    """A z-score as the judge's messages write it: signed, two decimals, σ (``+9.41σ``)."""
    number = _number(value)
    return DASH if number is None else f"{number:+.2f}σ"


def format_p(value: float | None) -> str:
    """A p-value as the judge's messages write it: ``p=0.0022``, ``p=2e-05``."""
    number = _number(value)
    return DASH if number is None else f"p={judge_p(number)}"


def format_p_holm(p_value: float | None, p_adjusted: float | None) -> str:
    """``p=0.0022 (Holm 0.0066)``; just the p when there is no Holm-adjusted value."""
    raw = format_p(p_value)
    adjusted = format_p(p_adjusted)
    if adjusted == DASH:
        return raw
    return f"{raw} (Holm {adjusted.removeprefix('p=')})"


NULL_CONSTRUCTIONS: Mapping[str, str] = {
    "norm_matched": "norm",
    "init_scale": "init",
    "permuted": "perm",
}
NULL_METHODS: Mapping[str, str] = {"t_prediction": "t", "reference_z": "ref"}
DEFAULT_NULL_METHOD = "t_prediction"


def null_marker(null: NullSummary | None) -> str:
    """``norm×10`` from ``result.null``; ``init×3 ref`` for the reference z; else a dash.

    The construction is shortened (norm | init | perm) and followed by the number of
    nulls K; the method is named only when it is not the default t prediction, and
    ``unusable`` marks a null whose spread could not judge (see the footer for why).
    """
    if null is None:
        return DASH
    construction = null.construction
    label = NULL_CONSTRUCTIONS.get(construction, construction[:4] or "null")
    if null.k > 0:
        label += f"×{null.k}"
    method = null.method or DEFAULT_NULL_METHOD
    if method != DEFAULT_NULL_METHOD:
        label += f" {NULL_METHODS.get(method, method)}"
    if null.degenerate:
        label += " unusable"
    return label


def format_js(value: float | None) -> str:
    """A Jensen–Shannon divergence (nats, ≤ ln 2): ``1.2e-12`` when tiny, else ``0.0123``."""
    number = _number(value)
    if number is None:
        return DASH
    if number == 0:
        return "0"
    if abs(number) < 1e-3:
        return f"{number:.1e}"
    return f"{number:.4f}"


def noise_floor_line(noise_floor: Mapping[str, Any]) -> str:
    """``noise floor: JS ≤ 1.2e-12 over 14 prompts``; empty when no finite ``js_max``."""
    js_max = _number(noise_floor.get("js_max"))
    if js_max is None:
        return ""
    line = f"noise floor: JS ≤ {format_js(js_max)}"
    dlogp = _number(noise_floor.get("logprob_max_abs_diff"))
    if dlogp is not None:
        line += f", |Δlog p| ≤ {dlogp:.1e}"
    prompts = _number(noise_floor.get("prompts"))
    if prompts is not None:
        line += f" over {prompts:,.0f} prompt{'' if prompts == 1 else 's'}"
    return line


def format_ratio(value: float | None) -> str:
    """An effect ratio (metric ÷ median null metric): ``×12.3``, ``×0.42``, ``×3.1e-04``."""
    number = _number(value)
    if number is None:
        return DASH
    if abs(number) >= 10:
        return f"×{number:,.1f}"
    if number != 0 and abs(number) < 0.01:
        return f"×{number:.1e}"
    return f"×{number:.2f}"


def format_ci(ci: tuple[float, float] | None) -> str:
    """A confidence interval ``[lo, hi]``, each bound formatted like a raw value."""
    if ci is None:
        return DASH
    lo, hi = (_number(bound) for bound in ci)
    if lo is None or hi is None:
        return DASH
    return f"[{format_raw(lo)}, {format_raw(hi)}]"


def format_duration(seconds: float | None) -> str:
    """``4.21s`` below 10 s, ``42.1s`` below 100 s, whole seconds (``1,234s``) above."""
    number = _number(seconds)
    if number is None:
        return DASH
    if round(number, 2) < 10:
        return f"{number:.2f}s"
    if round(number, 1) < 100:
        return f"{number:.1f}s"
    return f"{round(number):,}s"


def format_percent(fraction: float | None) -> str:
    """A fraction in [0, 1] as a whole percentage (``67%``)."""
    number = _number(fraction)
    return DASH if number is None else f"{number * 100:.0f}%"


def adapter_label(adapter_id: str) -> str:
    """The last three path segments of an adapter path, quoted if they contain spaces."""
    if not adapter_id.strip():
        return "(base only)"
    segments = [part for part in re.split(r"[\\/]+", adapter_id) if part]
    label = "/".join(segments[-3:]) if segments else adapter_id
    return f'"{label}"' if any(ch.isspace() for ch in label) else label


def rank_profile(null: NullSummary | None) -> str:
    """``+4.20σ @ 0.5x / +6.80σ @ 1x`` from ``null.z_by_rank``; empty below two ranks.

    Keys are rank multipliers (numbers or strings such as ``"1.0"``/``"rank_1.00"``).
    """
    by_rank = {} if null is None else null.z_by_rank
    if len(by_rank) < 2:
        return ""
    entries: list[tuple[float, str, str]] = []
    for key, z in by_rank.items():
        multiplier = _multiplier(key)
        label = str(key) if multiplier is None else f"{multiplier:g}x"
        order = math.inf if multiplier is None else multiplier
        entries.append((order, label, format_z(z)))
    entries.sort(key=lambda entry: (entry[0], entry[1]))
    return " / ".join(f"{z} @ {label}" for _, label, z in entries)


def _multiplier(key: object) -> float | None:
    if isinstance(key, int | float) and not isinstance(key, bool):
        return float(key)
    match = re.search(r"\d+(?:\.\d+)?", str(key))
    return float(match.group()) if match else None


def probe_note(result: ProbeResult) -> str:
    """A probe's message as it carries it, with its rank profile appended when it has one."""
    message = result.message
    profile = rank_profile(result.null)
    if not profile:
        return message
    return f"{message} | rank profile: {profile}" if message else f"rank profile: {profile}"


_JUDGED = (Verdict.PASS, Verdict.FAIL, Verdict.WARN)


def collect_uncalibrated(suite: SuiteResult) -> list[tuple[str, str]]:
    """(label, reason) for each judged entry that got no null although the suite draws them.

    Read from typed fields only: a result carrying ``calibration`` is the suite's
    null step, and a later judged result without ``null`` was judged on fixed
    thresholds. The reason is the one the null step recorded in
    ``calibration.failures`` (empty when the entry opted out; its message says why).
    Empty when the suite has no null step: then every message says so itself.
    """
    steps = [result for result in suite.probes if result.calibration is not None]
    if not steps:
        return []
    failures: dict[str, str] = {}
    for step in steps:
        assert step.calibration is not None
        failures.update(step.calibration.failures)
    out: list[tuple[str, str]] = []
    for result in suite.probes:
        if result.calibration is not None or result.null is not None:
            continue
        if result.verdict not in _JUDGED:
            continue
        label = result.name if result.name == result.kind else f"{result.name} ({result.kind})"
        out.append((label, failures.get(result.name, "")))
    return out


def collect_degenerate_nulls(suite: SuiteResult) -> list[tuple[str, str]]:
    """(entry name, why) for each result whose null had no usable spread, in suite order."""
    return [
        (result.name, result.null.degenerate)
        for result in suite.probes
        if result.null is not None and result.null.degenerate
    ]


def backend_line(stats: Mapping[str, Any]) -> str:
    """``forwards: 120, tokens: 8,192, cache hit 67%, batches: 15 (avg 8.0)``.

    Each part appears only when its counters are present in ``backend_stats``.
    """
    parts: list[str] = []
    forwards = _number(stats.get("forward_passes"))
    if forwards is not None:
        parts.append(f"forwards: {forwards:,.0f}")
    tokens = _number(stats.get("scored_tokens"))
    if tokens is not None:
        parts.append(f"tokens: {tokens:,.0f}")
    hits = _number(stats.get("cache_hits"))
    misses = _number(stats.get("cache_misses"))
    if hits is not None and misses is not None and hits + misses > 0:
        parts.append(f"cache hit {format_percent(hits / (hits + misses))}")
    batches = _number(stats.get("batches_sent"))
    prompts = _number(stats.get("batched_prompts"))
    if batches and prompts is not None:
        parts.append(f"batches: {batches:,.0f} (avg {prompts / batches:.1f})")
    return ", ".join(parts)


__all__ = [
    "DASH",
    "FALLBACK_CATEGORY",
    "adapter_label",
    "backend_line",
    "collect_degenerate_nulls",
    "collect_uncalibrated",
    "format_ci",
    "format_duration",
    "format_js",
    "format_p",
    "format_p_holm",
    "format_percent",
    "format_ratio",
    "format_raw",
    "format_score",
    "format_z",
    "is_scored",
    "noise_floor_line",
    "null_marker",
    "probe_note",
    "rank_profile",
    "result_category",
    "scored_categories",
    "visible",
    "visible_tree",
]
