"""section_internalization, paraphrase_invariance and preference_flip on the dummy backend.

The fine-tune is simulated by :class:`BoostBackend`: the dummy's own views plus a
known per-token log-prob bonus on chosen text, so every expected value can be
computed by hand. Null adapters come from the dummy (norm-matched random shifts).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import pytest

from dlm_sway.backends.dummy import DummyDifferentialBackend
from dlm_sway.core.errors import ProbeError, SpecValidationError
from dlm_sway.core.result import SuiteResult, Verdict
from dlm_sway.core.scoring import NULL_CONSTRUCTIONS, RollingLogprob, ScoringModel
from dlm_sway.core.sections import Document, Section, SectionPreference, SectionProbe
from dlm_sway.probes import _logprob
from dlm_sway.probes.base import RunContext, build_probe, registry
from dlm_sway.probes.paraphrase_invariance import (
    ParaphraseInvarianceProbe,
    ParaphraseInvarianceSpec,
)
from dlm_sway.probes.preference_flip import PreferenceFlipProbe, PreferenceFlipSpec
from dlm_sway.probes.section_internalization import (
    SectionInternalizationProbe,
    SectionInternalizationSpec,
    decisive_rank,
    relative_lift,
    section_scores,
)
from dlm_sway.suite.loader import from_dict
from dlm_sway.suite.runner import run

NULL5 = {"name": "null", "kind": "null_adapter", "runs": 5}
PairBoost = Callable[[str, str], float]
TextBoost = Callable[[str], float]


def _no_pair(prompt: str, completion: str) -> float:
    return 0.0


def _no_text(text: str) -> float:
    return 0.0


class BoostView:
    """A dummy view whose log-probs get ``boost`` extra nats per token where chosen."""

    def __init__(
        self,
        inner: ScoringModel,
        pair_boost: PairBoost,
        text_boost: TextBoost,
        fail_on: str | None,
    ) -> None:
        self._inner = inner
        self._pair = pair_boost
        self._text = text_boost
        self._fail_on = fail_on
        self.batch_calls = 0

    @property
    def id(self) -> str:
        return self._inner.id

    def completion_token_count(self, prompt: str, completion: str) -> int:
        return len(completion.split())

    def logprob_of(self, prompt: str, completion: str) -> float:
        if self._fail_on is not None and completion == self._fail_on:
            raise ProbeError("logprob_of", "completion adds no tokens")
        n = len(completion.split())
        return self._inner.logprob_of(prompt, completion) + self._pair(prompt, completion) * n

    def rolling_logprob(self, text: str) -> RollingLogprob:
        r = self._inner.rolling_logprob(text)
        lps = (r.logprobs + np.float32(self._text(text))).astype(np.float32)
        return RollingLogprob(r.token_ids, lps, r.num_tokens, float(np.sum(lps, dtype=np.float64)))

    def next_token_dist(self, prompt: str, top_k: int = 256) -> Any:
        return self._inner.next_token_dist(prompt, top_k)

    def next_token_dist_batch(self, prompts: Sequence[str], top_k: int = 256) -> Any:
        return self._inner.next_token_dist_batch(prompts, top_k)

    def generate(self, prompt: str, max_new_tokens: int, **kw: Any) -> str:
        return self._inner.generate(prompt, max_new_tokens, **kw)


class BatchedBoostView(BoostView):
    """Adds the batched methods HF views have, counting their calls."""

    def logprob_of_batch(self, pairs: Sequence[tuple[str, str]]) -> list[float]:
        self.batch_calls += 1
        return [self.logprob_of(p, c) for p, c in pairs]

    def rolling_logprob_batch(self, texts: Sequence[str]) -> list[RollingLogprob]:
        self.batch_calls += 1
        return [self.rolling_logprob(t) for t in texts]


class BoostBackend:
    """Base = dummy base; fine-tune = dummy fine-tune + the chosen bonus; nulls = dummy nulls."""

    null_constructions = NULL_CONSTRUCTIONS  # as_null_adapter forwards construction=

    def __init__(
        self,
        *,
        pair_boost: PairBoost = _no_pair,
        text_boost: TextBoost = _no_text,
        fail_on: str | None = None,
        batched: bool = False,
        **dummy: Any,
    ) -> None:
        self.inner = DummyDifferentialBackend(**dummy)
        self._pair = pair_boost
        self._text = text_boost
        self._fail_on = fail_on
        self._cls = BatchedBoostView if batched else BoostView
        self.views: list[BoostView] = []

    @contextmanager
    def _wrap(self, opener: Any, pair: PairBoost, text: TextBoost) -> Iterator[ScoringModel]:
        with opener as view:
            wrapped = self._cls(view, pair, text, self._fail_on)
            self.views.append(wrapped)
            yield wrapped

    def as_base(self) -> Any:
        return self._wrap(self.inner.as_base(), _no_pair, _no_text)

    def as_finetuned(self) -> Any:
        return self._wrap(self.inner.as_finetuned(), self._pair, self._text)

    def as_null_adapter(self, seed: int, **kw: Any) -> Any:
        return self._wrap(self.inner.as_null_adapter(seed, **kw), _no_pair, _no_text)


def _marker(word: str, nats: float) -> TextBoost:
    return lambda text: nats if word in text else 0.0


def _words(n: int, stem: str) -> str:
    return " ".join(f"{stem}{i}" for i in range(n))


ZEBRA = Section(id="zebra", kind="prose", content="zebra " + _words(30, "stripe"))
RIVER = Section(id="river", kind="prose", content="river " + _words(30, "water"))
QA = Section(
    id="qa",
    kind="instruction",
    content="questions about cities",
    probes=(
        SectionProbe(prompt="What is the capital of France?", gold="Paris city centre"),
        SectionProbe(prompt="Name a big river.", gold="the Nile river"),
    ),
)
PREF = Section(
    id="pref",
    kind="preference",
    content="be polite",
    preferences=(
        SectionPreference(prompt="Reply:", chosen="good thanks friend", rejected="go away"),
        SectionPreference(prompt="Greet:", chosen="good morning", rejected="whatever then"),
    ),
)


def _ctx(backend: Any, sections: tuple[Section, ...] | None, **kw: Any) -> RunContext:
    return RunContext(backend=backend, sections=sections, **kw)


def _suite(
    make_suite: Any, *entries: dict[str, Any], backend: Any, sections: tuple[Section, ...] | None
) -> SuiteResult:
    if sections is None:
        return run(make_suite(*entries), backend)
    loaded = from_dict(
        {
            "models": {"ft": {"kind": "dummy", "base": "dummy-base", "adapter": "builtin:x"}},
            "suite": list(entries),
        },
        document=Document(source="<test>", sections=sections),
    )
    return run(loaded, backend)


def _rolling_nll(view: ScoringModel, text: str) -> float:
    return -view.rolling_logprob(text).mean_logprob


# --- registry and the shared helper -----------------------------------------------------------


def test_probes_are_registered_as_attribution() -> None:
    reg = registry()
    for kind in ("section_internalization", "paraphrase_invariance", "preference_flip"):
        assert reg[kind].category == "attribution"
        assert reg[kind].summary()


class TestLogprobHelper:
    PAIRS = [("The cat", "sat on the mat"), ("Hello", "world again")]

    def test_fallback_equals_batched(self) -> None:
        plain = BoostBackend()
        batched = BoostBackend(batched=True)
        with plain.as_base() as v:
            a = _logprob.logprobs(v, self.PAIRS)
            ra = _logprob.rollings(v, ["one two three", "four five"])
        with batched.as_base() as v:
            b = _logprob.logprobs(v, self.PAIRS)
            rb = _logprob.rollings(v, ["one two three", "four five"])
        assert a == pytest.approx(b)
        assert [r.total_logprob for r in ra] == pytest.approx([r.total_logprob for r in rb])
        assert batched.views[0].batch_calls == 2 and plain.views[0].batch_calls == 0

    def test_empty_inputs_cost_nothing(self) -> None:
        be = BoostBackend(batched=True)
        with be.as_base() as v:
            assert _logprob.logprobs(v, []) == [] and _logprob.rollings(v, []) == []
        assert be.views[0].batch_calls == 0

    def test_real_token_counts_and_per_token(self) -> None:
        be = BoostBackend()
        with be.as_base() as v:
            assert _logprob.token_counts(v, self.PAIRS) == [4, 2]
        assert _logprob.per_token([-8.0, -3.0], [4, 2]) == [-2.0, -1.5]

    def test_try_logprobs_isolates_unscorable_pairs(self) -> None:
        be = BoostBackend(fail_on="world again", batched=True)
        with be.as_base() as v:
            values, reasons = _logprob.try_logprobs(v, self.PAIRS)
        assert values[0] is not None and values[1] is None
        assert len(reasons) == 1 and "no tokens" in reasons[0]


# --- section_internalization ------------------------------------------------------------------


def sis(**kw: Any) -> dict[str, Any]:
    return {"name": "sis", "kind": "section_internalization", **kw}


class TestSectionMaths:
    def test_relative_lift(self) -> None:
        assert relative_lift(4.0, 3.0) == pytest.approx(0.25)
        assert relative_lift(0.0, -0.5) == pytest.approx(0.5)  # absolute fallback

    def test_scores_pin(self) -> None:
        sc = section_scores([4.0, 5.0, 2.0], [2.0, 5.0, 2.2])
        assert sc.own == pytest.approx([0.5, 0.0, -0.1])
        assert sc.leak == pytest.approx([-0.05, 0.2, 0.25])
        assert sc.effective == pytest.approx([0.55, -0.2, -0.35])
        # a section is credited only for a real lift: min(own, effective)
        assert sc.internalization == pytest.approx([0.5, -0.2, -0.35])

    def test_effective_lifts_sum_to_zero(self) -> None:
        # why the reference's "mean effective SIS" raw was useless: it is always 0
        sc = section_scores([5.0, 4.0, 6.0, 3.0], [4.0, 4.1, 3.0, 2.9])
        assert sum(sc.effective) == pytest.approx(0.0, abs=1e-12)

    def test_harm_elsewhere_earns_no_credit(self) -> None:
        sc = section_scores([4.0, 4.0], [4.0, 6.0])  # section 0 unchanged, section 1 worse
        assert sc.effective[0] == pytest.approx(0.5)
        assert sc.internalization[0] == pytest.approx(0.0)

    @pytest.mark.parametrize(
        ("n", "frac", "k"), [(2, 0.5, 1), (10, 0.7, 7), (3, 0.5, 2), (4, 1.0, 4), (5, 0.01, 1)]
    )
    def test_decisive_rank(self, n: int, frac: float, k: int) -> None:
        assert decisive_rank(n, frac) == k


class TestSectionInternalization:
    def test_no_sections_skips_with_the_fix(self) -> None:
        r = SectionInternalizationProbe().run(
            SectionInternalizationSpec(name="s"), _ctx(BoostBackend(), None)
        )
        assert r.verdict is Verdict.SKIP and "dlm_source" in r.message

    def test_one_eligible_section_skips(self) -> None:
        spec = SectionInternalizationSpec(name="s", include_kinds=["prose"])
        r = SectionInternalizationProbe().run(spec, _ctx(BoostBackend(), (ZEBRA, QA)))
        assert r.verdict is Verdict.SKIP
        assert "at least 2" in r.message and "include_kinds" in r.message

    def test_empty_document_skips(self) -> None:
        r = SectionInternalizationProbe().run(
            SectionInternalizationSpec(name="s"), _ctx(BoostBackend(), ())
        )
        assert r.verdict is Verdict.SKIP and "no sections" in r.message

    def test_malformed_spec_is_a_load_error(self) -> None:
        with pytest.raises(SpecValidationError, match="include_kinds"):
            build_probe(sis(include_kinds=[]))
        with pytest.raises(SpecValidationError, match="assert_passing_section_frac"):
            build_probe(sis(assert_passing_section_frac=0.0))
        with pytest.raises(SpecValidationError, match="unknown key"):
            build_probe(sis(threshold=0.1))

    def test_trained_section_passes_untouched_one_does_not(self) -> None:
        be = BoostBackend(text_boost=_marker("zebra", 3.0), strength=0.0)
        r = SectionInternalizationProbe().run(
            SectionInternalizationSpec(name="s"), _ctx(be, (ZEBRA, RIVER))
        )
        assert r.verdict is Verdict.PASS, r.message
        per = {s["section_id"]: s for s in r.evidence["per_section"]}
        assert per["zebra"]["passed"] is True and per["river"]["passed"] is False
        # maths pin: base NLL is the rolling NLL; the fine-tune lowers it by exactly 3 nats/token
        with DummyDifferentialBackend().as_base() as v:
            b_z, b_r = _rolling_nll(v, ZEBRA.content), _rolling_nll(v, RIVER.content)
        assert per["zebra"]["base_nll"] == pytest.approx(b_z, rel=1e-5)
        assert per["zebra"]["ft_nll"] == pytest.approx(b_z - 3.0, rel=1e-5)
        assert per["river"]["own_lift"] == pytest.approx(0.0, abs=1e-6)
        assert per["zebra"]["own_lift"] == pytest.approx(3.0 / b_z, rel=1e-5)
        assert r.raw == pytest.approx(3.0 / b_z, rel=1e-5)  # k = ⌈0.5·2⌉ = 1: the best section
        assert r.evidence["passing_sections"] == ["zebra"]
        assert r.evidence["passing_frac"] == 0.5 and r.score == 0.5
        assert r.base_value == pytest.approx((b_z + b_r) / 2, rel=1e-5)
        assert r.headline == "above threshold"
        assert "no null calibration for section_internalization" in r.message
        assert "1/2 section(s) internalised" in r.measured
        assert r.effect_ratio is None  # a signed lift has no ratio to a null median

    def test_requiring_every_section_fails(self) -> None:
        be = BoostBackend(text_boost=_marker("zebra", 3.0), strength=0.0)
        spec = SectionInternalizationSpec(name="s", assert_passing_section_frac=1.0)
        r = SectionInternalizationProbe().run(spec, _ctx(be, (ZEBRA, RIVER)))
        assert r.verdict is Verdict.FAIL and r.headline == "a fixed check failed"
        assert "failed: 1/2 section(s) internalised" in r.message
        assert "need 2 (assert_passing_section_frac 1)" in r.message
        assert r.score is not None and r.score <= 0.25
        assert r.raw is not None and r.raw < 0  # the 2nd best section's internalisation

    def test_noop_adapter_fails(self) -> None:
        r = SectionInternalizationProbe().run(
            SectionInternalizationSpec(name="s"), _ctx(BoostBackend(strength=0.0), (ZEBRA, RIVER))
        )
        assert r.verdict is Verdict.FAIL
        assert r.raw == pytest.approx(0.0, abs=1e-9)

    def test_instruction_and_preference_sections_use_their_pairs(self) -> None:
        lift = 0.5
        be = BoostBackend(pair_boost=lambda p, c: lift, strength=0.0, batched=True)
        r = SectionInternalizationProbe().run(
            SectionInternalizationSpec(name="s"), _ctx(be, (QA, PREF, RIVER))
        )
        per = {s["section_id"]: s for s in r.evidence["per_section"]}
        assert per["qa"]["measured_on"] == "probes"
        assert per["pref"]["measured_on"] == "preferences"
        assert per["river"]["measured_on"] == "content"
        with DummyDifferentialBackend().as_base() as v:
            expected = -np.mean(
                [v.logprob_of(p.prompt, p.gold) / len(p.gold.split()) for p in QA.probes]
            )
        assert per["qa"]["base_nll"] == pytest.approx(expected)
        assert per["qa"]["ft_nll"] == pytest.approx(expected - lift)
        # everything under one view is scored in one batch per kind of call
        assert [v.batch_calls for v in be.views] == [2, 2]

    def test_non_finite_is_an_error(self) -> None:
        be = BoostBackend(nan=True)
        r = SectionInternalizationProbe().run(
            SectionInternalizationSpec(name="s"), _ctx(be, (ZEBRA, RIVER))
        )
        assert r.verdict is Verdict.ERROR
        assert r.raw is None and "non-finite" in r.message

    def test_calibrated_pass(self, make_suite: Any) -> None:
        be = BoostBackend(text_boost=_marker("zebra", 3.0))
        res = _suite(make_suite, NULL5, sis(), backend=be, sections=(ZEBRA, RIVER))
        assert res.by_name("null").evidence["calibrated"] == ["sis"]
        r = res.by_name("sis")
        assert r.verdict is Verdict.PASS, r.message
        assert r.z_score is not None and r.z_score >= 3.0 and r.p_value is not None
        assert r.null is not None and r.null.k == 5 and r.null.non_negative is False
        assert r.weight == 1.0 and r.category == "attribution"
        assert not {"weight", "null", "headline"} & set(r.evidence)
        assert r.headline == "above noise" and r.message.startswith("above noise: ")
        assert r.effect_ratio is None and "×" not in r.message

    def test_calibrated_random_adapter_is_noise(self, make_suite: Any) -> None:
        be = BoostBackend(planted=0.0)  # the "fine-tune" is itself a random direction
        res = _suite(make_suite, NULL5, sis(), backend=be, sections=(ZEBRA, RIVER))
        r = res.by_name("sis")
        assert r.z_score is not None and r.z_score < 3.0 and r.p_value is not None
        assert r.verdict is not Verdict.PASS
        # the words follow p: noise only at p ≥ 0.05, otherwise real but below the bar
        if r.p_value >= 0.05:
            assert r.verdict is Verdict.FAIL and r.headline == "indistinguishable from noise"
            assert r.score is not None and r.score <= 0.25
        else:
            assert "indistinguishable" not in r.message
            assert r.score is not None and r.score <= 0.5

    def test_calibration_is_the_entry_itself(self) -> None:
        spec = SectionInternalizationSpec(name="s")
        ctx = _ctx(None, (ZEBRA, RIVER))
        assert SectionInternalizationProbe.calibrate_spec(ctx, spec) is spec
        assert SectionInternalizationProbe.calibrate_spec(_ctx(None, None), spec) is None


# --- paraphrase_invariance --------------------------------------------------------------------

CASES: list[dict[str, Any]] = [
    {"prompt": "Capital of France?", "gold": "Paris", "paraphrases": ["France's capital?"]},
    {
        "prompt": "Two plus two?",
        "gold": "four exactly",
        "paraphrases": ["What is 2+2?", "Add two and two."],
    },
]
TRAINED_PROMPTS = {c["prompt"] for c in CASES}


def par(**kw: Any) -> dict[str, Any]:
    return {"name": "par", "kind": "paraphrase_invariance", "cases": CASES, **kw}


def _par_spec(**kw: Any) -> ParaphraseInvarianceSpec:
    _, spec = build_probe(par(**kw))
    assert isinstance(spec, ParaphraseInvarianceSpec)
    return spec


def _everywhere(p: str, c: str) -> float:
    return 1.0


def _verbatim_only(p: str, c: str) -> float:
    return 1.0 if p in TRAINED_PROMPTS else 0.0


class TestParaphraseInvariance:
    def test_maths_pin(self) -> None:
        be = BoostBackend(pair_boost=_verbatim_only, strength=0.0)
        r = ParaphraseInvarianceProbe().run(_par_spec(), _ctx(be, None))
        assert r.raw == pytest.approx(1.0)  # +1 nat per gold token on the training prompts
        assert r.evidence["paraphrase_lift_mean"] == pytest.approx(0.0, abs=1e-9)
        assert r.evidence["generalization_ratio"] == pytest.approx(0.0, abs=1e-9)
        with DummyDifferentialBackend().as_base() as v:
            base = np.mean(
                [v.logprob_of(c["prompt"], c["gold"]) / len(c["gold"].split()) for c in CASES]
            )
        assert r.base_value == pytest.approx(base) and r.ft_value == pytest.approx(base + 1.0)
        assert r.ci_95 is not None and r.ci_95 == pytest.approx((1.0, 1.0))

    def test_generalising_adapter(self) -> None:
        be = BoostBackend(pair_boost=_everywhere, strength=0.0)
        gen = ParaphraseInvarianceProbe().run(_par_spec(), _ctx(be, None))
        assert gen.verdict is Verdict.PASS, gen.message
        # the ratio compares gains in per-token gold probability (+1 nat everywhere: e − 1
        # times each wording's base probability), summed over the cases
        with DummyDifferentialBackend().as_base() as v:

            def p(prompt: str, gold: str) -> float:
                return math.exp(v.logprob_of(prompt, gold) / len(gold.split()))

            verb = sum(p(c["prompt"], c["gold"]) for c in CASES)
            par = sum(np.mean([p(x, c["gold"]) for x in c["paraphrases"]]) for c in CASES)
        ratio = gen.evidence["generalization_ratio"]
        assert ratio == pytest.approx(par / verb) and ratio > 0.5
        mem = ParaphraseInvarianceProbe().run(_par_spec(intent="memorize"), _ctx(be, None))
        assert mem.verdict is Verdict.FAIL and mem.headline == "a fixed check failed"
        assert f"generalisation ratio {ratio:.3g} > 0.5 (max_generalization_ratio_if_memorize" in (
            mem.message
        )
        assert mem.score is not None and mem.score <= 0.25

    def test_memorising_adapter(self) -> None:
        be = BoostBackend(pair_boost=_verbatim_only, strength=0.0)
        mem = ParaphraseInvarianceProbe().run(_par_spec(intent="memorize"), _ctx(be, None))
        assert mem.verdict is Verdict.PASS, mem.message
        gen = ParaphraseInvarianceProbe().run(_par_spec(), _ctx(be, None))
        assert gen.verdict is Verdict.FAIL and gen.headline == "a fixed check failed"
        assert "generalisation ratio 0 < 0.5 (min_generalization_ratio" in gen.message
        assert gen.raw == mem.raw  # intent changes the verdict, never the statistic

    def test_no_lift_fails_either_way(self) -> None:
        be = BoostBackend(strength=0.0)
        for intent in ("generalize", "memorize"):
            r = ParaphraseInvarianceProbe().run(_par_spec(intent=intent), _ctx(be, None))
            assert r.verdict is Verdict.FAIL and r.headline == "below threshold"
            assert "(threshold 0.2, min_verbatim_lift)" in r.message

    def test_malformed_cases_are_load_errors(self) -> None:
        bad = [{"prompt": "Q?", "gold": "A", "paraphrases": []}]
        with pytest.raises(SpecValidationError, match="paraphrases"):
            build_probe(par(cases=bad))
        with pytest.raises(SpecValidationError, match="gold"):
            build_probe(par(cases=[{"prompt": "Q?", "gold": " ", "paraphrases": ["q"]}]))
        with pytest.raises(SpecValidationError, match="intent"):
            build_probe(par(intent="both"))

    def test_no_cases_no_sections_skips(self) -> None:
        r = ParaphraseInvarianceProbe().run(_par_spec(cases=[]), _ctx(BoostBackend(), None))
        assert r.verdict is Verdict.SKIP and "cases:" in r.message and "dlm_source" in r.message
        r = ParaphraseInvarianceProbe().run(_par_spec(cases=[]), _ctx(BoostBackend(), (RIVER,)))
        assert r.verdict is Verdict.SKIP and "instruction sections" in r.message

    def test_cases_derived_from_instruction_sections(self) -> None:
        # The dummy views cannot write, and QA has no shared answers: no rewording at all,
        # so the ratio cannot be judged (rewordings: tests/unit/test_paraphrase_rewordings.py).
        be = BoostBackend(pair_boost=_everywhere, strength=0.0)
        r = ParaphraseInvarianceProbe().run(_par_spec(cases=[]), _ctx(be, (RIVER, QA)))
        assert r.evidence["cases_from"] == "sections" and r.evidence["num_cases"] == 2
        assert r.evidence["per_case"][0]["num_paraphrases"] == 0
        assert r.verdict is Verdict.WARN and r.headline == "inconclusive", r.message

    def test_non_finite_is_an_error(self) -> None:
        r = ParaphraseInvarianceProbe().run(_par_spec(), _ctx(BoostBackend(nan=True), None))
        assert r.verdict is Verdict.ERROR and r.raw is None

    def test_calibrated(self, make_suite: Any) -> None:
        # 3 nats per gold token, over the dummy fine-tune's own random shift
        be = BoostBackend(pair_boost=lambda p, c: 3.0)
        res = _suite(make_suite, NULL5, par(), backend=be, sections=None)
        r = res.by_name("par")
        assert r.verdict is Verdict.PASS, r.message
        assert r.z_score is not None and r.z_score >= 3 and r.null is not None and r.null.k == 5
        assert r.effect_ratio is None and "×" not in r.message  # a signed lift
        assert not {"weight", "null", "headline"} & set(r.evidence)
        noise = _suite(make_suite, NULL5, par(), backend=BoostBackend(planted=0.0), sections=None)
        assert noise.by_name("par").verdict is Verdict.FAIL

    def test_calibration_is_the_entry_itself(self) -> None:
        spec = _par_spec()
        assert ParaphraseInvarianceProbe.calibrate_spec(_ctx(None, None), spec) is spec
        empty = _par_spec(cases=[])
        assert ParaphraseInvarianceProbe.calibrate_spec(_ctx(None, None), empty) is None
        assert ParaphraseInvarianceProbe.calibrate_spec(_ctx(None, (QA,)), empty) is empty


# --- preference_flip --------------------------------------------------------------------------

TRIPLES = [
    {"prompt": f"Question {i}:", "chosen": f"good answer {i}", "rejected": f"bad reply {i}"}
    for i in range(8)
]


def pf(**kw: Any) -> dict[str, Any]:
    return {"name": "pf", "kind": "preference_flip", "triples": TRIPLES, **kw}


def _pf_spec(**kw: Any) -> PreferenceFlipSpec:
    _, spec = build_probe(pf(**kw))
    assert isinstance(spec, PreferenceFlipSpec)
    return spec


def _good(nats: float) -> PairBoost:
    return lambda p, c: nats if c.startswith("good") else 0.0


def _margins(triples: list[dict[str, str]]) -> list[float]:
    with DummyDifferentialBackend().as_base() as v:
        return [
            v.logprob_of(t["prompt"], t["chosen"]) - v.logprob_of(t["prompt"], t["rejected"])
            for t in triples
        ]


class TestPreferenceFlip:
    def test_maths_pin_and_flips(self) -> None:
        base = _margins(TRIPLES)
        wrong = [m for m in base if m < 0]
        assert len(wrong) >= 3  # the fixture exercises the decided branch
        be = BoostBackend(pair_boost=_good(4.0), strength=0.0)
        r = PreferenceFlipProbe().run(_pf_spec(), _ctx(be, None))
        # "good answer i" has 3 tokens: the margin of every triple moves by exactly 12 nats
        assert r.raw == pytest.approx(12.0)
        assert r.base_value == pytest.approx(float(np.mean(base)))
        assert r.ft_value == pytest.approx(float(np.mean(base)) + 12.0)
        flipped = sum(m + 12.0 > 0 for m in wrong)
        assert r.evidence["base_wrong"] == len(wrong) and r.evidence["flipped"] == flipped
        assert r.evidence["flip_rate"] == pytest.approx(flipped / len(wrong))
        assert r.evidence["implicit_reward_accuracy"] == 1.0
        assert flipped == len(wrong) and r.verdict is Verdict.PASS
        assert "no null calibration for preference_flip" in r.message
        assert f"flip rate {flipped}/{len(wrong)} = 1 ≥ 0.7 (assert_flip_rate_gte)" in r.measured

    def test_too_few_flips_fail_naming_the_field(self) -> None:
        wrong = [m for m in _margins(TRIPLES) if m < 0]
        be = BoostBackend(pair_boost=_good(1e-3), strength=0.0)  # too small to flip any
        r = PreferenceFlipProbe().run(_pf_spec(), _ctx(be, None))
        assert r.verdict is Verdict.FAIL and r.headline == "a fixed check failed"
        assert f"flip rate 0/{len(wrong)} = 0 < 0.7 (assert_flip_rate_gte)" in r.message
        assert r.score is not None and r.score <= 0.25

    def test_no_shift_fails(self) -> None:
        r = PreferenceFlipProbe().run(_pf_spec(), _ctx(BoostBackend(strength=0.0), None))
        assert r.verdict is Verdict.FAIL and r.evidence["flipped"] == 0
        assert r.raw == pytest.approx(0.0, abs=1e-9)

    def test_too_few_wrong_base_preferences_warns_with_the_same_statistic(self) -> None:
        base = _margins(TRIPLES)
        right = [t for t, m in zip(TRIPLES, base, strict=True) if m > 0][:2]
        be = BoostBackend(pair_boost=_good(1.0), strength=0.0)
        r = PreferenceFlipProbe().run(_pf_spec(triples=right), _ctx(be, None))
        assert r.verdict is Verdict.WARN and r.headline == "a fixed check could not be judged"
        assert "min_triples_for_decision 3" in r.message and "add triples" in r.message
        assert r.score is not None and r.score <= 0.5
        assert r.raw == pytest.approx(3.0)  # still the mean margin shift
        assert r.evidence["flip_rate"] is None

    def test_triples_from_preference_sections(self) -> None:
        be = BoostBackend(pair_boost=_good(1.0), strength=0.0)
        r = PreferenceFlipProbe().run(_pf_spec(triples=[]), _ctx(be, (RIVER, PREF)))
        assert r.evidence["triples_from"] == "sections" and r.evidence["total"] == 2

    def test_no_triples_skips(self) -> None:
        r = PreferenceFlipProbe().run(_pf_spec(triples=[]), _ctx(BoostBackend(), None))
        assert r.verdict is Verdict.SKIP and "triples:" in r.message and "dlm_source" in r.message
        r = PreferenceFlipProbe().run(_pf_spec(triples=[]), _ctx(BoostBackend(), (RIVER,)))
        assert r.verdict is Verdict.SKIP and "no preference sections" in r.message

    def test_malformed_triples_are_load_errors(self) -> None:
        same = [{"prompt": "p", "chosen": "x y", "rejected": "x y"}]
        with pytest.raises(SpecValidationError, match="identical"):
            build_probe(pf(triples=same))
        with pytest.raises(SpecValidationError, match="rejected"):
            build_probe(pf(triples=[{"prompt": "p", "chosen": "x", "rejected": ""}]))
        with pytest.raises(SpecValidationError, match="min_triples_for_decision"):
            build_probe(pf(min_triples_for_decision=0))

    def test_unscorable_triples_are_dropped(self) -> None:
        be = BoostBackend(fail_on="bad reply 0", batched=True, strength=0.0)
        r = PreferenceFlipProbe().run(_pf_spec(), _ctx(be, None))
        assert r.evidence["dropped_triples"] == 1 and r.evidence["total"] == 7
        assert "no tokens" in r.evidence["dropped_reasons"][0]
        only = _pf_spec(triples=TRIPLES[:1])
        err = PreferenceFlipProbe().run(only, _ctx(be, None))
        assert err.verdict is Verdict.ERROR and "unscorable" in err.message

    def test_non_finite_is_an_error(self) -> None:
        r = PreferenceFlipProbe().run(_pf_spec(), _ctx(BoostBackend(nan=True), None))
        assert r.verdict is Verdict.ERROR and r.raw is None and r.ci_95 is None

    def test_calibrated(self, make_suite: Any) -> None:
        res = _suite(
            make_suite, NULL5, pf(), backend=BoostBackend(pair_boost=_good(4.0)), sections=None
        )
        r = res.by_name("pf")
        assert r.z_score is not None and r.z_score >= 3, r.message
        assert r.null is not None and r.null.k == 5 and r.weight == 1.0
        assert r.effect_ratio is None and "×" not in r.message  # a signed shift
        assert not {"weight", "null", "headline"} & set(r.evidence)
        cal = res.by_name("null").calibration
        assert cal is not None
        samples = cal.stats["pf"].samples
        assert len(samples) == 5 and all(math.isfinite(s) for s in samples)
        assert r.ci_95 is not None and r.ci_95[0] <= r.raw <= r.ci_95[1]  # type: ignore[operator]
        noise = _suite(make_suite, NULL5, pf(), backend=BoostBackend(planted=0.0), sections=None)
        n = noise.by_name("pf")
        assert n.verdict is Verdict.FAIL and "noise" in n.message
        assert n.p_value is not None and n.p_value >= 0.05

    def test_calibration_is_the_entry_itself(self) -> None:
        spec = _pf_spec()
        assert PreferenceFlipProbe.calibrate_spec(_ctx(None, None), spec) is spec
        assert PreferenceFlipProbe.calibrate_spec(_ctx(None, None), _pf_spec(triples=[])) is None
