"""The per-token view of the HTML report: which tokens the adapter moved, and how far.

Reads the typed ``ProbeResult.tokens`` traces (per-token values the probes kept
from forwards they ran anyway). Shading is a diverging scale shared by the whole
run (blue: the fine-tune made the token more likely, red: less), quantised to a
few CSS classes so a page with thousands of tokens stays small. Every number is
also in text: on hover (``title``), on keyboard focus, and in the lists.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from dlm_sway.core.result import ProbeResult

LEVELS = 5
MOST_MOVED = 20
PER_TRACE_TOP = 5
#: Tokens drawn per page at most (~60 bytes each); later traces keep their summary only.
TOKEN_BUDGET = 20_000
_CONTEXT = 3


@dataclass(frozen=True, slots=True)
class Tok:
    piece: str
    value: float | None
    shade: str
    anchor: str

    @property
    def text(self) -> str:
        return "—" if self.value is None else f"{self.value:+.3f}"

    @property
    def lead(self) -> str:
        """Leading whitespace, drawn outside the shaded span (unless it is all there is)."""
        core = self.piece.lstrip()
        return self.piece[: len(self.piece) - len(core)] if core else ""

    @property
    def core(self) -> str:
        return self.piece[len(self.lead) :]


@dataclass(frozen=True, slots=True)
class Moved:
    piece: str
    value: float
    where: str
    anchor: str
    context: str

    @property
    def text(self) -> str:
        return f"{self.value:+.3f}"


@dataclass(frozen=True, slots=True)
class TraceView:
    probe: str
    label: str
    unit: str
    tokens: tuple[Tok, ...]
    summary: str
    top: tuple[Moved, ...]


def _scale(results: Sequence[ProbeResult]) -> float:
    """The |value| that gets the darkest shade: the 98th percentile over the run."""
    mags = sorted(
        abs(v)
        for r in results
        for t in r.tokens
        for v in t.values
        if v is not None and math.isfinite(v) and v != 0
    )
    if not mags:
        return 1.0
    return mags[min(len(mags) - 1, int(0.98 * len(mags)))] or 1.0


def _finite(v: float | None) -> bool:
    return v is not None and math.isfinite(v)


def _shade(value: float | None, scale: float) -> str:
    if value is None or not math.isfinite(value):
        return "u"
    level = min(LEVELS, math.ceil(abs(value) / scale * LEVELS - 0.25))
    if level <= 0:
        return ""
    return f"{'p' if value > 0 else 'n'}{level}"


def shown(piece: str) -> str:
    """A piece as a list shows it: whitespace made visible, so ' the' and 'the' differ."""
    return piece.replace(" ", "·").replace("\n", "↵").replace("\t", "→") or "∅"


def build(
    results: Sequence[ProbeResult], prefix: str
) -> tuple[tuple[TraceView, ...], tuple[Moved, ...]]:
    """Trace views for every result's token traces and the run's most-moved tokens."""
    scale = _scale(results)
    candidates: list[tuple[float, int, int, Moved]] = []
    traces: list[TraceView] = []
    budget = TOKEN_BUDGET
    for r in results:
        for trace in r.tokens:
            n = len(traces)
            pairs = list(zip(trace.pieces, trace.values, strict=False))
            finite = [v for _, v in pairs if v is not None and math.isfinite(v)]
            summary = (
                f"{len(finite)} scored tokens, mean {sum(finite) / len(finite):+.3f}, "
                f"max rise {max(finite):+.3f}, max drop {min(finite):+.3f}"
                if finite
                else "no scored tokens"
            )
            if len(pairs) > budget:
                summary += " (not drawn: the page shows at most 20,000 tokens; see the JSON)"
                traces.append(TraceView(r.name, trace.label, trace.unit, (), summary, ()))
                continue
            budget -= len(pairs)
            ranked = sorted(
                (i for i, (p, v) in enumerate(pairs) if p and _finite(v)),
                key=lambda i: -abs(pairs[i][1] or 0.0),
            )
            wanted = set(ranked[:MOST_MOVED])
            toks = tuple(
                Tok(p, v if _finite(v) else None, _shade(v, scale), f"{prefix}t{n}-{i}")
                if i in wanted
                else Tok(p, v if _finite(v) else None, _shade(v, scale), "")
                for i, (p, v) in enumerate(pairs)
            )
            moved = [_moved(pairs, i, trace.label, f"{prefix}t{n}-{i}") for i in ranked]
            candidates += [(-abs(m.value), n, j, m) for j, m in enumerate(moved[:MOST_MOVED])]
            traces.append(
                TraceView(
                    r.name, trace.label, trace.unit, toks, summary, tuple(moved[:PER_TRACE_TOP])
                )
            )
    candidates.sort(key=lambda c: c[:3])
    return tuple(traces), tuple(c[3] for c in candidates[:MOST_MOVED])


def _moved(pairs: list[tuple[str, float | None]], i: int, where: str, anchor: str) -> Moved:
    before = "".join(p for p, _ in pairs[max(0, i - _CONTEXT) : i])
    after = "".join(p for p, _ in pairs[i + 1 : i + 1 + _CONTEXT])
    piece, value = pairs[i]
    context = f"…{before}[{piece}]{after}…".replace("\n", " ")
    return Moved(shown(piece), float(value or 0.0), where, anchor, context)


__all__ = ["MOST_MOVED", "TOKEN_BUDGET", "Moved", "Tok", "TraceView", "build", "shown"]
