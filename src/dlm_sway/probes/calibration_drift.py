"""``calibration_drift``: did fitting the document cost the model general knowledge?

Each item is a short prompt with one obvious continuation ("The capital of
France is" → " Paris"), drawn from the built-in general-knowledge pack
(:mod:`dlm_sway.data`) and/or the user's own ``extra_items``. Per item,

    Δ = (log p_ft(gold | prompt) − log p_base(gold | prompt)) / n_tokens(gold)

in nats per token, where ``n_tokens`` is the **real** number of tokens the gold
adds after the prompt under the model's tokenizer
(:func:`dlm_sway.core.scoring.completion_tokens`), not a characters/4 guess.
An item *regressed* when Δ < −``regression_margin``. The default margin, 1.0
nat/token, means the fine-tune gives the gold continuation less than
e⁻¹ ≈ 37% of the probability the base gave it (per token). ``raw`` is the
fraction of items that regressed; the mean Δ is reported as ``ft_value``.

Verdict direction. Forgetting is *harm*, so being "beyond the null" is bad
here, the opposite of adherence probes. The null is the same statistic with a
random adapter of the same size standing in for the fine-tune. The probe can
claim one thing: "this adapter forgets significantly more than a random
adapter of its size" (harm z = −z ≥ ``assert_z_gte``). It FAILs only when that
claim holds *and* the forgetting is large enough to matter (fraction ≥
``assert_fraction_regressed_lt`` or mean Δ < ``assert_mean_delta_gte``).
Requiring the adapter to forget significantly *less* than noise (z ≥ 3 in the
good direction, as the reference did) would fail every harmless adapter.
Forgetting that crosses the practical thresholds while random adapters of the
same size forget as much is a WARN: real loss, caused by the adapter's
magnitude rather than what it learned. Without a usable null the practical
thresholds decide alone, and that is the default: random adapters of a trained
size regress almost no item, so ``null_adapter`` draws this null only when its
``calibrate_kinds`` names ``calibration_drift`` (``null_on_request``). The
verdict comes from :func:`dlm_sway.core.judge.judge_harm`; the result has
``direction=harm`` and its ``z_score``/``p_value`` are those of the harm claim
(larger z = more forgetting than the nulls), so Holm's family of "effect beyond
noise" claims leaves it out.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, Field, field_validator, model_validator

from dlm_sway.core.judge import judge_harm
from dlm_sway.core.result import Direction, ProbeResult, Verdict
from dlm_sway.core.scoring import BASE_AND_FT, shared_forwards
from dlm_sway.core.stats import bootstrap_ci
from dlm_sway.data import PackItem, load_general_pack, pack_categories
from dlm_sway.probes._fields import NATS_MAX, STRICT, Nats, NonBlank, Seed, ZBar
from dlm_sway.probes._logprob import token_counts, try_logprobs
from dlm_sway.probes._verdict import calibrate, judged_result
from dlm_sway.probes.base import Probe, ProbeSpec, RunContext, bare_result

#: Items a suite entry scores by default (calibration runs score the same items).
DEFAULT_ITEMS_LIMIT = 60
#: Category given to ``extra_items`` that name none.
USER_CATEGORY = "user"
WORST_SHOWN = 10


class GoldItem(BaseModel):
    """One user item: ``prompt`` should be continued by ``gold`` (keep its leading space)."""

    model_config = STRICT

    prompt: str
    gold: str
    category: NonBlank = USER_CATEGORY
    id: NonBlank | None = None

    @field_validator("prompt", "gold")
    @classmethod
    def _non_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be empty or whitespace")
        return value


class CalibrationDriftSpec(ProbeSpec):
    kind: Literal["calibration_drift"] = "calibration_drift"
    #: ``builtin``: the packaged general-knowledge pack; ``none``: only ``extra_items``.
    pack: Literal["builtin", "none"] = "builtin"
    #: How many pack items to score (stratified over categories); None scores all.
    #: ``extra_items`` are always scored in full, on top of this.
    items_limit: int | None = Field(default=DEFAULT_ITEMS_LIMIT, ge=1, le=1_000_000)
    #: Keep only these categories (pack categories or those of ``extra_items``).
    categories: list[str] | None = None
    extra_items: list[GoldItem] = Field(default_factory=list)
    #: Nats per real token an item must lose to count as regressed (0 < margin ≤ 100).
    regression_margin: float = Field(default=1.0, gt=0.0, le=NATS_MAX)
    assert_fraction_regressed_lt: float = Field(default=0.15, gt=0.0, le=1.0)
    #: Lowest acceptable mean δ (ft − base log-prob per token, nats), in [-100, 100].
    assert_mean_delta_gte: Nats = -0.5
    assert_z_gte: ZBar = 3.0
    #: Seed of the item selection, in [0, 2**32 - 1]; None uses the run's seed.
    #: Calibration pins it so every null scores exactly the items the real run scores.
    selection_seed: Seed | None = None

    @field_validator("categories")
    @classmethod
    def _some(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and not value:
            raise ValueError("an empty list keeps no items; omit the key to keep every category")
        return value

    @model_validator(mode="after")
    def _has_items(self) -> CalibrationDriftSpec:
        known = list(pack_categories()) if self.pack == "builtin" else []
        known += [c for c in dict.fromkeys(i.category for i in self.extra_items) if c not in known]
        if not known:
            raise ValueError("no items: pack is 'none' and extra_items is empty; add extra_items")
        if self.categories is not None:
            unknown = [c for c in self.categories if c not in known]
            if unknown:
                raise ValueError(
                    f"categories {unknown} match no item; known categories: {', '.join(known)}"
                )
        return self


def selection_seed(spec: CalibrationDriftSpec, run_seed: int) -> int:
    return run_seed if spec.selection_seed is None else spec.selection_seed


def select_items(spec: CalibrationDriftSpec, run_seed: int) -> list[PackItem]:
    """Pack items (filtered, seeded, round-robin over categories) then every extra item.

    The draw uses ``spec.selection_seed`` when set, else ``run_seed``.
    """
    seed = selection_seed(spec, run_seed)
    wanted = set(spec.categories) if spec.categories is not None else None
    chosen: list[PackItem] = []
    if spec.pack == "builtin":
        by_cat: dict[str, list[PackItem]] = {}
        for item in load_general_pack():
            if wanted is None or item.category in wanted:
                by_cat.setdefault(item.category, []).append(item)
        rng = np.random.default_rng(seed)
        queues = [[group[i] for i in rng.permutation(len(group))] for group in by_cat.values()]
        limit = spec.items_limit if spec.items_limit is not None else sum(map(len, queues))
        depth = 0
        while len(chosen) < limit and any(depth < len(q) for q in queues):
            for queue in queues:
                if depth < len(queue) and len(chosen) < limit:
                    chosen.append(queue[depth])
            depth += 1
    for n, extra in enumerate(spec.extra_items, start=1):
        if wanted is None or extra.category in wanted:
            chosen.append(
                PackItem(
                    id=extra.id or f"user-{n:03d}",
                    category=extra.category,
                    prompt=extra.prompt,
                    gold=extra.gold,
                )
            )
    return chosen


def practical_score(fraction: float, mean_delta: float, spec: CalibrationDriftSpec) -> float:
    """1 with no forgetting, 0 at (or past) both fixed thresholds; 60/40 weighting."""
    frac_part = max(0.0, 1.0 - fraction / spec.assert_fraction_regressed_lt)
    limit = spec.assert_mean_delta_gte
    if limit < 0.0:
        delta_part = max(0.0, 1.0 - min(0.0, mean_delta) / limit)
    else:
        delta_part = 1.0 if mean_delta >= limit else 0.0
    return 0.6 * frac_part + 0.4 * delta_part


def _by_category(
    items: Sequence[PackItem], deltas: Sequence[float], margin: float
) -> dict[str, Any]:
    groups: dict[str, list[float]] = {}
    for item, d in zip(items, deltas, strict=True):
        groups.setdefault(item.category, []).append(d)
    return {
        cat: {
            "n": len(ds),
            "fraction_regressed": float(np.mean([d < -margin for d in ds])),
            "mean_delta": float(np.mean(ds)),
        }
        for cat, ds in groups.items()
    }


class CalibrationDriftProbe(Probe):
    """Fraction of general-knowledge items the fine-tune forgot, judged against null adapters."""

    kind = "calibration_drift"
    spec_cls = CalibrationDriftSpec
    category = "calibration"
    calibrated = True
    null_on_request = (
        "a random adapter of a trained adapter's size regresses almost no fact by a nat per "
        "token, so the null fraction is 0 for nearly every seed and has no spread"
    )

    def run(self, spec: ProbeSpec, ctx: RunContext) -> ProbeResult:
        assert isinstance(spec, CalibrationDriftSpec)
        if ctx.backend is None:
            return bare_result(spec, Verdict.SKIP, "needs a model backend to score items")
        seed = selection_seed(spec, ctx.seed)
        items = select_items(spec, ctx.seed)
        if not items:
            return self._error(spec, "no items left to score after the category filter")
        pairs = [(it.prompt, it.gold) for it in items]
        with shared_forwards(ctx.backend, BASE_AND_FT):
            with ctx.backend.as_base() as view:
                base_lp, base_why = try_logprobs(view, pairs)
                counts = token_counts(view, pairs)
            with ctx.backend.as_finetuned() as view:
                ft_lp, ft_why = try_logprobs(view, pairs)

        kept: list[PackItem] = []
        deltas: list[float] = []
        base_pt: list[float] = []
        for item, b, f, n in zip(items, base_lp, ft_lp, counts, strict=True):
            if b is None or f is None:
                continue
            kept.append(item)
            deltas.append((f - b) / n)
            base_pt.append(b / n)
        if not kept:
            reasons = (base_why + ft_why)[:3]
            return self._error(spec, f"no item could be scored ({'; '.join(reasons)})")

        margin = spec.regression_margin
        finite = all(math.isfinite(d) for d in deltas)
        regressed = [float(d < -margin) for d in deltas]
        fraction = float(np.mean(regressed)) if finite else math.nan
        mean_delta = float(np.mean(deltas))
        # Harm direction: a larger fraction regressed than the nulls' is the claim tested.
        harm = calibrate(fraction, ctx, spec, sign=+1)
        practical_ok = (
            fraction < spec.assert_fraction_regressed_lt
            and mean_delta >= spec.assert_mean_delta_gte
        )
        what = (
            f"{int(sum(regressed))}/{len(kept)} items regressed by > {margin:g} nats/token "
            f"({fraction:.1%}), mean Δ {mean_delta:+.3f} nats/token"
        )
        limits = (
            f"limits: fraction < {spec.assert_fraction_regressed_lt:g} "
            f"(assert_fraction_regressed_lt), mean Δ ≥ {spec.assert_mean_delta_gte:g} "
            "(assert_mean_delta_gte)"
        )
        judgement = judge_harm(
            harm.comparison if harm.usable else None,
            what=what,
            versus=harm.versus(),
            practical_ok=practical_ok,
            limit_text=limits,
            z_bar=spec.assert_z_gte,
            non_negative=True,  # a fraction: its ratio to the null median means something
            uncalibrated_reason=harm.fallback_note(self.kind)
            + ("" if harm.stats is not None else " (nulls only when calibrate_kinds names it)"),
            calibration_failed=harm.failed,
            practical_score=practical_score(fraction, mean_delta, spec) if finite else None,
        )
        order = np.argsort(deltas, kind="stable")
        worst = [
            {
                "id": kept[i].id,
                "category": kept[i].category,
                "prompt": kept[i].prompt,
                "gold": kept[i].gold,
                "delta": deltas[i],
                "base_logprob_per_token": base_pt[i],
            }
            for i in order[:WORST_SHOWN]
            if deltas[i] < -margin
        ]
        evidence: dict[str, Any] = {
            "fraction_regressed": fraction,
            "mean_delta_nats_per_token": mean_delta,
            "regressed_count": int(sum(regressed)),
            "total_items": len(kept),
            "unscorable": len(items) - len(kept),
            "regression_margin": margin,
            "per_category": _by_category(kept, deltas, margin),
            "worst_items": worst,
            "mean_delta_ci_95": bootstrap_ci(deltas, seed=ctx.seed),
            "selection_seed": seed,
        }
        return judged_result(
            spec,
            harm,
            judgement,
            raw=fraction,
            measured=what,
            evidence=evidence,
            direction=Direction.HARM,
            non_negative=True,
            ft_value=mean_delta,
            ci_95=bootstrap_ci(regressed, seed=ctx.seed),
        )

    def _error(self, spec: CalibrationDriftSpec, message: str) -> ProbeResult:
        return bare_result(spec, Verdict.ERROR, message)

    @classmethod
    def calibrate_spec(cls, ctx: RunContext, target: ProbeSpec | None = None) -> ProbeSpec | None:
        """The entry itself, with its item selection pinned to this run's seed.

        Null runs get their own seed in their context; pinning keeps every null
        on the same items as the real run (same ``items_limit``, same draw).
        """
        if isinstance(target, CalibrationDriftSpec):
            if target.selection_seed is not None:
                return target
            return target.model_copy(update={"selection_seed": ctx.seed})
        return CalibrationDriftSpec(
            name="calibration_drift_null", items_limit=20, selection_seed=ctx.seed
        )


__all__ = [
    "DEFAULT_ITEMS_LIMIT",
    "CalibrationDriftProbe",
    "CalibrationDriftSpec",
    "GoldItem",
    "practical_score",
    "select_items",
    "selection_seed",
]
