"""multi_turn_coherence_decay on a fake backend: the fine-tune's logit shift is a
function of how many user turns the (plain-text) dialogue holds, so the decay is known."""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from genfake import FakeGenBackend, FakeView, ScoringOnlyBackend, ViewSpec

from dlm_sway.core.divergence import divergence
from dlm_sway.core.errors import SpecValidationError
from dlm_sway.core.result import Verdict
from dlm_sway.core.scoring import ChatTurn, Conversation, GenerationSettings, plain_text
from dlm_sway.probes.base import RunContext, build_probe, registry
from dlm_sway.probes.multi_turn_coherence_decay import (
    MultiTurnCoherenceDecayProbe,
    MultiTurnSpec,
    fit_half_life,
)

REPLY = "The guild keeps nine lights. They burn all night."
PROMPTS = ["Tell me about the guild.", "What are the rules of the watch?"]


def writer(prompt: str | Conversation, s: GenerationSettings) -> str:
    return " " + REPLY + "\nUser: and a fake next turn the stop string must cut"


def turns(text: str) -> int:
    return text.count("User:")


def persistent(text: str) -> float:
    return 1.5


def decaying(text: str) -> float:
    return 1.5 * 0.3 ** (turns(text) - 1)


def backend(shift: Any) -> FakeGenBackend:
    return FakeGenBackend(base=ViewSpec(writer), ft=ViewSpec(writer, shift=shift))


def spec(**kw: Any) -> MultiTurnSpec:
    _, s = build_probe(
        {"name": "mt", "kind": "multi_turn_coherence_decay", "prompts": PROMPTS, **kw}
    )
    assert isinstance(s, MultiTurnSpec)
    return s


def run_probe(be: Any, **kw: Any) -> Any:
    return MultiTurnCoherenceDecayProbe().run(spec(**kw), RunContext(backend=be))


class TestFit:
    def test_halving_curve_has_half_life_one(self) -> None:
        fit = fit_half_life([8.0, 4.0, 2.0, 1.0], cap=40.0)
        assert fit is not None and fit[0] == pytest.approx(1.0, rel=1e-6)
        assert fit[1] == pytest.approx(8.0, rel=1e-6)

    def test_flat_or_rising_curve_reports_the_cap(self) -> None:
        assert fit_half_life([1.0, 1.0, 1.0], cap=30.0) == (
            30.0,
            pytest.approx(1.0),
            pytest.approx(0.0, abs=1e-9),
        )
        fit = fit_half_life([1.0, 2.0, 3.0], cap=30.0)
        assert fit is not None and fit[0] == 30.0

    def test_zero_curve_has_no_fit(self) -> None:
        assert fit_half_life([0.0, 0.0, 0.0], cap=30.0) is None


class TestMultiTurn:
    def test_persistent_adapter_passes_at_the_cap(self) -> None:
        r = run_probe(backend(persistent))
        assert r.verdict is Verdict.PASS, r.message
        assert r.raw == pytest.approx(40.0) and "no decay within reach" in r.message
        assert "not calibrated against null adapters" in r.message
        curve = r.evidence["per_turn_divergence"]
        assert len(curve) == 4 and max(curve) - min(curve) < 0.2 * max(curve)

    def test_decaying_adapter_fails_its_half_life_bar(self) -> None:
        r = run_probe(backend(decaying))
        assert r.verdict is Verdict.FAIL, r.message
        assert r.raw is not None and r.raw < 2.0
        assert "assert_half_life_turns" in r.message
        curve = r.evidence["per_turn_divergence"]
        assert all(a > b for a, b in zip(curve, curve[1:], strict=False))

    def test_no_effect_fails(self) -> None:
        r = run_probe(backend(lambda t: 0.0))
        assert r.verdict is Verdict.FAIL and r.raw is None

    def test_divergence_is_kl_ft_to_base_on_the_ft_written_history(self) -> None:
        be = backend(decaying)
        r = run_probe(be, max_turns=2, positions_per_turn=1)
        # only the fine-tune writes; each turn's context holds its previous reply
        assert {v for v, _ in be.asked} == {"ft"}
        second = [p for v, p in be.asked][len(PROMPTS) :]
        assert all(REPLY in str(p) and "Tell me more." in str(p) for p in second)
        assert all("fake next turn" not in str(p) for p in second)  # stop string applied
        ctx0 = plain_text((ChatTurn("user", PROMPTS[0]),))
        with be.as_base() as b, be.as_finetuned() as f:
            bd, fd = b.next_token_dist(ctx0), f.next_token_dist(ctx0)
        ctx1 = plain_text((ChatTurn("user", PROMPTS[1]),))
        with be.as_base() as b, be.as_finetuned() as f:
            bd1, fd1 = b.next_token_dist(ctx1), f.next_token_dist(ctx1)
        expected = (divergence(bd, fd, "kl") + divergence(bd1, fd1, "kl")) / 2
        assert r.evidence["per_turn_divergence"][0] == pytest.approx(expected)
        reverse = (divergence(fd, bd, "kl") + divergence(fd1, bd1, "kl")) / 2
        assert not math.isclose(expected, reverse, rel_tol=1e-3)  # the direction matters

    def test_positions_follow_the_reply(self) -> None:
        r = run_probe(backend(persistent), positions_per_turn=3)
        assert r.evidence["positions_per_turn"] == 3 and r.verdict is Verdict.PASS

    def test_chat_rendering_is_used_when_the_view_offers_it(self) -> None:
        class ChatView(FakeView):
            def render_chat(self, conversation: Conversation) -> str | None:
                return "".join(f"<{t.role}>{t.content}" for t in conversation) + "<assistant>"

        class ChatBackend(FakeGenBackend):
            @contextmanager
            def as_base(self) -> Iterator[FakeView]:
                yield ChatView(self, "base", self.base)

            @contextmanager
            def as_finetuned(self) -> Iterator[FakeView]:
                yield ChatView(self, "ft", self.ft)

        be = ChatBackend(base=ViewSpec(writer), ft=ViewSpec(writer, shift=persistent))
        r = MultiTurnCoherenceDecayProbe().run(spec(), RunContext(backend=be))
        assert r.evidence["rendering"] == "chat template"
        assert all(str(p).startswith("<user>") for _, p in be.asked)

    def test_spec_bounds_name_the_field(self) -> None:
        with pytest.raises(SpecValidationError, match="max_turns"):
            spec(max_turns=1)
        with pytest.raises(SpecValidationError, match="assert_half_life_turns"):
            spec(max_turns=2, assert_half_life_turns=50.0)
        with pytest.raises(SpecValidationError, match="divergence"):
            spec(divergence="kl_reverse")

    def test_backend_that_cannot_write_skips(self) -> None:
        r = run_probe(ScoringOnlyBackend())
        assert r.verdict is Verdict.SKIP and "generate_batch" in r.message

    def test_declared_uncalibrated_with_a_reason(self) -> None:
        cls = registry()["multi_turn_coherence_decay"]
        assert not cls.calibrated and "no spread" in cls.uncalibrated_reason
        assert cls.calibrate_spec(RunContext(backend=None), spec()) is None

    def test_prompts_default_to_the_documents_questions(self) -> None:
        from dlm_sway.core.sections import Document, Section, SectionProbe

        doc = Document(
            source="<t>",
            sections=(
                Section(
                    id="q",
                    kind="instruction",
                    content="",
                    probes=(SectionProbe(prompt="Who keeps the lights?", gold="The guild."),),
                ),
            ),
        )
        s = spec(prompts=[])
        assert MultiTurnCoherenceDecayProbe.load_problems(s, document=doc) == []
        assert MultiTurnCoherenceDecayProbe.load_problems(s, document=None)[0].startswith(
            "prompts:"
        )
