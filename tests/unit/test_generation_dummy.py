"""The generation protocol on the dummy backend: settings, determinism, batching, stops."""

from __future__ import annotations

import math

import pytest

from dlm_sway.backends.dummy import DummyDifferentialBackend
from dlm_sway.core.errors import SwayError
from dlm_sway.core.scoring import (
    ChatTurn,
    Generating,
    GenerationError,
    GenerationSettings,
    cut_at_stop,
    plain_text,
    prompt_cache_key,
)

PROMPTS = ["The lamp is lit at", "Every keeper must", "A wick becomes a keeper by", "Fog"]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"max_new_tokens": 0}, "max_new_tokens"),
        ({"max_new_tokens": 5000}, "max_new_tokens"),
        ({"max_new_tokens": True}, "max_new_tokens"),
        ({"temperature": math.nan}, "temperature"),
        ({"temperature": -0.5}, "temperature"),
        ({"temperature": math.inf}, "temperature"),
        ({"top_p": 0.0}, "top_p"),
        ({"top_p": 1.5}, "top_p"),
        ({"seed": -1}, "seed"),
        ({"stop": ("",)}, "stop"),
        ({"stop": ["\n"]}, "stop"),
    ],
)
def test_bad_settings_are_clear_sway_errors(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(GenerationError, match=match) as info:
        GenerationSettings(**kwargs)  # type: ignore[arg-type]
    assert isinstance(info.value, SwayError)


def test_bad_chat_role_is_refused() -> None:
    with pytest.raises(GenerationError, match="role"):
        ChatTurn("robot", "hi")  # type: ignore[arg-type]


def test_helpers() -> None:
    assert cut_at_stop("abc. def\nxyz", ("\n", ".")) == ("abc", True)
    assert cut_at_stop("abc", ("x",)) == ("abc", False)
    convo = (ChatTurn("system", "Be brief."), ChatTurn("user", "Hi"))
    assert plain_text(convo) == "System: Be brief.\n\nUser: Hi\n\nAssistant:"
    assert plain_text("Hi") == "Hi"
    # A plain prompt never shares a cache key with a conversation that reads alike.
    assert prompt_cache_key("Hi") != prompt_cache_key((ChatTurn("user", "Hi"),))


def test_every_view_generates_and_the_adapter_changes_text() -> None:
    backend = DummyDifferentialBackend()
    settings = GenerationSettings(max_new_tokens=6)
    texts = {}
    for name, opener in [
        ("base", backend.as_base),
        ("ft", backend.as_finetuned),
        ("scaled", lambda: backend.as_scaled_adapter(0.5)),
        ("null", lambda: backend.as_null_adapter(3, construction="norm_matched")),
    ]:
        with opener() as view:
            assert isinstance(view, Generating)
            out = view.generate_batch(PROMPTS, settings)
        assert [g.new_tokens for g in out] == [6] * len(PROMPTS)
        assert all(g.finish == "length" and not g.templated for g in out)
        texts[name] = [g.text for g in out]
    assert texts["base"] != texts["ft"]


@pytest.mark.parametrize("temperature", [0.0, 0.8])
def test_batched_equals_one_prompt_and_is_deterministic(temperature: float) -> None:
    backend = DummyDifferentialBackend()
    settings = GenerationSettings(max_new_tokens=8, temperature=temperature, seed=11)
    with backend.as_finetuned() as view:
        batched = view.generate_batch(PROMPTS, settings)
        single = [view.generate_batch([p], settings)[0] for p in PROMPTS]
        reordered = view.generate_batch(list(reversed(PROMPTS)), settings)
        again = view.generate_batch(PROMPTS, settings)
    assert batched == single == list(reversed(reordered)) == again


def test_sampling_follows_the_seed() -> None:
    backend = DummyDifferentialBackend()
    with backend.as_finetuned() as view:
        runs = {
            seed: [
                g.text
                for g in view.generate_batch(
                    PROMPTS, GenerationSettings(max_new_tokens=12, temperature=1.5, seed=seed)
                )
            ]
            for seed in (1, 2)
        }
        greedy = [g.text for g in view.generate_batch(PROMPTS, GenerationSettings(12))]
    assert runs[1] != runs[2]
    assert runs[1] != greedy


def test_stop_string_cuts_before_it() -> None:
    backend = DummyDifferentialBackend()
    with backend.as_base() as view:
        full = view.generate_batch(["Fog"], GenerationSettings(max_new_tokens=6))[0]
        third = full.text.split()[2]
        cut = view.generate_batch(["Fog"], GenerationSettings(max_new_tokens=6, stop=(third,)))[0]
    assert cut.finish == "stop"
    assert cut.text == " ".join(full.text.split()[:2]) + " "
    assert third not in cut.text and cut.new_tokens == 3


def test_chat_true_without_template_is_a_clear_error() -> None:
    backend = DummyDifferentialBackend()
    convo = (ChatTurn("user", "Call the tool"),)
    with backend.as_base() as view:
        plain = view.generate_batch([convo], GenerationSettings(max_new_tokens=3))[0]
        with pytest.raises(GenerationError, match="chat template"):
            view.generate_batch([convo], GenerationSettings(max_new_tokens=3, chat=True))
        assert (
            plain.text
            == view.generate_batch([plain_text(convo)], GenerationSettings(max_new_tokens=3))[
                0
            ].text
        )


def test_legacy_generate_is_generate_batch() -> None:
    backend = DummyDifferentialBackend()
    with backend.as_finetuned() as view:
        assert (
            view.generate("Fog", 5) == view.generate_batch(["Fog"], GenerationSettings(5))[0].text
        )
        assert view.generate("Fog", 0) == ""
