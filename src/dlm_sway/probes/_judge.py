"""The calibrated verdict shared by divergence-type probes.

An effect PASSes only when all three hold:

1. it stands beyond the null adapters (z-equivalent ≥ ``assert_z_gte``);
2. it is large enough to matter (≥ ``assert_mean_gte``): a barely-trained adapter's
   direction can be non-random yet its effect negligible — significance is not size;
3. it clears the numerical noise floor (base vs base under another batch layout).
"""

from __future__ import annotations

from dataclasses import dataclass

from dlm_sway.probes._verdict import Calibration, no_calibration_note


@dataclass(frozen=True, slots=True)
class Judgement:
    passed: bool
    headline: str  # "above noise" / "indistinguishable from noise" / ...
    detail: str  # the rest of the one-line message


def judge_effect(
    raw: float,
    cal: Calibration,
    *,
    kind: str,
    what: str,
    z_threshold: float,
    min_effect: float,
    noise_floor: float | None,
) -> Judgement:
    """Decide PASS/FAIL for a non-negative effect ``raw`` described by ``what``."""
    if raw <= 0.0:
        return Judgement(
            False,
            "indistinguishable from noise",
            f"{what}: the adapter changes nothing measurable",
        )
    below_floor = noise_floor is not None and raw <= noise_floor
    floor_text = f"{what} ≤ {noise_floor or 0.0:.3g}, the base model's own batch-layout jitter"
    if cal.usable:
        assert cal.z is not None
        p = f", p={cal.p_value:.2g}" if cal.p_value is not None else ""
        ratio = f", {cal.effect_ratio:.3g}× the null median" if cal.effect_ratio is not None else ""
        stand = f"z={cal.z:+.2f}σ{p} {cal.versus()}{ratio}"
        if cal.z < z_threshold:
            return Judgement(False, "indistinguishable from noise", f"{what}; {stand}")
        if below_floor:
            return Judgement(False, "below the numerical noise floor", f"{floor_text}; {stand}")
        if raw < min_effect:
            return Judgement(
                False,
                "real but negligible",
                f"{what} is below the {min_effect:g} that matters (assert_mean_gte), "
                f"although its direction beats random ones ({stand})",
            )
        return Judgement(True, "above noise", f"{what}; {stand}")
    reason = f" — null unusable: {cal.degenerate}" if cal.degenerate else ""
    note = f"{no_calibration_note(kind)}{reason}"
    if raw < min_effect:
        return Judgement(False, "below threshold", f"{what} (threshold {min_effect:g}) {note}")
    if below_floor:
        return Judgement(False, "below the numerical noise floor", f"{floor_text} {note}")
    return Judgement(True, "above threshold", f"{what} (threshold {min_effect:g}) {note}")


__all__ = ["Judgement", "judge_effect"]
