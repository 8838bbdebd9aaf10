"""The composite sway score: one number per category, one overall, one band.

Each scorable result lands in its typed ``category`` (stamped by the runner from
the probe's class), weighted by its typed ``weight`` (the spec's, validated at
load). Nothing is looked up in the probe registry or the ``evidence`` dict, so a
saved run scores the same with no probe installed. A category's score is the
weight-averaged score of its results; the overall score is the weighted mean of
the categories that had at least one scorable result, so a suite without, say,
an ablation probe is not penalised for the gap. SKIP and ERROR results never
enter the average: they are reported as findings instead.

The band comes from the verdicts first and the overall last
(:func:`dlm_sway.core.result.band_of`): a failed forgetting probe is never
"healthy", and "suspicious" needs a named over-fit signal.

Which results count, and under which category, is decided by
:func:`dlm_sway.report.format.is_scored` and :func:`~dlm_sway.report.format.result_category`,
the same helpers the renderers use to tell an empty category from a zero one.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from types import MappingProxyType

from dlm_sway.core.errors import SpecValidationError
from dlm_sway.core.result import (
    Direction,
    ProbeResult,
    SuiteResult,
    SwayScore,
    Verdict,
    band_of,
)
from dlm_sway.probes._fields import WEIGHT_MAX
from dlm_sway.probes.base import CATEGORIES
from dlm_sway.report.format import is_scored, result_category

#: Category weights used when the spec and the CLI say nothing. ``baseline``
#: (the null-calibration step) is informational and never moves the score.
DEFAULT_WEIGHTS: Mapping[str, float] = MappingProxyType(
    {
        "adherence": 0.30,
        "attribution": 0.35,
        "calibration": 0.20,
        "ablation": 0.15,
        "baseline": 0.0,
    }
)

#: A category scoring below this is called out in the findings.
LOW_CATEGORY_THRESHOLD = 0.3
MAX_FINDINGS = 5
PREFLIGHT_KIND = "preflight"
_FLAG_EXAMPLE = '--weights "attribution=0.5,ablation=0"'


def validate_weights(partial: Mapping[str, float], *, source: str) -> dict[str, float]:
    """Merge user weights over :data:`DEFAULT_WEIGHTS`, rejecting anything unusable.

    ``source`` names where the weights came from (``"defaults.score_weights"``,
    ``"--weights"``) so the error points the user at the right place.
    """
    known = ", ".join(CATEGORIES)
    merged = dict(DEFAULT_WEIGHTS)
    for key, value in partial.items():
        if key not in DEFAULT_WEIGHTS:
            raise SpecValidationError(
                f"unknown score category {key!r}; use one of: {known}", source=source
            )
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise SpecValidationError(
                f"weight for {key!r} must be a number, got {value!r}", source=source
            )
        try:
            number = float(value)
        except OverflowError:  # an int past float range: out of bounds like +inf
            number = math.inf
        if not math.isfinite(number) or not 0 <= number <= WEIGHT_MAX:
            raise SpecValidationError(
                f"weight for {key!r} is {value!r}; weights must be finite and >= 0, at "
                f"most {WEIGHT_MAX:g} (they are relative; set 0 to keep a category "
                "informational); nothing is clamped",
                source=source,
            )
        merged[key] = number
    if sum(merged.values()) <= 0:
        raise SpecValidationError(
            "every category weight is 0, so no probe could move the score; "
            f"give at least one of {known} a positive weight",
            source=source,
        )
    return merged


def parse_weights_flag(text: str) -> dict[str, float]:
    """Parse ``"attribution=0.5,ablation=0"`` and validate it like the YAML field."""
    source = "--weights"
    pairs = [piece.strip() for piece in text.split(",") if piece.strip()]
    if not pairs:
        raise SpecValidationError(
            f"no weights given; expected category=number pairs, e.g. {_FLAG_EXAMPLE}",
            source=source,
        )
    parsed: dict[str, float] = {}
    for pair in pairs:
        key, sep, value = (part.strip() for part in pair.partition("="))
        if not sep or not key or not value or "=" in value:
            raise SpecValidationError(
                f"cannot read {pair!r}; expected category=number pairs separated by "
                f"commas, e.g. {_FLAG_EXAMPLE}",
                source=source,
            )
        try:
            number = float(value)
        except ValueError:
            raise SpecValidationError(
                f"weight for {key!r} is not a number: {value!r} (e.g. {key}=0.5)",
                source=source,
            ) from None
        if key in parsed:
            raise SpecValidationError(
                f"{key!r} is given twice; list each category once", source=source
            )
        parsed[key] = number
    return validate_weights(parsed, source=source)


def compute(suite: SuiteResult, weights: Mapping[str, float] | None = None) -> SwayScore:
    """Score a finished suite. ``weights`` may be partial; it is merged over the defaults."""
    w = (
        dict(DEFAULT_WEIGHTS)
        if weights is None
        else validate_weights(weights, source="score weights")
    )

    buckets: dict[str, list[tuple[float, float]]] = {category: [] for category in w}
    for result in suite.probes:
        if not is_scored(result) or result.score is None:
            continue
        category = result_category(result)
        buckets.setdefault(category, []).append((result.weight, float(result.score)))

    components: dict[str, float] = {}
    active: list[str] = []
    for category, entries in buckets.items():
        if not entries:
            components[category] = 0.0
            continue
        active.append(category)
        total = sum(weight for weight, _ in entries)
        components[category] = sum(weight * score for weight, score in entries) / (total or 1.0)

    denominator = sum(w.get(category, 0.0) for category in active)
    numerator = sum(w.get(category, 0.0) * components[category] for category in active)
    overall = numerator / (denominator or 1.0)

    band = band_of(suite.probes, overall)
    return SwayScore(
        overall=overall,
        band=band.name,
        components=components,
        weights=w,
        findings=tuple(_findings(suite, components, active)),
        band_reason=band.reason,
    )


def _findings(suite: SuiteResult, components: Mapping[str, float], active: list[str]) -> list[str]:
    """At most :data:`MAX_FINDINGS` lines; low categories give way first when over the cap.

    Order: preflight abort, first FAIL (a failed forgetting probe first: it makes the
    band "harmful"), the first over-fit signal (it makes the band "suspicious"), low
    categories, errored count, "no score". The errored count is never the line that
    gets cut: errored probes are left out of the score, so this line is the only
    place they show up.
    """
    head: list[str] = []
    errored = 0
    aborted = False
    first_fail: ProbeResult | None = None
    flagged: ProbeResult | None = None
    for result in suite.probes:
        if result.verdict not in (Verdict.SKIP, Verdict.ERROR) and flagged is None:
            flagged = result if result.overfit is not None else None
        if result.kind == PREFLIGHT_KIND and result.verdict is Verdict.ERROR:
            aborted = True
            reason = result.message or "no reason recorded"
            head.append(f"preflight check failed, no probe ran: {reason}")
        elif result.verdict is Verdict.ERROR:
            errored += 1
        elif result.verdict is Verdict.FAIL and (
            first_fail is None
            or (result.direction is Direction.HARM and first_fail.direction is Direction.EFFECT)
        ):
            first_fail = result
    if first_fail is not None:
        line = f"{first_fail.name} ({first_fail.kind}) failed"
        head.append(f"{line}: {first_fail.message}" if first_fail.message else line)
    if flagged is not None and flagged.overfit is not None:
        signal = flagged.overfit
        head.append(f"over-fit signal {signal.name} in {flagged.name}: {signal.message}")
    low = [
        f"{category} scores {components[category]:.2f}, under the "
        f"{LOW_CATEGORY_THRESHOLD:.1f} noise threshold"
        for category in active
        if components[category] < LOW_CATEGORY_THRESHOLD
    ]
    tail: list[str] = []
    if errored:
        tail.append(f"{errored} probe(s) errored — see messages")
    if not active and not aborted:
        tail.append(
            "no probe produced a score, so the overall 0.00 reflects missing evidence, "
            "not a measured effect"
        )
    room = max(MAX_FINDINGS - len(head) - len(tail), 0)
    return (head + low[:room] + tail)[:MAX_FINDINGS]


__all__ = [
    "DEFAULT_WEIGHTS",
    "LOW_CATEGORY_THRESHOLD",
    "MAX_FINDINGS",
    "compute",
    "parse_weights_flag",
    "validate_weights",
]
