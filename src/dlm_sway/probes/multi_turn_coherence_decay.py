"""``multi_turn_coherence_decay``: does the adapter's effect hold over a dialogue?

The fine-tune writes a dialogue turn by turn: the user's prompt, its reply, a
generic follow-up ("Tell me more."), its reply, and so on. At each user turn
``t`` both views are scored **on that same ft-written history**: next-token
distributions at the start of the assistant's reply and after each of the first
``positions_per_turn − 1`` words of the fine-tune's reply (several positions
per turn, not one, so a turn's value is not decided by a single token). The
turn's divergence is the mean over positions and prompts; the curve over turns
``1..max_turns`` is fitted with ``d(t) = a·exp(−ln 2·(t−1)/h)`` by nonlinear
least squares (scipy ``curve_fit``, started from the log-linear fit). ``h``, the
half-life in turns, is ``raw``; a curve that does not fall reports the cap
``10 × max_turns`` ("no decay within reach").

Divergence direction. The reference's docstring said KL(base‖ft) while its
code computed KL(ft‖base). We use **KL(ft‖base)** (``divergence: kl``, the
default), sway's one meaning of ``kl`` everywhere (``core.divergence``): the
history is sampled from the fine-tune, so the expectation is taken under the
distribution that wrote it, and the number reads "how much of what the
fine-tune would say next would the base model not say". KL(base‖ft) would
weigh the base model's preferences on a trajectory the base never wrote.
``divergence: js`` gives the symmetric, bounded alternative.

Rendering. A view that can render a conversation with its chat template
(:class:`ChatRendering`) is scored and generated on that rendering; otherwise
both use :func:`~dlm_sway.core.scoring.plain_text` (``User: …`` / ``Assistant:``
paragraphs). Generation always receives the very string that is scored.

Not calibrated, like ``prompt_collapse``: a random adapter's influence does not
fade with turns (weight noise perturbs every forward alike), so null
half-lives pile up at the cap with no spread. Persistence is judged against
``assert_half_life_turns``; the effect's size at turn 1 must reach
``assert_mean_gte`` (``delta_kl`` calibrates effect sizes).
"""

from __future__ import annotations

import math
import re
import warnings
from dataclasses import dataclass
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np
from numpy.typing import NDArray
from pydantic import Field, field_validator, model_validator

from dlm_sway.core.divergence import DivergenceKind, divergence
from dlm_sway.core.judge import Check
from dlm_sway.core.result import ProbeResult, Verdict
from dlm_sway.core.scoring import (
    BASE_AND_FT,
    ChatTurn,
    Conversation,
    GenerationSettings,
    ScoringModel,
    plain_text,
    shared_forwards,
)
from dlm_sway.core.sections import Document
from dlm_sway.probes._dists import dists
from dlm_sway.probes._fields import NonNegNats, TopK, non_blank_items, reachable_mean_bar
from dlm_sway.probes._textgen import CannotGenerateError, write
from dlm_sway.probes._verdict import Calibration, judge, judged_result, size_checks
from dlm_sway.probes.base import Probe, ProbeSpec, RunContext, bare_result, document_context
from dlm_sway.probes.prompt_collapse import fit_decay

FOLLOW_UPS: tuple[str, ...] = (
    "Tell me more.",
    "Can you elaborate on that?",
    "Go on.",
    "What else should I know?",
    "Please continue.",
    "Can you explain that in more detail?",
    "Anything else?",
)
#: Half-life reported for a curve that does not fall, as a multiple of max_turns.
CAP_FACTOR = 10.0
_N_BOOTSTRAP = 200
_PLAIN_STOPS = ("\nUser:", "\n\nUser:")
_WORD_END = re.compile(r"\S+")


@runtime_checkable
class ChatRendering(Protocol):
    """Views that render a conversation with the model's chat template, ending where
    the assistant's reply begins; None when the model has no template."""

    def render_chat(self, conversation: Conversation) -> str | None: ...


class MultiTurnSpec(ProbeSpec):
    kind: Literal["multi_turn_coherence_decay"] = "multi_turn_coherence_decay"
    #: Opening user messages; empty: the questions of ``dlm_source`` (at most 4).
    prompts: list[str] = Field(default_factory=list)
    max_turns: int = Field(default=4, ge=2, le=8)
    max_new_tokens: int = Field(default=64, ge=4, le=512)
    follow_ups: list[str] = Field(default_factory=lambda: list(FOLLOW_UPS), min_length=1)
    #: ``kl`` = KL(ft‖base) (see the module docstring), or the symmetric ``js``.
    divergence: DivergenceKind = "kl"
    top_k: TopK | None = None
    #: Scored positions per turn: the reply's start and after each of its first words.
    positions_per_turn: int = Field(default=4, ge=1, le=32)
    assert_half_life_turns: float = Field(default=2.0, gt=0.0, le=80.0)
    #: Divergence at turn 1 below which there is no adapter effect to track.
    assert_mean_gte: NonNegNats = 0.02

    @field_validator("prompts", "follow_ups")
    @classmethod
    def _non_blank(cls, value: list[str]) -> list[str]:
        return non_blank_items(value) if value else value

    @model_validator(mode="after")
    def _bars(self) -> MultiTurnSpec:
        reachable_mean_bar(self.divergence, self.assert_mean_gte)
        cap = CAP_FACTOR * self.max_turns
        if self.assert_half_life_turns > cap:
            raise ValueError(
                f"assert_half_life_turns ({self.assert_half_life_turns:g}) is above the "
                f"half-life cap {cap:g} (10 × max_turns): nothing could pass; lower it or "
                "raise max_turns"
            )
        return self


def _prompts(spec: MultiTurnSpec, ctx: RunContext) -> list[str]:
    if spec.prompts:
        return list(spec.prompts)
    qs = [p.prompt for s in ctx.sections or () if s.kind == "instruction" for p in s.probes]
    return list(dict.fromkeys(q for q in qs if q.strip()))[:4]


@dataclass(frozen=True, slots=True)
class Rollout:
    """Scored contexts, per prompt and turn, and whether a chat template rendered them."""

    contexts: list[list[list[str]]]  # prompt → turn → positions
    replies: list[list[str]]
    templated: bool


def _render(view: ScoringModel, conv: Conversation) -> tuple[str, bool]:
    if isinstance(view, ChatRendering):
        text = view.render_chat(conv)
        if text is not None:
            return text, True
    return plain_text(conv), False


def _positions(context: str, reply: str, n: int) -> list[str]:
    """The reply's start and after each of its first ``n − 1`` words (exact continuations)."""
    out = [context]
    for m in list(_WORD_END.finditer(reply))[: n - 1]:
        out.append(context + reply[: m.end()])
    return out


def rollout(view: ScoringModel, spec: MultiTurnSpec, prompts: list[str], seed: int) -> Rollout:
    """The fine-tune's dialogue, one batched generation per turn across prompts."""
    convs: list[Conversation] = [(ChatTurn("user", p),) for p in prompts]
    contexts: list[list[list[str]]] = [[] for _ in prompts]
    replies: list[list[str]] = [[] for _ in prompts]
    templated = True
    for t in range(spec.max_turns):
        rendered = [_render(view, c) for c in convs]
        templated = templated and all(flag for _, flag in rendered)
        texts = [r for r, _ in rendered]
        stops = () if all(flag for _, flag in rendered) else _PLAIN_STOPS
        settings = GenerationSettings(
            max_new_tokens=spec.max_new_tokens, seed=seed, stop=stops, chat=False
        )
        outs = write(view, texts, settings, probe="multi_turn_coherence_decay")
        follow = spec.follow_ups[t % len(spec.follow_ups)]
        for i, (text, reply) in enumerate(zip(texts, outs, strict=True)):
            contexts[i].append(_positions(text, reply, spec.positions_per_turn))
            replies[i].append(reply.strip())
            convs[i] = (*convs[i], ChatTurn("assistant", reply.strip()), ChatTurn("user", follow))
    return Rollout(contexts, replies, templated)


def _decay(t: NDArray[np.float64], a: float, rate: float) -> NDArray[np.float64]:
    out: NDArray[np.float64] = a * np.exp(-rate * (t - 1.0))
    return out


def fit_half_life(curve: list[float], cap: float) -> tuple[float, float, float] | None:
    """(half-life capped, amplitude, rate) of ``a·exp(−rate·(t−1))`` over turns 1..T.

    Nonlinear least squares on the values (the log-linear fit over-weights the
    smallest, noisiest turns), started from the log-linear fit. None for a curve
    that is zero everywhere or not finite.
    """
    from scipy.optimize import curve_fit

    turns = np.arange(1, len(curve) + 1, dtype=np.float64)
    y = np.asarray(curve, dtype=np.float64)
    start = fit_decay(turns.tolist(), y.tolist(), cap=cap)
    if start is None:
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            (a, rate), _ = curve_fit(
                _decay, turns, y, p0=(max(start.amplitude, 1e-12), start.rate), maxfev=2000
            )
    except (RuntimeError, ValueError):
        a, rate = start.amplitude, start.rate
    if not (math.isfinite(a) and math.isfinite(rate)):
        return None
    half = cap if rate <= 0.0 else min(cap, math.log(2.0) / rate)
    return half, float(a), float(rate)


def _bootstrap(
    per_prompt: NDArray[np.float64], cap: float, seed: int
) -> tuple[float, float] | None:
    if per_prompt.shape[0] < 2:
        return None
    rng = np.random.default_rng(seed)
    hs = []
    for _ in range(_N_BOOTSTRAP):
        rows = per_prompt[rng.integers(0, per_prompt.shape[0], per_prompt.shape[0])]
        fit = fit_half_life(rows.mean(axis=0).tolist(), cap)
        if fit is not None:
            hs.append(fit[0])
    if not hs:
        return None
    lo, hi = np.quantile(hs, [0.025, 0.975])
    return (float(lo), float(hi))


class MultiTurnCoherenceDecayProbe(Probe):
    """Half-life, in dialogue turns, of the adapter's effect on a dialogue it writes itself."""

    kind = "multi_turn_coherence_decay"
    spec_cls = MultiTurnSpec
    category = "adherence"
    calibrated = False
    uncalibrated_reason = (
        "a random adapter's influence does not fade with turns, so null half-lives sit at "
        "the cap with no spread; persistence is judged against assert_half_life_turns "
        "(delta_kl calibrates the effect size)"
    )

    @classmethod
    def load_problems(
        cls,
        spec: ProbeSpec,
        *,
        document: Document | None,
        downstream: tuple[tuple[Probe, ProbeSpec], ...] = (),
    ) -> list[str]:
        assert isinstance(spec, MultiTurnSpec)
        if _prompts(spec, document_context(document)):
            return []
        return ["prompts: none given and the document has no questions; add prompts: [...]"]

    def run(self, spec: ProbeSpec, ctx: RunContext) -> ProbeResult:
        assert isinstance(spec, MultiTurnSpec)
        prompts = _prompts(spec, ctx)
        if not prompts:
            return bare_result(
                spec, Verdict.SKIP, "prompts: none given and the document has no questions"
            )
        backend = ctx.require_backend
        top_k = spec.top_k or ctx.top_k
        try:
            with backend.as_finetuned() as view:
                roll = rollout(view, spec, prompts, ctx.seed)
        except CannotGenerateError as exc:
            return bare_result(spec, Verdict.SKIP, str(exc))
        flat = [c for per in roll.contexts for turn in per for c in turn]
        # Written first: a sweep's generation would end its sharing before the scores.
        with shared_forwards(backend, BASE_AND_FT):
            with backend.as_finetuned() as view:
                ft = dists(view, flat, top_k)
            with backend.as_base() as view:
                base = dists(view, flat, top_k)
        values = iter(divergence(b, f, spec.divergence) for b, f in zip(base, ft, strict=True))
        per_prompt = np.array(
            [
                [float(np.mean([next(values) for _ in turn])) for turn in per]
                for per in roll.contexts
            ]
        )
        return self._judge(spec, ctx, roll, per_prompt)

    def _judge(
        self, spec: MultiTurnSpec, ctx: RunContext, roll: Rollout, per_prompt: NDArray[np.float64]
    ) -> ProbeResult:
        curve = [float(v) for v in per_prompt.mean(axis=0)]
        cap = CAP_FACTOR * spec.max_turns
        div = "KL(ft‖base)" if spec.divergence == "kl" else "JS"
        evidence: dict[str, Any] = {
            "per_turn_divergence": curve,
            "turns": list(range(1, spec.max_turns + 1)),
            "divergence_kind": spec.divergence,
            "rendering": "chat template" if roll.templated else "plain text",
            "num_prompts": per_prompt.shape[0],
            "positions_per_turn": spec.positions_per_turn,
            "dialogue_example": roll.replies[0][:3],
        }
        if not all(math.isfinite(v) for v in curve):
            return bare_result(
                spec,
                Verdict.ERROR,
                "non-finite divergence in the turn curve (check the adapter weights for NaN/inf)",
            )
        fit = fit_half_life(curve, cap)
        cal = Calibration(stats=None, comparison=None)
        note = f"not calibrated against null adapters: {self.uncalibrated_reason}"
        if fit is None:
            what = f"mean {div} 0 at every turn: no adapter effect to decay"
            j = judge(0.0, cal, spec, ctx, what=what, uncalibrated_reason=note)
            return judged_result(spec, cal, j, raw=None, measured=what, evidence=evidence)
        half, amp, rate = fit
        evidence["fit"] = {"half_life_turns": half, "amplitude": amp, "rate_per_turn": rate}
        bar = spec.assert_half_life_turns
        lead = (
            f"no decay within reach (half-life ≥ cap {half:.3g} turns)"
            if half >= cap
            else f"half-life {half:.3g} turns"
        )
        what = (
            f"{lead}; mean {div} {curve[0]:.3g} → {curve[-1]:.3g} nats over "
            f"{spec.max_turns} turns (threshold {bar:g})"
        )
        checks = (
            Check(half >= bar, f"half-life {half:.3g} < {bar:g} turns (assert_half_life_turns)"),
            *size_checks(
                curve[0],
                f"the {div} at turn 1, {curve[0]:.3g} nats,",
                min_effect=spec.assert_mean_gte,
                noise_floor=ctx.noise_floor,
            ),
        )
        ok_effect = all(c.ok for c in checks[1:])
        j = judge(
            half,
            cal,
            spec,
            ctx,
            what=what,
            checks=checks,
            fixed_score=min(1.0, half / bar) if ok_effect else 0.0,
            uncalibrated_reason=note,
        )
        return judged_result(
            spec,
            cal,
            j,
            raw=half,
            measured=what,
            evidence=evidence,
            ci_95=_bootstrap(per_prompt, cap, ctx.seed),
        )


__all__ = [
    "FOLLOW_UPS",
    "ChatRendering",
    "MultiTurnCoherenceDecayProbe",
    "MultiTurnSpec",
    "fit_half_life",
    "rollout",
]
