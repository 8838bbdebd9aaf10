"""``prompt_collapse``: does the adapter's influence survive a long, unrelated context?

Each prompt is scored alone and again behind ~L tokens of neutral padding (a
built-in passage of everyday prose, see :mod:`dlm_sway.probes._filler`), for
every L in ``context_lengths``. The mean next-token divergence base→fine-tune
at each L traces how much of the adapter is left once the base model has plenty
of other text to lean on. An exponential ``d(L) = a·exp(−L·ln2/h)`` fitted to
that curve (least squares on ``ln d``) gives the half-life ``h`` in tokens:
padding after which half of the adapter's influence is gone. A curve that does
not fall (or falls so slowly that ``h`` exceeds ``half_life_cap_tokens``)
reports the cap: "no measurable decay within reach".

Padding length is measured in real tokens when the view can count them
(:class:`~dlm_sway.core.scoring.TokenCounting`), else in whitespace words; the
fit uses the measured lengths, which may fall a token or two short of the
requested ones.

PASS needs a half-life of at least ``assert_half_life_tokens`` *and* an effect
worth tracking: the divergence at the shortest context must reach
``assert_mean_gte`` (and clear the noise floor), since the "half-life" of a
curve that is noise from the start describes nothing. These are fixed checks
handed to the one judge (:mod:`dlm_sway.probes._verdict`); the probe opts out of
null calibration (see :meth:`PromptCollapseProbe.calibrate_spec`), and its result
says so.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray
from pydantic import Field, field_validator, model_validator

from dlm_sway.core.divergence import DivergenceKind, divergence
from dlm_sway.core.judge import Check
from dlm_sway.core.result import ProbeResult, Verdict
from dlm_sway.core.scoring import BASE_AND_FT, ScoringModel, TokenCounting, shared_forwards
from dlm_sway.probes._dists import dists
from dlm_sway.probes._fields import NonNegNats, TopK, ZBar, non_blank_items, reachable_mean_bar
from dlm_sway.probes._filler import filler_for_tokens, with_padding
from dlm_sway.probes._verdict import Calibration, judge, judged_result, size_checks
from dlm_sway.probes.base import Probe, ProbeSpec, RunContext, bare_result

_DEFAULT_LENGTHS = [0, 128, 256, 512]
#: Longest padding (tokens): past any context window a probe would plausibly need.
MAX_CONTEXT = 32768
#: Half-life bars and caps are token counts; a million is past any model's context.
MAX_TOKENS = 1e6
#: A point measured at exactly zero enters the log-fit as this fraction of the curve's peak
#: (i.e. "fully collapsed"), instead of making the logarithm undefined.
ZERO_FLOOR = 1e-6
_N_BOOTSTRAP = 1000


class PromptCollapseSpec(ProbeSpec):
    kind: Literal["prompt_collapse"] = "prompt_collapse"
    prompts: list[str] = Field(min_length=1)
    #: Padding lengths (tokens, or words when the view cannot count tokens); 0 = prompt alone.
    #: Padding lengths in [0, 32768]; whether they fit the model is checked at model load.
    context_lengths: list[int] = Field(default_factory=lambda: list(_DEFAULT_LENGTHS))
    divergence: DivergenceKind = "js"
    top_k: TopK | None = None
    assert_half_life_tokens: float = Field(default=512.0, gt=0.0, le=MAX_TOKENS)
    #: Reported half-life when the curve does not decay (or decays slower than this).
    half_life_cap_tokens: float = Field(default=4096.0, gt=0.0, le=MAX_TOKENS)
    #: Divergence at the shortest context below which there is nothing worth tracking.
    assert_mean_gte: NonNegNats = 0.02
    #: Unused: the probe opts out of null calibration (kept so existing specs load).
    assert_z_gte: ZBar = 3.0

    @field_validator("prompts")
    @classmethod
    def _non_blank(cls, value: list[str]) -> list[str]:
        return non_blank_items(value)

    @field_validator("context_lengths")
    @classmethod
    def _lengths(cls, value: list[int]) -> list[int]:
        if any(not 0 <= x <= MAX_CONTEXT for x in value):
            raise ValueError(
                f"context lengths must be ≥ 0 and ≤ {MAX_CONTEXT} (0 means the prompt alone)"
            )
        out = sorted(set(value))
        if len(out) < 2:
            raise ValueError("need at least 2 distinct context lengths, e.g. [0, 256, 512]")
        return out

    @model_validator(mode="after")
    def _cap(self) -> PromptCollapseSpec:
        reachable_mean_bar(self.divergence, self.assert_mean_gte)
        if self.half_life_cap_tokens < self.assert_half_life_tokens:
            raise ValueError(
                f"half_life_cap_tokens ({self.half_life_cap_tokens:g}) is below "
                f"assert_half_life_tokens ({self.assert_half_life_tokens:g}): nothing could pass"
            )
        return self


@dataclass(frozen=True, slots=True)
class DecayFit:
    """``d(L) ≈ amplitude·exp(−rate·L)``; ``half_life`` is capped, ``uncapped`` is not."""

    half_life: float
    uncapped: float | None  # None when the curve does not fall (rate ≤ 0)
    amplitude: float
    rate: float  # per token; ≤ 0 means no decay
    r_squared: float  # of the log-linear fit

    @property
    def capped(self) -> bool:
        return self.uncapped is None or self.uncapped > self.half_life

    def to_dict(self) -> dict[str, Any]:
        return {
            "half_life_tokens": self.half_life,
            "half_life_uncapped": self.uncapped,
            "capped": self.capped,
            "amplitude": self.amplitude,
            "decay_rate_per_token": self.rate,
            "r_squared_log": self.r_squared,
        }


def _log_curve(curves: NDArray[np.float64]) -> NDArray[np.float64]:
    """ln of each row, zeros floored at :data:`ZERO_FLOOR` × the row's peak."""
    peak = curves.max(axis=-1, keepdims=True)
    out: NDArray[np.float64] = np.log(np.maximum(curves, np.maximum(peak, 1e-300) * ZERO_FLOOR))
    return out


def _slopes(x: NDArray[np.float64], y: NDArray[np.float64]) -> NDArray[np.float64]:
    """OLS slope of each row of ``y`` on ``x``."""
    xc = x - x.mean()
    out: NDArray[np.float64] = ((y - y.mean(axis=-1, keepdims=True)) @ xc) / float(xc @ xc)
    return out


def half_lives(
    lengths: NDArray[np.float64], curves: NDArray[np.float64], cap: float
) -> NDArray[np.float64]:
    """Capped half-life of each row of ``curves`` (NaN for an all-zero row)."""
    y = _log_curve(curves)
    slope = _slopes(lengths, y)
    with np.errstate(divide="ignore"):
        h = np.where(slope < 0.0, math.log(2.0) / -slope, np.inf)
    h = np.minimum(h, cap)
    out: NDArray[np.float64] = np.where(curves.max(axis=-1) > 0.0, h, np.nan)
    return out


def fit_decay(lengths: list[float], curve: list[float], *, cap: float) -> DecayFit | None:
    """Fit ``d = a·exp(−rate·L)`` by least squares on ``ln d``.

    None when the curve is zero everywhere (no influence to decay), has a
    non-finite or negative point, or the lengths do not vary.
    """
    x = np.asarray(lengths, dtype=np.float64)
    d = np.asarray(curve, dtype=np.float64)
    if x.size != d.size or x.size < 2 or float(np.ptp(x)) == 0.0:
        return None
    if not np.all(np.isfinite(d)) or float(d.min()) < 0.0 or not float(d.max()) > 0.0:
        return None
    y = _log_curve(d[None, :])[0]
    slope = float(_slopes(x, y[None, :])[0])
    intercept = float(y.mean() - slope * x.mean())
    resid = y - (intercept + slope * x)
    ss_tot = float(np.sum((y - y.mean()) ** 2))
    r2 = 1.0 if ss_tot == 0.0 else max(0.0, 1.0 - float(np.sum(resid**2)) / ss_tot)
    uncapped = math.log(2.0) / -slope if slope < 0.0 else None
    half = cap if uncapped is None else min(uncapped, cap)
    return DecayFit(
        half_life=half, uncapped=uncapped, amplitude=math.exp(intercept), rate=-slope, r_squared=r2
    )


def half_life_ci(
    lengths: list[float],
    per_prompt: NDArray[np.float64],
    *,
    cap: float,
    seed: int,
    n_bootstrap: int = _N_BOOTSTRAP,
) -> tuple[float, float] | None:
    """Percentile 95% CI of the half-life, resampling prompts (rows of ``per_prompt``)."""
    n = per_prompt.shape[0]
    if n < 2 or not np.all(np.isfinite(per_prompt)):
        return None
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(n_bootstrap, n))
    curves = per_prompt[idx].mean(axis=1)
    hs = half_lives(np.asarray(lengths, dtype=np.float64), curves, cap)
    hs = hs[np.isfinite(hs)]
    if hs.size == 0:
        return None
    lo, hi = np.quantile(hs, [0.025, 0.975])
    return (float(lo), float(hi))


def _counter(view: ScoringModel) -> tuple[Any, str]:
    if isinstance(view, TokenCounting):
        return (lambda text: view.completion_token_count("", text)), "tokens"
    return (lambda text: len(text.split())), "words"


class PromptCollapseProbe(Probe):
    """Half-life (in tokens of neutral padding) of the adapter's next-token influence."""

    kind = "prompt_collapse"
    spec_cls = PromptCollapseSpec
    category = "adherence"
    calibrated = False
    uncalibrated_reason = (
        "a null's half-life sits at the cap with no spread, so persistence is judged "
        "against assert_half_life_tokens (delta_kl calibrates the effect size)"
    )

    def run(self, spec: ProbeSpec, ctx: RunContext) -> ProbeResult:
        assert isinstance(spec, PromptCollapseSpec)
        backend = ctx.require_backend
        top_k = spec.top_k or ctx.top_k
        prompts = spec.prompts
        texts: list[list[str]] = []
        measured: list[int] = []
        base: list[list[Any]] = []
        with shared_forwards(backend, BASE_AND_FT):
            with backend.as_base() as view:
                count, unit = _counter(view)
                for target in spec.context_lengths:
                    padding, used = filler_for_tokens(target, count)
                    measured.append(used)
                    texts.append([with_padding(padding, p) for p in prompts])
                    base.append(dists(view, texts[-1], top_k))
            with backend.as_finetuned() as view:
                ft = [dists(view, batch, top_k) for batch in texts]
        per_prompt = np.array(
            [
                [divergence(b, f, spec.divergence) for b, f in zip(bs, fs, strict=True)]
                for bs, fs in zip(base, ft, strict=True)
            ],
            dtype=np.float64,
        ).T  # prompts × lengths
        curve = [float(v) for v in per_prompt.mean(axis=0)]
        xs = [float(m) for m in measured]
        fit = fit_decay(xs, curve, cap=spec.half_life_cap_tokens)

        evidence: dict[str, Any] = {
            "context_lengths": list(spec.context_lengths),
            "measured_context_lengths": measured,
            "length_unit": unit,
            "mean_divergence_per_length": curve,
            "per_prompt": per_prompt.tolist(),
            "retention": curve[-1] / curve[0] if curve[0] > 0.0 else None,
            "divergence_kind": spec.divergence,
            "num_prompts": len(prompts),
            "top_k": top_k,
        }
        if not all(math.isfinite(v) for v in curve):
            return bare_result(
                spec,
                Verdict.ERROR,
                "non-finite divergence in the decay curve: the probe cannot produce a "
                "meaningful result (check the adapter weights for NaN/inf)",
            )
        # Opted out of null calibration: fixed thresholds decide, and the words say why.
        cal = Calibration(stats=None, comparison=None)
        not_calibrated = f"not calibrated against null adapters: {self.uncalibrated_reason}"
        div = spec.divergence.upper()
        unit_word = "token" if unit == "tokens" else "word"
        span = f"from {measured[0]} to {measured[-1]} {unit_word}s of padding"
        if fit is None and max(curve) > 0.0:
            return bare_result(
                spec,
                Verdict.ERROR,
                f"the decay curve {curve} over lengths {measured} cannot be fitted "
                "(a negative divergence, or lengths that do not vary)",
            )
        if fit is None:
            what = f"mean {div} 0 at every context length {span}, so no influence to decay"
            j = judge(0.0, cal, spec, ctx, what=what, uncalibrated_reason=not_calibrated)
            return judged_result(spec, cal, j, raw=None, measured=what, evidence=evidence)
        evidence["fit"] = fit.to_dict()
        raw = fit.half_life
        effect = curve[0]
        floor = ctx.noise_floor
        bar = spec.assert_half_life_tokens
        lead = (
            f"no decay up to {measured[-1]} {unit_word}s (half-life ≥ cap {raw:.4g})"
            if fit.capped
            else f"half-life {raw:.4g} {unit_word}s"
        )
        what = (
            f"{lead}; mean {div} {curve[0]:.3g} → {curve[-1]:.3g} nats {span} (threshold {bar:g})"
        )
        at_start = f"the {div} at the shortest context, {effect:.3g} nats,"
        checks = (
            Check(raw >= bar, f"half-life {raw:.4g} < {bar:g} (assert_half_life_tokens)"),
            *size_checks(effect, at_start, min_effect=spec.assert_mean_gte, noise_floor=floor),
        )
        ok_effect = all(c.ok for c in checks[1:])
        j = judge(
            raw,
            cal,
            spec,
            ctx,
            what=what,
            checks=checks,
            fixed_score=min(1.0, raw / bar) if ok_effect else 0.0,
            uncalibrated_reason=not_calibrated,
        )
        return judged_result(
            spec,
            cal,
            j,
            raw=raw,
            measured=what,
            evidence=evidence,
            ci_95=half_life_ci(xs, per_prompt, cap=spec.half_life_cap_tokens, seed=ctx.seed),
        )

    @classmethod
    def calibrate_spec(cls, ctx: RunContext, target: ProbeSpec | None = None) -> ProbeSpec | None:
        """Opt out: a random adapter's half-life is not a bar a trained one should beat.

        Weight noise perturbs every forward pass alike, so a null's influence has
        no reason to fade with padding: its half-life sits at (or scatters just
        below) the cap, and the capped samples tie, leaving a null with no
        spread. Comparing against it would ask "does this adapter persist *more*
        than noise?", which is backwards: persistence is judged against the fixed
        ``assert_half_life_tokens``. The size of the effect itself is what the
        nulls can judge, and ``delta_kl`` on the same prompts does exactly that
        (its raw equals this probe's divergence at context length 0).
        """
        return None


__all__ = [
    "DecayFit",
    "PromptCollapseProbe",
    "PromptCollapseSpec",
    "fit_decay",
    "half_life_ci",
    "half_lives",
]
