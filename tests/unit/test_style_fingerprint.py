"""style_fingerprint and its stylometric features, on a fake backend whose views write.

Base writes short, chatty sentences; the "document" is long, formal sentences full
of commas, semicolons and "of the"; the fine-tune either writes like the document,
like the base, or even further away. Null adapters write the base's text with a
seed-dependent extra sentence (so the null has spread).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from genfake import FakeGenBackend, ScoringOnlyBackend, ViewSpec

from dlm_sway.core.errors import SpecValidationError
from dlm_sway.core.result import Verdict
from dlm_sway.core.scoring import Conversation, GenerationSettings, plain_text
from dlm_sway.core.sections import Document, Section
from dlm_sway.probes import _stylometry as sty
from dlm_sway.probes.base import RunContext, build_probe, registry
from dlm_sway.probes.style_fingerprint import StyleFingerprintProbe, StyleFingerprintSpec
from dlm_sway.suite.loader import from_dict
from dlm_sway.suite.runner import run

FORMAL = [
    "The keeper of the northern tower, who had served the guild for many winters, wrote "
    "the weather in the log at every turn of the glass; no entry was ever left blank.",
    "In the age of the first charter, the lamps of the reach were fed with oil of the "
    "finest grade, and the wardens inspected each of the towers in turn.",
    "Every apprentice of the guild learns the order of the nine lights, the colour of each, "
    "and the count of its flashes, before standing a single watch alone.",
    "The rules of the watch, which are painted above the door of the hall, forbid sleep, "
    "song and strong drink; the keeper who breaks them is fined a week of wages.",
]
CHATTY = [
    "Sure! I can help.",
    "It is fun. You will like it!",
    "I think so. Do you?",
    "Yes. That works. Try it now!",
    "We can go. Let us start!",
]
DOC = " ".join(FORMAL * 6)
PROMPTS = ["Write about the towers.", "Write about the rules.", "Write about the lamps."]


def _pick(pool: list[str], prompt: str | Conversation, n: int, salt: int = 0) -> str:
    key = sum(map(ord, plain_text(prompt))) + salt
    return " ".join(pool[(key + i) % len(pool)] for i in range(n))


def formal(prompt: str | Conversation, s: GenerationSettings) -> str:
    return _pick(FORMAL, prompt, 3)


def chatty(prompt: str | Conversation, s: GenerationSettings) -> str:
    return _pick(CHATTY, prompt, 12)


def terse(prompt: str | Conversation, s: GenerationSettings) -> str:
    return " ".join(["Ok! Go!"] * 20)


def null_writer(seed: int) -> ViewSpec:
    def w(prompt: str | Conversation, s: GenerationSettings) -> str:
        return _pick(CHATTY, prompt, 12, salt=seed) + " " + FORMAL[seed % 4].split(";")[0] + "."

    return ViewSpec(writer=w)


def backend(ft: Any) -> FakeGenBackend:
    return FakeGenBackend(base=ViewSpec(chatty), ft=ViewSpec(ft), null=null_writer)


def entry(**kw: Any) -> dict[str, Any]:
    return {
        "name": "style",
        "kind": "style_fingerprint",
        "prompts": PROMPTS,
        "doc_reference": DOC,
        **kw,
    }


def spec(**kw: Any) -> StyleFingerprintSpec:
    _, s = build_probe(entry(**kw))
    assert isinstance(s, StyleFingerprintSpec)
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


# --- features -------------------------------------------------------------------------------


class TestFeatures:
    def test_mattr_by_hand(self) -> None:
        assert sty.mattr(["a", "b", "a"], window=25) == pytest.approx(2 / 3)
        # windows of 2 over a b a b: {a,b} each → 1.0; over a a a: 0.5
        assert sty.mattr(["a", "b", "a", "b"], window=2) == pytest.approx(1.0)
        assert sty.mattr(["a", "a", "a"], window=2) == pytest.approx(0.5)

    def test_mattr_does_not_fall_with_length(self) -> None:
        text = sty.words(" ".join(FORMAL))
        assert sty.mattr(text * 3) == pytest.approx(sty.mattr(text), rel=0.05)

    def test_feature_vector_by_hand(self) -> None:
        f = sty.features("The cat sat; the dog ran. Did it?")
        assert f is not None
        names = [n for _, n in sty.feature_names()]
        row = dict(zip(names, f, strict=True))
        assert row["words_per_sentence"] == pytest.approx(4.0)  # 6 words, then 2
        assert row["sentence_length_sd"] == pytest.approx(2.0)
        assert row["semicolon_per_100_words"] == pytest.approx(100 / 8)
        assert row["question_per_100_words"] == pytest.approx(100 / 8)
        assert row["fw_the"] == pytest.approx(2 / 8)
        assert sty.features("123 !!!") is None

    def test_chunks_cover_the_text_at_the_asked_length(self) -> None:
        pieces = sty.chunks(DOC, 60)
        assert sum(len(sty.words(p)) for p in pieces) == len(sty.words(DOC))
        assert all(40 <= len(sty.words(p)) <= 120 for p in pieces)

    def test_delta_weighs_groups_equally(self) -> None:
        names = sty.feature_names()
        n = len(names)
        yard = sty.Yardstick(np.ones(n))
        a = np.zeros(n)
        b = np.zeros(n)
        b[[i for i, (g, _) in enumerate(names) if g == "function_words"]] = 1.0
        assert sty.delta(a, b, yard) == pytest.approx(1 / 4)  # one group of four moved by 1


# --- the probe ------------------------------------------------------------------------------


class TestStyleFingerprint:
    def test_writing_like_the_document_passes_against_nulls(self) -> None:
        res = suite(
            {"name": "null", "kind": "null_adapter", "runs": 6}, entry(), be=backend(formal)
        )
        r = res.by_name("style")
        assert r.verdict is Verdict.PASS, r.message
        assert r.raw is not None and r.raw > 0.7
        assert r.base_value is not None and r.ft_value is not None
        assert r.ft_value < r.base_value  # typed distances: the fine-tune is closer
        assert r.null is not None and r.null.k == 6 and r.z_score is not None
        assert r.z_score >= 3.0 and f"{r.raw:+.3g}" in r.message
        assert r.effect_ratio is None  # a signed shift: no ratio to the null median

    def test_unchanged_style_fails(self) -> None:
        res = suite(
            {"name": "null", "kind": "null_adapter", "runs": 6}, entry(), be=backend(chatty)
        )
        r = res.by_name("style")
        assert r.raw == pytest.approx(0.0, abs=1e-12)
        assert r.verdict is Verdict.FAIL, r.message

    def test_moving_away_is_negative(self) -> None:
        r = StyleFingerprintProbe().run(spec(), RunContext(backend=backend(terse)))
        assert r.raw is not None and r.raw < 0.0
        assert r.verdict is Verdict.FAIL and "assert_shift_gte" in r.message

    def test_fixed_threshold_without_nulls(self) -> None:
        r = StyleFingerprintProbe().run(spec(), RunContext(backend=backend(formal)))
        assert r.verdict is Verdict.PASS and r.headline == "above threshold"
        assert r.null is None and "threshold 0.25" in r.message

    def test_null_measures_the_same_prompts_and_document(self) -> None:
        s = spec()
        assert StyleFingerprintProbe.calibrate_spec(RunContext(backend=None), s) is s
        assert StyleFingerprintProbe.calibrated and registry()["style_fingerprint"].category == (
            "calibration"
        )

    def test_too_few_words_is_not_judged(self) -> None:
        r = StyleFingerprintProbe().run(spec(min_words=5000), RunContext(backend=backend(formal)))
        assert r.verdict is Verdict.WARN and "min_words" in r.message

    def test_backend_that_cannot_write_skips(self) -> None:
        r = StyleFingerprintProbe().run(spec(), RunContext(backend=ScoringOnlyBackend()))
        assert r.verdict is Verdict.SKIP and "generate_batch" in r.message

    def test_silent_fine_tune_is_an_error(self) -> None:
        r = StyleFingerprintProbe().run(spec(), RunContext(backend=backend(lambda p, s: "  ")))
        assert r.verdict is Verdict.ERROR and "fine-tune wrote no words" in r.message

    def test_prompts_and_reference_derive_from_the_document(self) -> None:
        doc = Document(
            source="<t>",
            sections=(
                Section(id="a", kind="prose", content=DOC, title="The Towers"),
                Section(id="b", kind="prose", content=DOC, title="The Rules"),
            ),
        )
        be = backend(formal)
        res = suite(entry(prompts=[], doc_reference="", min_words=50), be=be, document=doc)
        assert res.by_name("style").verdict is Verdict.PASS
        asked = {p for _, p in be.asked}
        assert asked == {
            "Write a short passage about The Towers.",
            "Write a short passage about The Rules.",
        }

    def test_load_problems_name_the_fields(self) -> None:
        s = spec(prompts=[], doc_reference="")
        problems = StyleFingerprintProbe.load_problems(s, document=None)
        assert any(p.startswith("prompts:") for p in problems)
        assert any(p.startswith("doc_reference:") for p in problems)
        with pytest.raises(SpecValidationError, match="prompts"):
            from_dict(
                {
                    "models": {"ft": {"kind": "dummy", "base": "d", "adapter": "builtin:x"}},
                    "suite": [entry(prompts=[], doc_reference="")],
                }
            )

    def test_sampling_needs_a_temperature(self) -> None:
        with pytest.raises(SpecValidationError, match="temperature"):
            build_probe(entry(samples_per_prompt=3))
        s = spec(samples_per_prompt=2, temperature=0.7)
        be = backend(formal)
        StyleFingerprintProbe().run(s, RunContext(backend=be, seed=5))
        assert len(be.asked) == 2 * 2 * len(PROMPTS)  # base and ft, two samples each
