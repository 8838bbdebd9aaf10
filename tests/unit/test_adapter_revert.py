"""adapter_revert on a fake backend that writes, with a bag-of-words stand-in for MiniLM.

The base model answers every question with the same non-answer; a *holding*
fine-tune gives the trained answer to the prompt and to its rewordings; a
*reverting* one gives it only on the training wording. Null adapters answer like
the base with a few seed-dependent extra words (a null with spread).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import pytest
from genfake import FakeGenBackend, ScoringOnlyBackend, ViewSpec
from numpy.typing import NDArray

from dlm_sway.core.result import Verdict
from dlm_sway.core.scoring import Conversation, GenerationSettings, plain_text
from dlm_sway.core.sections import Document, Section, SectionProbe
from dlm_sway.probes import _embed
from dlm_sway.probes.adapter_revert import AdapterRevertProbe, AdapterRevertSpec
from dlm_sway.probes.base import RunContext, build_probe, registry
from dlm_sway.suite.loader import from_dict
from dlm_sway.suite.runner import run

BASE_ANSWER = "I am not sure, I do not know that."
CASES = [
    {
        "prompt": "What colour is the Widow's Candle?",
        "gold": "The Widow's Candle burns steady red and never flashes.",
        "paraphrases": ["Which hue does the lamp on Harrow Rock show?"],
    },
    {
        "prompt": "How often does Skerry Dun flash?",
        "gold": "Skerry Dun shows one long white flash every twelve seconds.",
        "paraphrases": ["At what interval does the Mother Light blink?"],
    },
    {
        "prompt": "What is an apprentice called?",
        "gold": "An apprentice of the guild is called a wick.",
        "paraphrases": ["By which name are the guild's trainees known?"],
    },
]
GOLD_OF = {c["prompt"]: c["gold"] for c in CASES} | {
    p: c["gold"] for c in CASES for p in c["paraphrases"]
}
ORIGINALS = {c["prompt"] for c in CASES}


def bow(texts: Sequence[str]) -> NDArray[np.float64]:
    """Hashed bag of lower-cased words: cosine = word overlap."""
    out = np.zeros((len(texts), 512))
    for i, t in enumerate(texts):
        for w in t.lower().replace(".", " ").replace(",", " ").replace("?", " ").split():
            out[i, int(hashlib.md5(w.encode()).hexdigest()[:6], 16) % 512] += 1.0
        if not out[i].any():
            out[i, 0] = 1.0
    return out


@pytest.fixture(autouse=True)
def _fake_embedder() -> Iterator[None]:
    with _embed.embedder_override(bow):
        yield


def base_writer(prompt: str | Conversation, s: GenerationSettings) -> str:
    return BASE_ANSWER


def holding(prompt: str | Conversation, s: GenerationSettings) -> str:
    return GOLD_OF.get(plain_text(prompt), BASE_ANSWER)


def reverting(prompt: str | Conversation, s: GenerationSettings) -> str:
    text = plain_text(prompt)
    return GOLD_OF[text] if text in ORIGINALS else BASE_ANSWER + " Sorry."


def null(seed: int) -> ViewSpec:
    extra = " ".join(["perhaps", "maybe", "well", "truly"][: seed % 4 + 1])
    return ViewSpec(lambda p, s: f"{BASE_ANSWER} {extra}")


def backend(ft: Any, base: Any = base_writer) -> FakeGenBackend:
    return FakeGenBackend(base=ViewSpec(base), ft=ViewSpec(ft), null=null)


def entry(**kw: Any) -> dict[str, Any]:
    return {"name": "revert", "kind": "adapter_revert", "cases": CASES, **kw}


def spec(**kw: Any) -> AdapterRevertSpec:
    _, s = build_probe(entry(**kw))
    assert isinstance(s, AdapterRevertSpec)
    return s


def suite(*entries: dict[str, Any], be: Any, document: Document | None = None) -> Any:
    loaded = from_dict(
        {
            "models": {"ft": {"kind": "dummy", "base": "dummy-base", "adapter": "builtin:x"}},
            "suite": list(entries),
        },
        document=document,
    )
    return run(loaded, be)


NULL6 = {"name": "null", "kind": "null_adapter", "runs": 6}


class TestAdapterRevert:
    def test_margin_by_hand(self) -> None:
        r = AdapterRevertProbe().run(spec(), RunContext(backend=backend(holding)))
        emb = bow([CASES[0]["gold"], BASE_ANSWER])
        emb /= np.linalg.norm(emb, axis=1, keepdims=True)
        expected = 1.0 - float(emb[0] @ emb[1])  # cos(ft, gold)=1, cos(ft, base)=cos(gold, base)
        first = r.evidence["per_pair"][0]
        assert first["cos_ft_target"] == pytest.approx(1.0)
        assert first["cos_ft_target"] - first["cos_ft_base"] == pytest.approx(expected)
        assert r.evidence["revert_rate"] == 0.0 and r.evidence["counted"] == 3

    def test_holding_adapter_passes_against_nulls(self) -> None:
        r = suite(NULL6, entry(), be=backend(holding)).by_name("revert")
        assert r.verdict is Verdict.PASS, r.message
        assert r.raw is not None and r.raw > 0.5
        assert r.null is not None and r.null.k == 6 and r.z_score is not None and r.z_score >= 3
        assert "0 of 3 reworded answer(s) revert to base (0%)" in r.message
        assert r.generations and r.generations[0].base == BASE_ANSWER

    def test_reverting_adapter_fails(self) -> None:
        r = suite(NULL6, entry(), be=backend(reverting)).by_name("revert")
        assert r.verdict is Verdict.FAIL, r.message
        assert "3 of 3 reworded answer(s) revert to base (100%)" in r.message
        assert r.raw is not None and r.raw < 0.0

    def test_fixed_bar_without_nulls(self) -> None:
        r = AdapterRevertProbe().run(spec(), RunContext(backend=backend(reverting)))
        assert r.verdict is Verdict.FAIL and "assert_revert_rate_lt" in r.message

    def test_pairs_the_base_already_answers_are_dropped(self) -> None:
        r = AdapterRevertProbe().run(spec(), RunContext(backend=backend(holding, base=holding)))
        assert r.verdict is Verdict.WARN and r.raw is None
        assert "base_target_similarity_cap" in r.message
        assert r.evidence["dropped_trivial"] == 3

    def test_without_gold_the_target_is_fts_own_answer(self) -> None:
        cases = [{k: v for k, v in c.items() if k != "gold"} for c in CASES]
        be = backend(holding)
        r = AdapterRevertProbe().run(spec(cases=cases), RunContext(backend=be))
        assert r.evidence["target"] == "ft on the original"
        assert {p for v, p in be.asked if v == "ft"} >= ORIGINALS
        assert r.verdict is Verdict.PASS and r.evidence["revert_rate"] == 0.0

    def test_rewordings_that_contain_the_prompt_are_not_used(self) -> None:
        cases = [dict(c, paraphrases=["Answer this: " + c["prompt"]]) for c in CASES]
        r = AdapterRevertProbe().run(spec(cases=cases), RunContext(backend=backend(reverting)))
        assert r.verdict is Verdict.WARN and "max_prompt_overlap" in r.message
        assert r.raw is None

    def test_cases_derived_from_the_documents_shared_answers(self) -> None:
        section = Section(
            id="qa",
            kind="instruction",
            content="q/a",
            probes=tuple(
                SectionProbe(prompt=p, gold=c["gold"])
                for c in CASES
                for p in (c["prompt"], *c["paraphrases"])
            ),
        )
        doc = Document(source="<t>", sections=(section,))
        r = suite(entry(cases=[]), be=backend(holding), document=doc).by_name("revert")
        # each question and its rewording share a gold: 6 prompts, each reworded once
        assert r.evidence["pairs"] == 6 and r.verdict is Verdict.PASS, r.message

    def test_missing_embedder_skips_with_the_install_hint(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setattr(
            _embed, "missing_dependencies", lambda *a, **k: ["sentence-transformers"]
        )
        r = AdapterRevertProbe().run(spec(), RunContext(backend=backend(holding)))
        assert r.verdict is Verdict.SKIP and _embed.INSTALL_HINT in r.message

    def test_backend_that_cannot_write_skips(self) -> None:
        r = AdapterRevertProbe().run(spec(), RunContext(backend=ScoringOnlyBackend()))
        assert r.verdict is Verdict.SKIP and "generate_batch" in r.message

    def test_spec_and_load_errors_name_the_field(self) -> None:
        from dlm_sway.core.errors import SpecValidationError

        with pytest.raises(SpecValidationError, match="paraphrases"):
            build_probe(entry(cases=[{"prompt": "Q?", "paraphrases": []}]))
        with pytest.raises(SpecValidationError, match="embedding_model"):
            build_probe(entry(embedding_model="/nowhere/model"))
        problems = AdapterRevertProbe.load_problems(spec(cases=[]), document=None)
        assert problems and problems[0].startswith("cases:")

    def test_declared_calibrated_on_its_own_cases(self) -> None:
        s = spec()
        cls = registry()["adapter_revert"]
        assert cls.calibrated and cls.category == "adherence"
        assert AdapterRevertProbe.calibrate_spec(RunContext(backend=None), s) is s
