"""One plain sentence per adapter for the demo's closing table.

Built from typed fields only: the band (:func:`dlm_sway.core.result.band_of`,
carried by :class:`~dlm_sway.core.result.SwayScore`), the verdicts and
directions of the effect claims, and the headline divergence probe's null
comparison (``delta_kl``: z, effect ratio, K). Every number printed is named
in words next to it, so the table reads without the report above it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from dlm_sway.core.result import Direction, ProbeResult, SuiteResult, SwayScore, Verdict

_NOT_CLAIMS = ("null_adapter", "preflight")
_ALPHA = 0.05  # core.judge.ALPHA: below it an effect is "real" (not noise)


@dataclass(frozen=True, slots=True)
class Contrast:
    """The same adapter's headline result against fixed-noise nulls (the reference's
    construction): the reference's plain z, (raw − null mean) / null SD, and its bar."""

    plain_z: float
    z_bar: float
    init_scale: float


def contrast_of(result: ProbeResult, init_scale: float) -> Contrast | None:
    """The reference's statistic for ``result`` (judged against fixed-noise nulls), from
    its typed null samples; None without at least two finite samples with spread."""
    null = result.null
    if null is None or result.raw is None or not math.isfinite(result.raw):
        return None
    xs = [x for x in null.samples if math.isfinite(x)]
    if len(xs) < 2:
        return None
    mean = sum(xs) / len(xs)
    sd = math.sqrt(sum((x - mean) ** 2 for x in xs) / (len(xs) - 1))
    if sd <= 0.0:
        return None
    return Contrast((result.raw - mean) / sd, null.z_threshold, init_scale)


@dataclass(frozen=True, slots=True)
class AdapterLine:
    name: str
    band: str
    sentence: str


def effect_claims(suite: SuiteResult) -> list[ProbeResult]:
    """The judged effect claims: what band_of reads for noise / partial / healthy."""
    return [
        p
        for p in suite.probes
        if p.direction is Direction.EFFECT
        and p.kind not in _NOT_CLAIMS
        and p.verdict not in (Verdict.SKIP, Verdict.ERROR)
    ]


def _real(p: ProbeResult) -> bool:
    value = p.p_adjusted if p.p_adjusted is not None else p.p_value
    return value is not None and math.isfinite(value) and value < _ALPHA


def _z(z: float | None) -> str:
    if z is None or not math.isfinite(z):
        return "z n/a"
    return f"z={z:+.0f}" if abs(z) >= 10 else f"z={z:+.1f}"


def _vs_nulls(dkl: ProbeResult | None) -> str:
    """'its next-token shift on the document's prompts is z=+41 against 10 random
    adapters of its size (95× their median)'."""
    if dkl is None or dkl.z_score is None or dkl.null is None:
        return "its next-token shift could not be compared with random adapters"
    text = (
        f"its next-token shift on the document's prompts is {_z(dkl.z_score)} against "
        f"{dkl.null.k} random adapters of its size"
    )
    if dkl.effect_ratio is not None and math.isfinite(dkl.effect_ratio):
        text += f" ({dkl.effect_ratio:.3g}× their median)"
    return text


def _checks(claims: list[ProbeResult]) -> str:
    passed = sum(p.verdict is Verdict.PASS for p in claims)
    return f"{passed} of {len(claims)} effect checks passed"


def adapter_line(
    name: str, suite: SuiteResult, score: SwayScore, *, contrast: Contrast | None = None
) -> AdapterLine:
    """The closing table's sentence for one adapter, chosen by its band."""
    claims = effect_claims(suite)
    dkl = next((p for p in suite.probes if p.kind == "delta_kl"), None)
    band = score.band
    if band == "healthy":
        text = f"learned its document — {_vs_nulls(dkl)}; {_checks(claims)}"
    elif band == "suspicious":
        text = (
            f"learned its document but shows memorisation ({score.band_reason}); {_checks(claims)}"
        )
    elif band == "harmful":
        learned = (
            f"learned its document — {_vs_nulls(dkl)} — "
            if dkl is not None and dkl.verdict is Verdict.PASS
            else ""
        )
        memorised = [p.overfit.name for p in suite.probes if p.overfit is not None]
        also = f"; it also memorised its text ({', '.join(memorised)})" if memorised else ""
        text = f"{learned}but at a cost: {score.band_reason}{also}; {_checks(claims)}"
    elif band == "partial":
        text = f"a real but partial effect — {_vs_nulls(dkl)}; {_checks(claims)}"
    elif dkl is not None and dkl.verdict is Verdict.FAIL and _real(dkl):
        size = f"{dkl.raw:.2g} nats" if dkl.raw is not None else "its size"
        text = (
            f"a real but negligible change — {_vs_nulls(dkl)}, so its direction is not "
            f"random, but the change itself ({size} mean divergence) is far too small to "
            f"matter; {_checks(claims)}"
        )
    else:
        text = (
            f"indistinguishable from random adapters of the same size — {_vs_nulls(dkl)}; "
            f"{_checks(claims)}"
        )
    if contrast is not None:
        verdict = "a PASS under" if contrast.plain_z >= contrast.z_bar else "short of"
        text += (
            f" — yet against fixed-noise nulls (std {contrast.init_scale:g}, the reference's "
            f"construction) its shift is {_z(contrast.plain_z)} by the reference's plain z, "
            f"{verdict} its z ≥ {contrast.z_bar:g} rule"
        )
    return AdapterLine(name, band, f"{name}: {text}; {band}.")


LEGEND = (
    "z: how many standard deviations of the random adapters' values an adapter's own "
    "value sits above their mean (t-predicted, so few nulls need a larger z). "
    "×: its value over the random adapters' median. Random adapters ('nulls') have "
    "the adapter's rank, targets and per-module weight-change norm, random directions. "
    "Bands: healthy (effects beyond noise, score ≥ 0.6), partial, noise (no effect check "
    "passed), suspicious (a memorisation signal), harmful (a forgetting check failed)."
)

__all__ = ["LEGEND", "AdapterLine", "Contrast", "adapter_line", "contrast_of", "effect_claims"]
