"""Texts longer than the model's context are refused before any probe runs (exit 2).

A backend that declares a context window (here the dummy backend plus a
whitespace tokenizer) must never score a text it cannot attend to: the run
raises a SwayError naming the entry, the field path and index, the token count
and the limit, instead of running for minutes and possibly PASSing.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dlm_sway.backends.dummy import DummyDifferentialBackend
from dlm_sway.core.errors import SwayError
from dlm_sway.core.result import Verdict
from dlm_sway.suite.loader import from_dict, load_spec
from dlm_sway.suite.runner import run

LIMIT = 64


class WindowedDummy(DummyDifferentialBackend):
    """The dummy backend with a context window: one token per whitespace word, plus BOS."""

    def __init__(self, limit: int | None = LIMIT, **kw: Any) -> None:
        super().__init__(**kw)
        self.limit = limit
        self.count_calls = 0

    def max_context_tokens(self) -> int | None:
        return self.limit

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        self.count_calls += 1
        return [len(t.split()) + 1 for t in texts]


def words(n: int) -> str:
    return " ".join(["word"] * n)


def spec(*entries: dict[str, Any]) -> dict[str, Any]:
    return {
        "version": 1,
        "models": {"ft": {"kind": "dummy", "base": "b", "adapter": "a"}},
        "suite": list(entries),
    }


def dkl(prompts: list[str], name: str = "dkl") -> dict[str, Any]:
    return {"name": name, "kind": "delta_kl", "prompts": prompts}


def test_long_prompt_is_refused_naming_entry_field_index_count_and_limit() -> None:
    loaded = from_dict(spec(dkl(["short one", words(200), "fine"], name="too_long")))
    with pytest.raises(SwayError) as info:
        run(loaded, WindowedDummy())
    msg = str(info.value)
    assert "'too_long'" in msg and "delta_kl" in msg
    assert "prompts[1]" in msg
    assert "201 tokens" in msg and str(LIMIT) in msg


def test_refused_before_any_probe_runs() -> None:
    """No probe (so no forward pass) may run once a text is known not to fit."""
    backend = WindowedDummy()
    loaded = from_dict(spec(dkl(["fine"], name="first"), dkl([words(500)], name="second")))
    with pytest.raises(SwayError, match="'second'"):
        run(loaded, backend)
    assert backend.stats.forward_passes == 0


def test_texts_that_fit_run_normally_with_one_batched_count() -> None:
    backend = WindowedDummy()
    loaded = from_dict(spec(dkl([words(LIMIT - 1), "hello there"])))
    result = run(loaded, backend)
    assert result.probes[0].verdict in (Verdict.PASS, Verdict.FAIL, Verdict.WARN)
    assert backend.count_calls == 1


def test_no_known_limit_means_no_check() -> None:
    loaded = from_dict(spec(dkl([words(5000)])))
    result = run(loaded, WindowedDummy(limit=None))
    assert result.probes[0].verdict != Verdict.ERROR


def test_disabled_entries_are_not_checked() -> None:
    entry = {**dkl([words(500)], name="off"), "enabled": False}
    result = run(from_dict(spec(entry, dkl(["fine"]))), WindowedDummy())
    assert result.probes[0].verdict == Verdict.SKIP
    assert result.probes[1].verdict != Verdict.ERROR


def test_prompt_plus_completion_is_checked_as_scored() -> None:
    """Each half fits, but the model reads prompt + completion together."""
    triple = {"prompt": words(40), "chosen": " " + words(40), "rejected": " no"}
    short = {"prompt": "p", "chosen": " a", "rejected": " b"}
    entry = {"name": "pf", "kind": "preference_flip", "triples": [short, triple, short]}
    with pytest.raises(SwayError) as info:
        run(from_dict(spec(entry)), WindowedDummy())
    msg = str(info.value)
    assert "triples[1].prompt + chosen" in msg and "'pf'" in msg


def test_paraphrases_are_checked_with_their_gold() -> None:
    case = {"prompt": "q?", "gold": " " + words(40), "paraphrases": ["ok?", words(40)]}
    entry = {"name": "para", "kind": "paraphrase_invariance", "cases": [case]}
    with pytest.raises(SwayError, match=r"cases\[0\]\.paraphrases\[1\] \+ gold"):
        run(from_dict(spec(entry)), WindowedDummy())


def test_prompt_collapse_padding_counts_towards_the_limit() -> None:
    entry = {
        "name": "pc",
        "kind": "prompt_collapse",
        "prompts": [words(10)],
        "context_lengths": [0, 100],
    }
    with pytest.raises(SwayError) as info:
        run(from_dict(spec(entry)), WindowedDummy())
    assert "100 padding tokens" in str(info.value)


def test_document_sections_are_checked(tmp_path: Path) -> None:
    doc = tmp_path / "doc.md"
    doc.write_text(
        "# Notes\n\n## Intro\n\nA short first section.\n\n## Body\n\n" + words(300) + ".\n",
        encoding="utf-8",
    )
    data = spec({"name": "si", "kind": "section_internalization", "max_prose_chars": 5000})
    data["dlm_source"] = "doc.md"
    path = tmp_path / "sway.yaml"
    import yaml

    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    with pytest.raises(SwayError, match="dlm_source section"):
        run(load_spec(path), WindowedDummy())


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    lengths=st.lists(st.integers(min_value=0, max_value=3 * LIMIT), min_size=1, max_size=6),
)
def test_property_refused_iff_some_prompt_exceeds(lengths: list[int]) -> None:
    """Whatever the prompt lengths: a run either refuses (some text > limit) or runs."""
    prompts = [words(n) or "x" for n in lengths]
    counts = [len(p.split()) + 1 for p in prompts]
    loaded = from_dict(spec(dkl(prompts)))
    if max(counts) > LIMIT:
        with pytest.raises(SwayError, match=r"prompts\[\d+\]"):
            run(loaded, WindowedDummy())
    else:
        assert run(loaded, WindowedDummy()).probes[0].verdict != Verdict.ERROR
