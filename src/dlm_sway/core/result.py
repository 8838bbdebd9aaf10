"""Frozen, typed results. Every report format renders from a :class:`SuiteResult`."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from enum import StrEnum
from types import MappingProxyType
from typing import Any

from dlm_sway.core.stats import NullStats

SCHEMA_VERSION = 2

_EMPTY: Mapping[str, Any] = MappingProxyType({})


class Verdict(StrEnum):
    PASS = "pass"
    FAIL = "fail"
    WARN = "warn"
    SKIP = "skip"
    ERROR = "error"


class Direction(StrEnum):
    """Which way a probe's claim points.

    ``effect``: a PASS claims the adapter's effect is beyond random adapters of its
    size (these claims form the Holm family). ``harm``: a PASS claims *no* harm
    beyond them (forgetting probes), so multiplicity correction does not apply.
    """

    EFFECT = "effect"
    HARM = "harm"


@dataclass(frozen=True, slots=True)
class NullSummary:
    """How one result stands against its null adapters, typed for Holm and the reports."""

    construction: str
    method: str
    k: int
    samples: tuple[float, ...]
    #: The z bar the verdict used (``assert_z_gte``).
    z_threshold: float
    log_scale: bool = False
    #: Effect ratios (× the null median) are only meaningful for non-negative metrics.
    non_negative: bool = True
    statistic: float | None = None
    p_empirical: float | None = None
    #: Why the null could not be used (then the result fell back to fixed thresholds).
    degenerate: str | None = None
    #: z against each rank multiplier's nulls, when the suite sampled several.
    z_by_rank: Mapping[str, float] = field(default_factory=lambda: _EMPTY)

    @property
    def median(self) -> float | None:
        if not self.samples:
            return None
        xs = sorted(self.samples)
        mid = len(xs) // 2
        return xs[mid] if len(xs) % 2 else 0.5 * (xs[mid - 1] + xs[mid])


@dataclass(frozen=True, slots=True)
class NullCalibration:
    """What ``null_adapter`` measured: per rank multiplier, per calibrated entry, the stats."""

    by_rank: Mapping[str, Mapping[str, NullStats]]
    #: The rank key whose stats the verdicts use (``rank_1.00`` when sampled).
    primary: str
    #: Entry name → why it got no null (later probes then WARN instead of PASS).
    failures: Mapping[str, str] = field(default_factory=lambda: _EMPTY)
    from_cache: bool = False
    cache_file: str | None = None

    @property
    def stats(self) -> Mapping[str, NullStats]:
        return self.by_rank.get(self.primary, _EMPTY)


@dataclass(frozen=True, slots=True)
class OverfitSignal:
    """A named sign that the adapter memorised rather than learned; the only thing
    that makes a run's band "suspicious" (:func:`band_of`)."""

    #: Stable identifier, e.g. ``verbatim_over_paraphrase``.
    name: str
    #: The numbers behind it, in words.
    message: str


@dataclass(frozen=True, slots=True)
class TokenTrace:
    """How far the adapter moved each token of one scored text (the HTML per-token view).

    ``pieces`` concatenate to the scored text, one per token; ``values`` holds one
    number per piece in ``unit`` (e.g. the per-token log-prob lift ft − base, from the
    rolling log-probs the probe already computed), None where a token was not scored
    (the first one has no context). For humans only: no verdict reads it.
    """

    label: str
    pieces: tuple[str, ...]
    values: tuple[float | None, ...]
    unit: str = "log-prob lift ft − base (nats)"


@dataclass(frozen=True, slots=True)
class GeneratedSample:
    """One prompt's generated text under the base and the fine-tuned view, side by side."""

    prompt: str
    base: str
    finetuned: str


@dataclass(frozen=True, slots=True)
class ProbeResult:
    """One probe's outcome.

    ``raw`` is the probe's own metric in its own units; ``z_score`` is the
    z-equivalent of its standing against the null distribution (higher is
    better after the probe's sign convention) or None when not calibrated.
    """

    name: str
    kind: str
    verdict: Verdict
    score: float | None = None
    raw: float | None = None
    z_score: float | None = None
    p_value: float | None = None
    #: p after Holm's correction across the suite's calibrated probes (the gate uses it).
    p_adjusted: float | None = None
    effect_ratio: float | None = None
    base_value: float | None = None
    ft_value: float | None = None
    ci_95: tuple[float, float] | None = None
    #: Extra detail for humans only; no layer reads a decision from it.
    evidence: dict[str, Any] = field(default_factory=dict)
    message: str = ""
    duration_s: float = 0.0
    category: str = ""
    weight: float = 1.0
    direction: Direction = Direction.EFFECT
    #: The verdict's short words ("above noise") and the measurement they judge.
    headline: str = ""
    measured: str = ""
    null: NullSummary | None = None
    #: Only on ``null_adapter`` results: the statistics later probes are judged against.
    calibration: NullCalibration | None = None
    #: The probe entry's validated spec, for provenance.
    config: Mapping[str, Any] = field(default_factory=lambda: _EMPTY)
    #: A memorisation signal this result found (see :func:`band_of`), or None.
    overfit: OverfitSignal | None = None
    #: Per-token movement over the texts the probe scored (reports only), possibly empty.
    tokens: tuple[TokenTrace, ...] = ()
    #: Texts the probe generated under base and fine-tune (reports only), possibly empty.
    generations: tuple[GeneratedSample, ...] = ()

    def with_duration(self, seconds: float) -> ProbeResult:
        """A copy carrying every field, with the runner's timing stamped on."""
        return replace(self, duration_s=seconds)


_NUMERIC_FIELDS = (
    "score",
    "raw",
    "z_score",
    "p_value",
    "p_adjusted",
    "effect_ratio",
    "base_value",
    "ft_value",
)


def _finite(value: object) -> bool:
    if value is None or isinstance(value, bool):
        return True
    return isinstance(value, int | float) and math.isfinite(float(value))


def safe_finalize(
    result: ProbeResult, *, critical_fields: tuple[str, ...] = ("raw",)
) -> ProbeResult:
    """Guard against non-finite numbers reaching a verdict.

    A non-finite *critical* field turns the result into ERROR with every
    number cleared (a NaN must never read as PASS). A non-finite non-critical
    field is cleared and listed in ``evidence["defensively_nulled"]``.
    """
    bad = {f: getattr(result, f) for f in _NUMERIC_FIELDS if not _finite(getattr(result, f))}
    ci_bad = result.ci_95 is not None and not all(math.isfinite(v) for v in result.ci_95)
    if not bad and not ci_bad:
        return result
    evidence = dict(result.evidence)
    critical = [f for f in bad if f in critical_fields]
    if critical:
        evidence["non_finite_inputs"] = {k: repr(v) for k, v in bad.items()}
        return replace(
            result,
            verdict=Verdict.ERROR,
            score=None,
            raw=None,
            z_score=None,
            p_value=None,
            p_adjusted=None,
            effect_ratio=None,
            base_value=None,
            ft_value=None,
            ci_95=None,
            evidence=evidence,
            message=(
                f"non-finite {', '.join(critical)}: the probe cannot produce a meaningful "
                "result (check the adapter weights for NaN/inf)"
            ),
        )
    nulled = sorted(bad) + (["ci_95"] if ci_bad else [])
    evidence["defensively_nulled"] = nulled
    out = replace(result, ci_95=None if ci_bad else result.ci_95, evidence=evidence)
    for name in bad:
        object.__setattr__(out, name, None)
    return out


@dataclass(frozen=True, slots=True)
class HealthCheck:
    """A plain-sentence statement about whether the evidence can support a claim."""

    level: str  # "warn" | "error" | "info"
    code: str  # stable identifier, e.g. "too_few_nulls"
    message: str
    fix: str = ""


@dataclass(frozen=True, slots=True)
class DeterminismReport:
    class_: str
    seed: int
    notes: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class SuiteResult:
    """The whole run: probes in declaration order plus provenance."""

    spec_path: str
    started_at: datetime
    finished_at: datetime
    base_model_id: str
    adapter_id: str
    sway_version: str
    probes: tuple[ProbeResult, ...]
    null_stats: dict[str, dict[str, Any]] = field(default_factory=dict)
    determinism: DeterminismReport | None = None
    backend_stats: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    #: Base vs base under another batch layout: the numerical floor an effect must clear.
    noise_floor: dict[str, Any] = field(default_factory=dict)
    health: tuple[HealthCheck, ...] = ()

    @property
    def wall_seconds(self) -> float:
        return (self.finished_at - self.started_at).total_seconds()

    def by_name(self, name: str) -> ProbeResult:
        for p in self.probes:
            if p.name == name:
                return p
        raise KeyError(name)


#: The score rule's bands (the last rule of :func:`band_of`): noise < 0.3 ≤ partial < 0.6 ≤ healthy.
BANDS: tuple[tuple[float, str], ...] = ((0.3, "noise"), (0.6, "partial"), (math.inf, "healthy"))
#: Every band a run can land in.
BAND_NAMES: tuple[str, ...] = ("noise", "partial", "healthy", "suspicious", "harmful")
#: A paraphrase lift under this fraction of the verbatim lift is a memorisation signal.
MEMORISATION_RATIO = 0.25
_NOT_CLAIMS = ("null_adapter", "preflight")
#: HARM-direction checks on the training run itself (undertrained, a pathological loss
#: curve): their FAIL says the training fell short, not that the adapter costs what the
#: base knew, so they never make a run "harmful" (the gate still fails on them).
_TRAINING_CHECKS = ("gradient_ghost", "training_drift")
#: HARM claims that are not forgetting: the training checks above, and ``leakage`` under
#: ``intent: generalize`` (a recital FAIL carries the over-fit signal: "suspicious").
_NOT_FORGETTING = (*_TRAINING_CHECKS, "leakage")
_ALPHA = 0.05  # core.judge.ALPHA (judge imports this module, so it cannot be imported here)


def band_for(overall: float) -> str:
    """The score rule alone: noise < 0.3 ≤ partial < 0.6 ≤ healthy (a NaN is noise)."""
    if not math.isfinite(overall):
        return BANDS[0][1]
    for upper, name in BANDS:
        if overall < upper:
            return name
    return BANDS[-1][1]


@dataclass(frozen=True, slots=True)
class Band:
    name: str
    #: One sentence naming the rule that decided.
    reason: str


def band_of(results: Sequence[ProbeResult], overall: float) -> Band:
    """The band of a run, from its verdicts first and its overall score last.

    The first rule that applies decides:

    1. **harmful** — a forgetting probe (``direction`` HARM, not one of
       :data:`_NOT_FORGETTING`) FAILs: whatever the adapter
       achieves, it costs what the base model knew.
    2. **suspicious** — a result carries a named over-fit signal (``overfit``),
       e.g. ``verbatim_over_paraphrase``: the verbatim lift is real but the
       paraphrase lift is under :data:`MEMORISATION_RATIO` of it. A high score or
       a saturated z is never suspicious by itself.
    3. no effect claim (``direction`` EFFECT, not null_adapter, not SKIP/ERROR)
       PASSes, so nothing shows an effect that counts: **noise** when every one FAILs
       (indistinguishable, negligible in size, below the noise floor, or short of a
       fixed check) or there is none; else **partial** (one WARNs: real but below the
       bar, or not calibrated).
    4. otherwise the overall score: noise < 0.3 ≤ partial < 0.6 ≤ healthy.
    """
    judged = [r for r in results if r.verdict not in (Verdict.SKIP, Verdict.ERROR)]
    harmed = [
        r.name
        for r in judged
        if r.direction is Direction.HARM
        and r.verdict is Verdict.FAIL
        and r.kind not in _NOT_FORGETTING
    ]
    if harmed:
        return Band(
            "harmful",
            f"forgetting probe{'s' if len(harmed) > 1 else ''} {_names(harmed)} failed, and "
            "forgetting outweighs any effect",
        )
    flagged = [r for r in judged if r.overfit is not None]
    if flagged:
        first = flagged[0]
        assert first.overfit is not None
        return Band(
            "suspicious",
            f"{first.name} shows the over-fit signal {first.overfit.name}: {first.overfit.message}",
        )
    claims = [r for r in judged if r.direction is Direction.EFFECT and r.kind not in _NOT_CLAIMS]
    if not any(r.verdict is Verdict.PASS for r in claims):
        if not claims:
            return Band("noise", "no effect-claim probe reached a verdict, so none shows an effect")
        if all(r.verdict is Verdict.FAIL for r in claims):
            # Indistinguishable, negligible in size, below the noise floor or short of a
            # fixed check: none of them is an effect a user could rely on.
            real = [r.name for r in claims if _real(r)]
            why = (
                f" ({_names(real)} beat random adapters in direction but not in size or checks)"
                if real
                else ""
            )
            return Band("noise", f"no effect-claim probe passed: every one FAILed{why}")
        warned = [r.name for r in claims if r.verdict is Verdict.WARN]
        real = [r.name for r in claims if r.verdict is Verdict.WARN and _real(r)]
        if real:
            return Band(
                "partial",
                f"no effect-claim probe passed, though {_names(real)} shows a real effect "
                "below the bar",
            )
        return Band(
            "partial",
            f"no effect-claim probe passed, and {_names(warned)} could not be judged against noise",
        )
    name = band_for(overall)
    return Band(name, f"by the overall score {overall:.2f} ({_score_rule(name)})")


def _real(result: ProbeResult) -> bool:
    p = result.p_adjusted if result.p_adjusted is not None else result.p_value
    return p is not None and math.isfinite(p) and p < _ALPHA


def _names(names: Sequence[str]) -> str:
    return ", ".join(repr(n) for n in names)


def _score_rule(name: str) -> str:
    lower = 0.0
    for upper, band in BANDS:
        if band == name:
            return f"{lower:g} ≤ score" if math.isinf(upper) else f"{lower:g} ≤ score < {upper:g}"
        lower = upper
    return name


def verbatim_over_paraphrase(
    verbatim: float, paraphrase: float, *, min_lift: float, real: bool
) -> OverfitSignal | None:
    """The memorisation signal of a "generalize" paraphrase probe, or None.

    Raised when the verbatim lift is real (``real``: above its null, or above
    ``min_lift`` without one) and at least ``min_lift``, yet the paraphrase lift is
    under :data:`MEMORISATION_RATIO` of it: the answer rose on the training wording only.
    """
    if not (real and math.isfinite(verbatim) and math.isfinite(paraphrase)):
        return None
    if verbatim < max(min_lift, 1e-9) or paraphrase >= MEMORISATION_RATIO * verbatim:
        return None
    share = f"{paraphrase / verbatim:.0%}" if paraphrase > 0 else "none"
    return OverfitSignal(
        "verbatim_over_paraphrase",
        f"verbatim lift {verbatim:.3g} nats/token, paraphrase lift {paraphrase:.3g} "
        f"({share} of it carries over to rewordings, under {MEMORISATION_RATIO:.0%}): "
        "the answer is memorised on the training wording",
    )


@dataclass(frozen=True, slots=True)
class SwayScore:
    """Composite score: weighted mean of per-category scores (see ``suite.score``)."""

    overall: float
    band: str
    components: dict[str, float]
    weights: dict[str, float]
    findings: tuple[str, ...] = ()
    #: One sentence naming the band rule that decided (:func:`band_of`).
    band_reason: str = ""


__all__ = [
    "BANDS",
    "BAND_NAMES",
    "MEMORISATION_RATIO",
    "Band",
    "OverfitSignal",
    "band_of",
    "verbatim_over_paraphrase",
    "Direction",
    "NullCalibration",
    "NullSummary",
    "SCHEMA_VERSION",
    "SwayScore",
    "band_for",
    "DeterminismReport",
    "GeneratedSample",
    "HealthCheck",
    "ProbeResult",
    "SuiteResult",
    "TokenTrace",
    "Verdict",
    "safe_finalize",
]
