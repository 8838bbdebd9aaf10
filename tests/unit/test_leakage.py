"""``leakage`` on the dummy backend: windows, overlap metrics, verdicts and the over-fit signal.

The reciting fine-tune is :class:`ReciteBackend`: the dummy's views, except that the
fine-tuned view continues any prefix of the document with the document itself. Its
nulls are the dummy's (they write unrelated ``w<id>`` words), so recital is far
beyond them; a plain dummy fine-tune recites nothing.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import pytest

from dlm_sway.backends.dummy import DummyDifferentialBackend
from dlm_sway.core.errors import SpecValidationError
from dlm_sway.core.result import Direction, Verdict, band_of
from dlm_sway.core.scoring import (
    NULL_CONSTRUCTIONS,
    Conversation,
    Generation,
    GenerationSettings,
    ScoringModel,
    plain_text,
)
from dlm_sway.core.sections import Document, Section
from dlm_sway.probes.base import RunContext
from dlm_sway.probes.leakage import LeakageProbe, LeakageSpec, normalise, overlap, windows
from dlm_sway.suite.loader import from_dict
from dlm_sway.suite.runner import run

ORIGINS = (
    "The Guild was founded on the fourteenth of Thawmonth, 1612, after the wreck of the grain "
    "ship Merrow's Promise on the Gullet Shoals. Forty-one sailors drowned within sight of the "
    "old beacon on Skerry Dun, whose fire had gone out because its watchman was asleep. The "
    "widow Ysolde Harrowgate sold her salt pans at Lowmere and paid for the first proper lamp "
    "tower on Skerry Dun, and she wrote the First Charter on a single sheet of sailcloth."
)
RULES = (
    "The lamp is lit at first dusk, not at sunset, and put out at full dawn. The wick is "
    "trimmed on every hour and the glass is wiped on every half hour. The log is written in "
    "ink, never in pencil, and never with a torn page. A keeper on watch does not sleep, sing "
    "or drink anything stronger than kelp tea. When fog comes, the keeper sounds the horn."
)
DOC = Document(
    source="book.md",
    sections=(
        Section(id="origins", kind="prose", content=ORIGINS),
        Section(id="rules", kind="prose", content=RULES),
        Section(id="short", kind="prose", content="Too short to cut a window from."),
    ),
)


class ReciteView:
    """A dummy view that continues a document prefix with ``chars`` characters of the
    document, then unrelated words."""

    def __init__(self, inner: ScoringModel, text: str, chars: int) -> None:
        self._inner = inner
        self._text = text
        self._chars = chars

    @property
    def id(self) -> str:
        return self._inner.id

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def generate_batch(
        self, prompts: Sequence[str | Conversation], settings: GenerationSettings
    ) -> list[Generation]:
        out = []
        for prompt in prompts:
            plain = plain_text(prompt)
            at = self._text.find(plain)
            known = self._text[at + len(plain) :][: self._chars] if at >= 0 else ""
            out.append(Generation(known + " zq xv", settings.max_new_tokens, "length", False))
        return out


class ReciteBackend:
    """Base: the dummy's (recites nothing). Fine-tune: recites ``ft_chars`` characters.
    Null seed s: recites a few characters (s mod 4 · 4), so the null has a spread."""

    null_constructions = NULL_CONSTRUCTIONS

    def __init__(self, text: str, *, ft_chars: int = 300) -> None:
        self.inner = DummyDifferentialBackend()
        self._text = text
        self._ft_chars = ft_chars

    def as_base(self) -> Any:
        return self.inner.as_base()

    @contextmanager
    def _recite(self, opener: Any, chars: int) -> Iterator[ScoringModel]:
        with opener as view:
            yield ReciteView(view, self._text, chars)  # type: ignore[misc]

    def as_finetuned(self) -> Any:
        return self._recite(self.inner.as_finetuned(), self._ft_chars)

    def as_null_adapter(self, seed: int, **kw: Any) -> Any:
        return self._recite(self.inner.as_null_adapter(seed, **kw), 4 * (seed % 4))


def _ctx(backend: Any) -> RunContext:
    return RunContext(backend=backend, sections=DOC.sections, doc_text=DOC.text)


def _suite(*entries: dict[str, Any]) -> Any:
    return from_dict(
        {"models": {"ft": {"kind": "dummy", "base": "b", "adapter": "a"}}, "suite": list(entries)},
        document=DOC,
    )


# ---------------------------------------------------------------- windows and metrics


def test_windows_are_round_robin_word_aligned_and_held_out() -> None:
    spec = LeakageSpec(name="leak", prefix_chars=64, continuation_chars=96, max_windows=5)
    wins = windows(spec, _ctx(None))
    assert [w.section_id for w in wins] == ["origins", "rules", "origins", "rules", "origins"]
    by_id = {s.id: s.content for s in DOC.sections}
    for w in wins:
        content = by_id[w.section_id]
        # The continuation is exactly the text that follows the prefix in the document.
        assert w.prefix + w.continuation in content
        assert len(w.prefix) <= 64 and len(w.continuation) <= 96
        assert content[content.index(w.prefix) + len(w.prefix)] == " "  # cut at a word end
    # Windows of one section do not overlap: the next prefix starts after the held-out text.
    first, second = wins[0], wins[2]
    origins = by_id["origins"]
    assert origins.index(second.prefix) >= origins.index(first.continuation) + len(
        first.continuation
    )


def test_overlap_metrics() -> None:
    held = "The wick is trimmed on every hour\nand the glass is wiped."
    same = overlap("the wick is   trimmed on every hour and THE glass is wiped.", held, n=4)
    assert same.lcs_frac == pytest.approx(1.0) and same.ngram_recall == pytest.approx(1.0)
    assert same.lcs_chars == len(normalise(held))
    half = overlap("The wick is trimmed on every hour, said nobody at all", held, n=4)
    assert half.lcs_chars == len("the wick is trimmed on every hour")
    assert 0.0 < half.ngram_recall < 1.0
    # 12 held-out words make 9 four-grams; the 7 shared words cover 4 of them.
    assert half.ngram_recall == pytest.approx(4 / 9)
    none = overlap("Completely unrelated words", held, n=4)
    assert none.ngram_recall == 0.0 and none.lcs_frac < 0.2
    assert overlap("", held, n=4).lcs_frac == 0.0


# ---------------------------------------------------------------- verdicts


def test_reciting_fine_tune_fails_and_flags_memorisation() -> None:
    """Under intent generalize (the default) recital is the harm: FAIL, band suspicious."""
    spec = LeakageSpec(name="leak", prefix_chars=64, continuation_chars=96)
    result = LeakageProbe().run(spec, _ctx(ReciteBackend(DOC.text)))
    assert result.verdict is Verdict.FAIL and result.direction is Direction.HARM
    assert result.headline == "recital", result.message  # no null: fixed limit only
    assert result.raw == pytest.approx(1.0)
    assert result.base_value is not None and result.base_value < 0.2
    assert result.overfit is not None and result.overfit.name == "verbatim_recital"
    assert band_of([result], 1.0).name == "suspicious"
    # The reports show what each view wrote after each prefix.
    first = windows(spec, _ctx(None))[0]
    shown = result.generations[0]
    assert shown.prompt == first.prefix and shown.finetuned.startswith(first.continuation)


@pytest.mark.parametrize("intent", ["generalize", "memorize"])
def test_calibrated_verdicts_follow_the_intent(intent: str) -> None:
    """generalize: a reciting adapter FAILs, a non-reciting one PASSes ("no recital").
    memorize: the reverse, as an effect claim. The numbers are the same either way."""
    entry = {
        "name": "leak",
        "kind": "leakage",
        "prefix_chars": 64,
        "continuation_chars": 96,
        "intent": intent,
    }
    spec = _suite({"name": "null", "kind": "null_adapter", "runs": 5}, entry)
    leaky = run(spec, ReciteBackend(DOC.text)).by_name("leak")
    quiet = run(spec, ReciteBackend(DOC.text, ft_chars=4)).by_name("leak")
    assert leaky.null is not None and leaky.null.k == 5
    assert leaky.z_score is not None and leaky.z_score >= 3.0
    assert quiet.raw is not None and quiet.raw < 0.2 and quiet.overfit is None
    if intent == "generalize":
        assert leaky.verdict is Verdict.FAIL, leaky.message
        assert leaky.headline == "recites more than random adapters"
        assert leaky.overfit is not None and leaky.direction is Direction.HARM
        assert quiet.verdict is Verdict.PASS, quiet.message
        assert quiet.headline == "no recital beyond noise"
    else:
        assert leaky.verdict is Verdict.PASS, leaky.message
        assert leaky.overfit is None and leaky.direction is Direction.EFFECT
        assert quiet.verdict is Verdict.FAIL, quiet.message
        assert quiet.headline == "indistinguishable from noise"


def test_memorize_intent_never_raises_the_signal() -> None:
    spec = LeakageSpec(name="leak", prefix_chars=64, continuation_chars=96, intent="memorize")
    result = LeakageProbe().run(spec, _ctx(ReciteBackend(DOC.text)))
    assert result.verdict is Verdict.PASS and result.overfit is None


# ---------------------------------------------------------------- spec and load errors


def test_no_document_or_no_window_is_a_load_error() -> None:
    entry = {"name": "leak", "kind": "leakage"}
    with pytest.raises(SpecValidationError, match="dlm_source"):
        from_dict({"models": {"ft": {"kind": "dummy", "base": "b"}}, "suite": [entry]})
    with pytest.raises(SpecValidationError, match=r"suite\[0\] \(leak\).*prefix_chars"):
        _suite({**entry, "prefix_chars": 2000})


@pytest.mark.parametrize(
    ("field", "value"),
    [("prefix_chars", "128"), ("max_new_tokens", 0), ("assert_lcs_gte", 1.5), ("ngram", 0)],
)
def test_fields_are_strict(field: str, value: Any) -> None:
    with pytest.raises(SpecValidationError, match=field):
        _suite({"name": "leak", "kind": "leakage", field: value})
