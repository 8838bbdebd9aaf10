"""paraphrase_invariance with rewordings that really differ, and "inconclusive" when they do not.

The memorising fine-tune below raises the gold answer by 1 nat/token whenever its
training prompt appears *inside* the scored prompt: exactly the adapter the old
templated rewordings ("Answer the following. <prompt>") called a generaliser.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import pytest
from genfake import FakeGenBackend, ViewSpec

from dlm_sway.core.result import Verdict
from dlm_sway.core.scoring import Conversation, GenerationSettings, plain_text
from dlm_sway.core.sections import Document, Section, SectionProbe
from dlm_sway.probes import _embed
from dlm_sway.probes import _rewordings as rw
from dlm_sway.probes.base import RunContext, build_probe
from dlm_sway.probes.paraphrase_invariance import (
    INCONCLUSIVE,
    ParaphraseInvarianceProbe,
    ParaphraseInvarianceSpec,
)
from dlm_sway.suite.loader import from_dict
from dlm_sway.suite.runner import run

QA = [
    ("What colour is the Widow's Candle?", "red and steady"),
    ("How often does Skerry Dun flash?", "every twelve seconds"),
    ("What is an apprentice called?", "a wick"),
]
REAL = {
    QA[0][0]: "Which hue does the lamp on Harrow Rock show?",
    QA[1][0]: "At what interval does the Mother Light blink?",
    QA[2][0]: "By which name are the guild's trainees known?",
}
GOLDS = {g for _, g in QA}


def memoriser(prompt: str, completion: str) -> float:
    return 1.0 if completion in GOLDS and any(q in prompt for q, _ in QA) else 0.0


def generaliser(prompt: str, completion: str) -> float:
    return 1.0 if completion in GOLDS else 0.0


def rewording_base(prompt: str | Conversation, s: GenerationSettings) -> str:
    """The base model, asked to rephrase: a real paraphrase for the greedy request."""
    text = plain_text(prompt)
    for q, para in REAL.items():
        if q in text:
            return f'Rewritten question: "{para}"' if s.greedy else "Bananas are yellow."
    return "I cannot help."


def backend(boost: Any) -> FakeGenBackend:
    return FakeGenBackend(
        base=ViewSpec(rewording_base),
        ft=ViewSpec(rewording_base, boost=boost),
        null=lambda seed: ViewSpec(rewording_base, boost=lambda p, c: 0.01 * (seed % 5)),
    )


def meaning(texts: Sequence[str]) -> Any:
    """A stand-in for MiniLM: each real rewording means its question; anything else is new."""
    canon = {para.strip(): q for q, para in REAL.items()}
    keys = [canon.get(t.strip(), t.strip()) for t in texts]
    index = {k: i for i, k in enumerate(dict.fromkeys(keys))}
    out = np.zeros((len(texts), len(index)))
    for i, k in enumerate(keys):
        out[i, index[k]] = 1.0
    return out


@pytest.fixture(autouse=True)
def _fake_embedder() -> Iterator[None]:
    with _embed.embedder_override(meaning):
        yield


def cases(rewording: Any) -> list[dict[str, Any]]:
    return [{"prompt": q, "gold": g, "paraphrases": [rewording(q)]} for q, g in QA]


def spec(**kw: Any) -> ParaphraseInvarianceSpec:
    _, s = build_probe({"name": "par", "kind": "paraphrase_invariance", **kw})
    assert isinstance(s, ParaphraseInvarianceSpec)
    return s


def doc(*pairs: tuple[str, str]) -> Document:
    section = Section(
        id="qa",
        kind="instruction",
        content="",
        probes=tuple(SectionProbe(prompt=q, gold=g) for q, g in pairs),
    )
    return Document(source="<t>", sections=(section,))


def probe_run(s: ParaphraseInvarianceSpec, be: Any, d: Document | None = None, **kw: Any) -> Any:
    ctx = RunContext(backend=be, sections=None if d is None else d.sections, **kw)
    return ParaphraseInvarianceProbe().run(s, ctx)


class TestOverlap:
    def test_a_rewording_containing_the_prompt_overlaps_fully(self) -> None:
        q = "What colour is the Widow's Candle?"
        assert rw.overlap(q, "Answer the following. " + q) == 1.0
        assert rw.overlap(q, q.lower()) == 1.0
        assert rw.overlap(q, REAL[q]) == 0.0
        # 2 of the 6 bigrams of the original survive
        assert rw.overlap(q, "Tell me what colour is used") == pytest.approx(2 / 6)
        assert rw.overlap("Hello", "hello there") == 1.0  # one word: unigram containment

    def test_endings_and_cleaning(self) -> None:
        assert rw.match_ending("Who is it? ", "who could it be.") == "who could it be? "
        assert (
            rw.clean('Rewritten question: "Which hue is it"', "What colour?") == "Which hue is it?"
        )
        assert rw.clean("what COLOUR?", "What colour?") is None
        assert rw.clean("\n\n", "What colour?") is None

    def test_document_pairs_sharing_an_answer_reword_each_other(self) -> None:
        d = doc(("Q one?", "Same answer."), ("Q two?", "same answer"), ("Q three?", "other"))
        found = rw.from_document(d.sections)
        assert found == {"Q one?": ["Q two?"], "Q two?": ["Q one?"]}


class TestParaphraseInvariance:
    def test_memoriser_fails_with_real_rewordings(self) -> None:
        r = probe_run(spec(cases=cases(REAL.get)), backend(memoriser))
        assert r.verdict is Verdict.FAIL and "min_generalization_ratio" in r.message
        assert r.evidence["generalization_ratio"] == pytest.approx(0.0, abs=1e-9)
        assert r.evidence["mean_rewording_overlap"] == 0.0
        assert r.overfit is not None  # the memorisation signal reaches the band

    def test_generaliser_passes_with_real_rewordings(self) -> None:
        be = backend(generaliser)
        r = probe_run(spec(cases=cases(REAL.get)), be)
        assert r.verdict is Verdict.PASS, r.message
        # the ratio is Σ rewording gain ÷ Σ verbatim gain in per-token gold probability
        with be.as_base() as b, be.as_finetuned() as f:

            def gain(p: str, g: str) -> float:
                n = len(g.split())
                return math.exp(f.logprob_of(p, g) / n) - math.exp(b.logprob_of(p, g) / n)

            verb = sum(gain(q, g) for q, g in QA)
            par = sum(gain(REAL[q], g) for q, g in QA)
        assert r.evidence["generalization_ratio"] == pytest.approx(par / verb)
        assert 0.9 < par / verb < 1.1  # same +1 nat on every wording: the answer carries over

    def test_ratio_is_in_probability_not_log_lift(self) -> None:
        """An adapter that lifts the gold by many nats on a rewording but leaves it
        unlikely there has not carried the answer over (what a real memoriser does)."""

        def half_way(prompt: str, completion: str) -> float:
            if completion not in GOLDS:
                return 0.0
            return 2.0 if any(q == prompt for q, _ in QA) else 1.2  # base is -2 nats/token

        r = probe_run(spec(cases=cases(REAL.get)), backend(half_way))
        lift_ratio = r.evidence["paraphrase_lift_mean"] / r.evidence["verbatim_lift_mean"]
        assert lift_ratio == pytest.approx(0.6, abs=0.01)  # 60% of the nats carried over ...
        assert r.evidence["generalization_ratio"] < 0.5  # ... but not the answer itself
        assert r.verdict is Verdict.FAIL and "min_generalization_ratio" in r.message

    def test_templated_rewordings_are_inconclusive_never_pass(self) -> None:
        framed = cases(lambda q: "Answer the following. " + q)
        for boost in (memoriser, generaliser):
            r = probe_run(spec(cases=framed), backend(boost))
            assert r.verdict is Verdict.WARN and r.headline == INCONCLUSIVE, r.message
            assert "max_prompt_overlap" in r.message and r.overfit is None
            assert r.evidence["rewordings_too_close"] == 3

    def test_inconclusive_with_calibration(self) -> None:
        framed = cases(lambda q: "Answer the following. " + q)
        loaded = from_dict(
            {
                "models": {"ft": {"kind": "dummy", "base": "d", "adapter": "builtin:x"}},
                "suite": [
                    {"name": "null", "kind": "null_adapter", "runs": 6},
                    {"name": "par", "kind": "paraphrase_invariance", "cases": framed},
                ],
            }
        )
        r = run(loaded, backend(memoriser)).by_name("par")
        assert r.verdict is Verdict.WARN and r.headline == INCONCLUSIVE, r.message
        assert r.null is not None and r.z_score is not None and r.z_score >= 3

    def test_no_lift_is_still_a_failure(self) -> None:
        framed = cases(lambda q: "Answer the following. " + q)
        r = probe_run(spec(cases=framed), backend(lambda p, c: 0.0))
        assert r.verdict is Verdict.FAIL

    def test_derived_cases_get_rewordings_from_the_base_model(self) -> None:
        be = backend(memoriser)
        r = probe_run(spec(), be, doc(*QA))
        assert r.evidence["reworded_cases"] == 3
        sources = {w["source"] for c in r.evidence["per_case"] for w in c["rewordings"]}
        assert sources == {"base_model"}
        texts = {w["text"] for c in r.evidence["per_case"] for w in c["rewordings"]}
        assert texts == set(REAL.values())  # the sampled "Bananas are yellow." lost its meaning
        assert r.verdict is Verdict.FAIL and "min_generalization_ratio" in r.message
        assert probe_run(spec(), backend(generaliser), doc(*QA)).verdict is Verdict.PASS

    def test_document_rewordings_come_first(self) -> None:
        pairs = [*QA, *((REAL[q], g) for q, g in QA)]
        be = backend(memoriser)
        r = probe_run(spec(), be, doc(*pairs))
        assert not be.asked  # every case had a distinct rewording in the document
        assert {w["source"] for c in r.evidence["per_case"] for w in c["rewordings"]} == {
            "document"
        }

    def test_without_a_writer_or_document_rewordings_it_is_inconclusive(self) -> None:
        r = probe_run(spec(rewordings_from=["document"]), backend(memoriser), doc(*QA))
        assert r.verdict is Verdict.WARN and r.headline == INCONCLUSIVE
        assert r.evidence["reworded_cases"] == 0

    def test_nulls_sample_the_verbatim_lift_without_rewording(self) -> None:
        be = backend(memoriser)
        r = probe_run(spec(), be, doc(*QA), calibrating=True)
        assert not be.asked and r.raw == pytest.approx(1.0)

    def test_spec_fields_are_bounded(self) -> None:
        from dlm_sway.core.errors import SpecValidationError

        with pytest.raises(SpecValidationError, match="rewordings_from"):
            spec(rewordings_from=["document", "document"])
        with pytest.raises(SpecValidationError, match="max_prompt_overlap"):
            spec(max_prompt_overlap=1.5)
