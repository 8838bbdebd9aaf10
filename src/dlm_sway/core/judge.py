"""The one judge: a probe's measurement, its null comparison and the floors → a verdict.

Every calibrated probe reaches its verdict here, so the words always follow the
numbers and every probe uses the same tiers:

* **PASS** "above noise": z ≥ the bar, the effect large enough to matter, above
  the numerical noise floor, and every fixed check holds.
* **WARN** "real but below the bar": p < α (the effect is not noise) but z is
  under the bar — including when K nulls are too few to ever reach it; the
  message says how many would. Also: calibration was asked for and failed,
  or a fixed check could not be judged on this data.
* **FAIL** "indistinguishable from noise" only when p ≥ α; otherwise the FAIL
  names what did not hold (negligible size, noise floor, a fixed check).

Forgetting probes make the opposite claim ("no harm beyond random adapters") and
go through :func:`judge_harm`. Messages are built from the same numbers the
reports print (:func:`standing`), and an effect ratio is given only for
non-negative metrics; otherwise the distance in null standard deviations.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from dlm_sway.core.calibration import NullComparison, prediction_threshold
from dlm_sway.core.multiplicity import p_from_z, z_from_p
from dlm_sway.core.result import ProbeResult, Verdict

#: The significance level behind "real": below it the null is rejected, one-sided.
ALPHA = 0.05
#: Scores of results that did not PASS are capped, so a FAIL or WARN never looks good.
FAIL_SCORE_CAP = 0.25
WARN_SCORE_CAP = 0.5


@dataclass(frozen=True, slots=True)
class Check:
    """A fixed criterion besides the null comparison, e.g. ``R² 0.91 ≥ 0.85``.

    ``judged=False``: the data cannot decide it (e.g. too few base-wrong triples to
    judge a flip rate); an otherwise passing result is then WARN, never PASS.
    """

    ok: bool
    text: str
    judged: bool = True


@dataclass(frozen=True, slots=True)
class Bar:
    """What an effect must clear: the z bar, the size that matters, the numerical floor."""

    z: float = 3.0
    min_effect: float | None = None
    min_effect_name: str = "assert_mean_gte"
    noise_floor: float | None = None


@dataclass(frozen=True, slots=True)
class Judgement:
    verdict: Verdict
    headline: str
    detail: str
    score: float | None

    @property
    def message(self) -> str:
        return f"{self.headline}: {self.detail}" if self.detail else self.headline


def score_from_z(z: float) -> float:
    """Logistic of z/3: z=0 → 0.5, z=3 → 0.73."""
    return 1.0 / (1.0 + math.exp(-max(-50.0, min(50.0, z / 3.0))))


def format_p(p: float) -> str:
    """p as every report prints it (two significant digits)."""
    return f"{p:.2g}"


def standing(
    z: float | None,
    p: float | None,
    *,
    versus: str,
    effect_ratio: float | None,
    non_negative: bool,
    sd_distance: float | None = None,
    p_label: str = "p",
) -> str:
    """'z=+4.10σ, p=2e-05 vs 10 norm-matched nulls, 12.3× the null median'.

    The effect ratio is only meaningful when the metric is non-negative (then the
    null median is too); for signed metrics the distance in null SDs is given.
    """
    z_label = "z_adj" if p_label == "p_adj" else "z"
    text = f"{z_label}={z:+.2f}σ" if z is not None else f"{z_label}=n/a"
    if p is not None:
        text += f", {p_label}={format_p(p)}"
    text += f" {versus}"
    if non_negative and effect_ratio is not None and effect_ratio >= 0:
        text += f", {effect_ratio:.3g}× the null median"
    elif sd_distance is not None:
        text += f", {sd_distance:+.2f} null SDs from the null mean"
    return text


def _stand(c: NullComparison, versus: str, non_negative: bool) -> str:
    return standing(
        c.z,
        c.p_value,
        versus=versus,
        effect_ratio=c.effect_ratio,
        non_negative=non_negative,
        sd_distance=sd_distance(c),
    )


def sd_distance(c: NullComparison) -> float | None:
    """How many null SDs the raw sits from the null mean (on the compared scale)."""
    if c.statistic is None or not c.k:
        return None
    scale = math.sqrt(1.0 + 1.0 / c.k) if c.method == "t_prediction" else 1.0
    return c.statistic * scale


def nulls_to_reach(z_bar: float, sds_above: float) -> int | None:
    """Fewest nulls K for which an effect ``sds_above`` null SDs out would reach ``z_bar``."""
    alpha = p_from_z(z_bar)
    for k in range(2, 201):
        if prediction_threshold(k, alpha) <= sds_above:
            return k
    return None


def _below_bar(
    c: NullComparison, bar: Bar, stand: str, p: float, *, what: str, after: str = ""
) -> Judgement:
    """p < α but z under the bar: real, not yet strong enough — say what would get there."""
    z = z_from_p(p)
    hint = ""
    sds = sd_distance(c)
    if sds is not None and c.method == "t_prediction":
        need = nulls_to_reach(bar.z, sds)
        if need is not None and need > c.k:
            hint = f"; with {need} nulls instead of {c.k} this effect would reach the bar"
        elif need is None:
            hint = f"; no number of nulls up to 200 lifts this effect to z ≥ {bar.z:g}"
    return Judgement(
        Verdict.WARN,
        "real but below the bar",
        f"{what}; {stand}{after}: p < {ALPHA:g} but z={z:+.2f}σ < {bar.z:g} (assert_z_gte){hint}",
        min(score_from_z(z), WARN_SCORE_CAP),
    )


def judge_effect(
    raw: float,
    comparison: NullComparison | None,
    bar: Bar,
    *,
    what: str,
    versus: str,
    non_negative: bool = True,
    checks: tuple[Check, ...] = (),
    uncalibrated_reason: str | None = None,
    calibration_failed: str | None = None,
    fixed_score: float | None = None,
    p_adjusted: float | None = None,
    family_size: int = 0,
) -> Judgement:
    """Verdict for an "effect beyond random adapters" claim (larger ``raw`` = more effect).

    ``p_adjusted`` (Holm, with ``family_size``) replaces the raw p in the decision and
    the words. Without a usable ``comparison`` the fixed thresholds decide — except
    when ``calibration_failed`` says a null was asked for and could not be had: then
    the result is WARN, never PASS.
    """
    failed = [c.text for c in checks if c.judged and not c.ok]
    unjudged = [c.text for c in checks if not c.judged]
    negligible = bar.min_effect is not None and raw < bar.min_effect
    below_floor = bar.noise_floor is not None and raw <= bar.noise_floor
    if non_negative and raw <= 0.0:
        return Judgement(
            Verdict.FAIL,
            "indistinguishable from noise",
            f"{what}: the adapter changes nothing measurable",
            0.0,
        )
    usable = comparison is not None and comparison.z is not None and comparison.p_value is not None
    if usable:
        assert comparison is not None and comparison.p_value is not None
        p = comparison.p_value if p_adjusted is None else p_adjusted
        after = ""
        if p_adjusted is not None:
            after = f" (Holm-adjusted across {family_size} calibrated probes)"
        z = z_from_p(p) if p_adjusted is not None else comparison.z
        assert z is not None
        stand = standing(
            z,
            p,
            versus=versus,
            effect_ratio=comparison.effect_ratio,
            non_negative=non_negative,
            sd_distance=sd_distance(comparison),
            p_label="p_adj" if p_adjusted is not None else "p",
        )
        if p >= ALPHA:
            return Judgement(
                Verdict.FAIL,
                "indistinguishable from noise",
                f"{what}; {stand}{after}",
                min(score_from_z(z), FAIL_SCORE_CAP),
            )
        if below_floor:
            return Judgement(
                Verdict.FAIL,
                "below the numerical noise floor",
                f"{what} ≤ {bar.noise_floor:.3g}, the base model's own batch-layout jitter; "
                f"{stand}{after}",
                0.0,
            )
        if negligible:
            return Judgement(
                Verdict.FAIL,
                "real but negligible",
                f"{what} is below the {bar.min_effect:g} that matters ({bar.min_effect_name}), "
                f"although its direction beats random ones ({stand}{after})",
                0.0,
            )
        if failed:  # more nulls could not mend a failed check: FAIL even below the bar
            return Judgement(
                Verdict.FAIL,
                "above noise, but a fixed check failed"
                if z >= bar.z
                else "real, but a fixed check failed",
                f"{what}; {stand}{after}; failed: {'; '.join(failed)}",
                FAIL_SCORE_CAP,
            )
        if z < bar.z:
            j = _below_bar(comparison, bar, stand, p, what=what, after=after)
            if unjudged:
                j = replace(j, detail=f"{j.detail}; not judged: {'; '.join(unjudged)}")
            return j
        if unjudged:
            return Judgement(
                Verdict.WARN,
                "above noise, but a check could not be judged",
                f"{what}; {stand}{after}; not judged: {'; '.join(unjudged)}",
                min(score_from_z(z), WARN_SCORE_CAP),
            )
        return Judgement(Verdict.PASS, "above noise", f"{what}; {stand}{after}", score_from_z(z))
    if calibration_failed:
        # Without its null no effect can be claimed; but a fixed bar the effect misses is
        # missed whatever the null would have said, so that is still a FAIL.
        missed = ([f"{bar.min_effect_name} {bar.min_effect:g}"] if negligible else []) + failed
        if missed:
            return Judgement(
                Verdict.FAIL,
                "below threshold",
                f"{what}; failed: {'; '.join(missed)}; and the null adapters could not be "
                f"measured for this probe ({calibration_failed})",
                0.0,
            )
        return Judgement(
            Verdict.WARN,
            "not calibrated",
            f"{what}; the null adapters could not be measured for this probe "
            f"({calibration_failed}), so no claim about noise can be made",
            None,
        )
    note = uncalibrated_reason or "no null_adapter in the suite: fixed thresholds only"
    score = fixed_score
    if negligible:
        return Judgement(
            Verdict.FAIL,
            "below threshold",
            f"{what} (threshold {bar.min_effect:g}, {bar.min_effect_name}); {note}",
            None if score is None else min(score, FAIL_SCORE_CAP),
        )
    if below_floor:
        return Judgement(
            Verdict.FAIL,
            "below the numerical noise floor",
            f"{what} ≤ {bar.noise_floor:.3g}, the base model's own batch-layout jitter; {note}",
            0.0,
        )
    if failed:
        return Judgement(
            Verdict.FAIL,
            "a fixed check failed",
            f"{what}; failed: {'; '.join(failed)}; {note}",
            None if score is None else min(score, FAIL_SCORE_CAP),
        )
    if unjudged:
        return Judgement(
            Verdict.WARN,
            "a fixed check could not be judged",
            f"{what}; not judged: {'; '.join(unjudged)}; {note}",
            None if score is None else min(score, WARN_SCORE_CAP),
        )
    threshold = f" (threshold {bar.min_effect:g})" if bar.min_effect is not None else ""
    return Judgement(Verdict.PASS, "above threshold", f"{what}{threshold}; {note}", score)


_SHORT = {"norm_matched": "norm-matched", "init_scale": "fixed-std", "permuted": "permuted"}


def versus(construction: str, k: int) -> str:
    """'vs 10 norm-matched nulls' for messages."""
    return f"vs {k} {_SHORT.get(construction, construction)} nulls"


def holm_rejudge(result: ProbeResult, p_adj: float, family_size: int) -> ProbeResult:
    """A calibrated claim re-judged on its Holm-adjusted p, with words from those numbers.

    p_adj ≥ α makes a PASS, a WARN "real but below the bar" or a FAIL that called its
    direction real into FAIL "indistinguishable from noise" (nothing is real after
    multiplicity); a PASS whose z_adj misses the bar becomes WARN "real but below the
    bar"; otherwise the message gains the adjusted numbers.
    """
    out = replace(result, p_adjusted=p_adj)
    null = result.null
    if null is None or result.verdict not in (Verdict.PASS, Verdict.WARN, Verdict.FAIL):
        return out
    if result.verdict is not Verdict.PASS and (
        p_adj < ALPHA or result.headline == "indistinguishable from noise"
    ):
        return out
    z_adj = z_from_p(p_adj)
    sds = None
    if null.statistic is not None and null.k:
        sds = null.statistic * (
            math.sqrt(1.0 + 1.0 / null.k) if null.method == "t_prediction" else 1.0
        )
    stand = standing(
        z_adj,
        p_adj,
        versus=versus(null.construction, null.k),
        effect_ratio=result.effect_ratio,
        non_negative=null.non_negative,
        sd_distance=sds,
        p_label="p_adj",
    )
    after = f" (Holm-adjusted across {family_size} calibrated probes)"
    what = result.measured or result.name
    if p_adj >= ALPHA:
        verdict, headline = Verdict.FAIL, "indistinguishable from noise"
        score: float | None = min(score_from_z(z_adj), FAIL_SCORE_CAP)
        detail = f"{what}; {stand}{after}"
    elif z_adj < null.z_threshold:
        verdict, headline = Verdict.WARN, "real but below the bar"
        score = min(score_from_z(z_adj), WARN_SCORE_CAP)
        detail = (
            f"{what}; {stand}{after}: p_adj < {ALPHA:g} but z_adj={z_adj:+.2f}σ < "
            f"{null.z_threshold:g} (assert_z_gte)"
        )
    else:
        return replace(out, message=f"{result.headline or 'above noise'}: {what}; {stand}{after}")
    return replace(
        out, verdict=verdict, headline=headline, score=score, message=f"{headline}: {detail}"
    )


@dataclass(frozen=True)
class HarmWords:
    """How a harm claim is worded: forgetting probes forget, leakage under ``intent:
    generalize`` recites. Same rules, so the words must follow the probe."""

    noun: str = "forgetting"
    does: str = "forgets"
    do: str = "forget"


FORGETTING = HarmWords()
RECITAL = HarmWords("recital", "recites", "recite")


def judge_harm(
    harm: NullComparison | None,
    *,
    what: str,
    versus: str,
    practical_ok: bool,
    limit_text: str,
    z_bar: float,
    non_negative: bool = False,
    uncalibrated_reason: str | None = None,
    calibration_failed: str | None = None,
    practical_score: float | None = None,
    words: HarmWords = FORGETTING,
) -> Judgement:
    """Verdict for a forgetting probe: its PASS claims *no harm* past the limit.

    FAIL needs both a breached limit and harm beyond random adapters of the same
    size (z ≥ bar); a breached limit that random adapters breach as well is WARN
    (the adapter's magnitude, not its content, costs this). ``practical_score``
    (1 = no loss, 0 = at the limits) grades the loss; the verdict's cap bounds it.
    """
    j = _judge_harm(
        harm,
        what=what,
        versus=versus,
        practical_ok=practical_ok,
        limit_text=limit_text,
        z_bar=z_bar,
        non_negative=non_negative,
        uncalibrated_reason=uncalibrated_reason,
        calibration_failed=calibration_failed,
        words=words,
    )
    if practical_score is None or j.score is None:
        return j
    return replace(j, score=min(j.score, max(0.0, practical_score)))


def _judge_harm(
    harm: NullComparison | None,
    *,
    what: str,
    versus: str,
    practical_ok: bool,
    limit_text: str,
    z_bar: float,
    non_negative: bool,
    uncalibrated_reason: str | None,
    calibration_failed: str | None,
    words: HarmWords,
) -> Judgement:
    if harm is not None and harm.z is not None and harm.p_value is not None:
        stand = _stand(harm, versus, non_negative)
        beyond = harm.z >= z_bar
        if not practical_ok and beyond:
            return Judgement(
                Verdict.FAIL,
                f"{words.does} more than random adapters",
                f"{what} ({limit_text}); harm {stand}",
                0.0,
            )
        if not practical_ok and harm.p_value < ALPHA:
            return Judgement(
                Verdict.WARN,
                f"{words.noun}, real but below the bar",
                f"{what} ({limit_text}); harm {stand}: p < {ALPHA:g} but z={harm.z:+.2f}σ < "
                f"{z_bar:g} (assert_z_gte): not enough to blame what the adapter learned "
                "rather than its size",
                WARN_SCORE_CAP,
            )
        if not practical_ok:
            return Judgement(
                Verdict.WARN,
                f"{words.noun} within what random adapters do",
                f"{what} ({limit_text}), but random adapters of the same size {words.do} as much "
                f"(harm {stand}): the adapter's magnitude, not its content, costs this",
                WARN_SCORE_CAP,
            )
        if beyond:
            return Judgement(
                Verdict.PASS,
                f"small but real {words.noun}",
                f"{what} stays within {limit_text}, though beyond random adapters (harm {stand})",
                0.75,
            )
        return Judgement(
            Verdict.PASS, f"no {words.noun} beyond noise", f"{what}; harm {stand}", 1.0
        )
    if calibration_failed:
        return Judgement(
            Verdict.WARN if practical_ok else Verdict.FAIL,
            "not calibrated",
            f"{what} ({limit_text}); the null adapters could not be measured for this probe "
            f"({calibration_failed})",
            None if practical_ok else 0.0,
        )
    note = uncalibrated_reason or "no null_adapter in the suite: fixed limits only"
    if practical_ok:
        return Judgement(Verdict.PASS, "within the limit", f"{what} ({limit_text}); {note}", 1.0)
    return Judgement(Verdict.FAIL, words.noun, f"{what} ({limit_text}); {note}", 0.0)


__all__ = [
    "ALPHA",
    "FORGETTING",
    "RECITAL",
    "HarmWords",
    "FAIL_SCORE_CAP",
    "WARN_SCORE_CAP",
    "Bar",
    "Check",
    "Judgement",
    "format_p",
    "judge_effect",
    "holm_rejudge",
    "judge_harm",
    "versus",
    "nulls_to_reach",
    "sd_distance",
    "score_from_z",
    "standing",
]
