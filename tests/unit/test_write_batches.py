"""``write_batches``: several settings' texts from one view, the same as writing each
batch alone, whether or not the view decodes them together, and logged per batch."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest

from dlm_sway.backends.dummy import DummyDifferentialBackend
from dlm_sway.core.errors import SwayError
from dlm_sway.core.scoring import (
    GeneratingBatches,
    Generation,
    GenerationBatch,
    GenerationSettings,
)
from dlm_sway.probes._textgen import recording, write, write_batches

PROMPTS = ["The lamp is lit at", "Every keeper must", "Fog"]
SETTINGS = (
    GenerationSettings(6),
    GenerationSettings(6, temperature=0.9, seed=1),
    GenerationSettings(4, temperature=0.9, seed=2),
)


class Together:
    """A view that decodes batches together: answers from a plain view, and records calls."""

    def __init__(self, view: Any, *, short: bool = False) -> None:
        self.view, self.short = view, short
        self.calls: list[list[GenerationBatch]] = []
        self.id = view.id

    def generate_batches(self, batches: Sequence[GenerationBatch]) -> list[list[Generation]]:
        self.calls.append(list(batches))
        out = [self.view.generate_batch(list(b.prompts), b.settings) for b in batches]
        return [o[:-1] for o in out] if self.short else out


def test_a_view_without_the_method_writes_each_batch_alone() -> None:
    backend = DummyDifferentialBackend()
    batches = [(PROMPTS, s) for s in SETTINGS]
    with backend.as_finetuned() as view:
        assert not isinstance(view, GeneratingBatches)
        alone = [write(view, PROMPTS, s, probe="t") for s in SETTINGS]
        with recording() as log:
            together = write_batches(view, batches, probe="t")
    assert together == alone
    assert len({tuple(t) for t in alone}) == len(SETTINGS)  # the settings really differ
    assert [(w.settings, w.texts) for w in log] == list(
        zip(SETTINGS, map(tuple, alone), strict=True)
    )


def test_a_view_that_decodes_together_is_asked_once_and_logged_per_batch() -> None:
    backend = DummyDifferentialBackend()
    with backend.as_base() as plain:
        view = Together(plain)
        assert isinstance(view, GeneratingBatches)
        batches = [(PROMPTS, SETTINGS[0]), ([], SETTINGS[1]), (PROMPTS[:1], SETTINGS[2])]
        with recording() as log:
            got = write_batches(view, batches, probe="t")  # type: ignore[arg-type]
        expected = [write(plain, p, s, probe="t") for p, s in batches]
    assert got == expected
    assert [[b.settings for b in call] for call in view.calls] == [[SETTINGS[0], SETTINGS[2]]]
    assert [(w.prompts, w.settings) for w in log] == [
        (tuple(PROMPTS), SETTINGS[0]),
        (tuple(PROMPTS[:1]), SETTINGS[2]),
    ]


def test_only_empty_batches_ask_nothing() -> None:
    backend = DummyDifferentialBackend()
    with backend.as_base() as plain:
        view = Together(plain)
        assert write_batches(view, [([], SETTINGS[0])], probe="t") == [[]]  # type: ignore[arg-type]
    assert view.calls == []


def test_a_backend_that_loses_generations_is_a_clear_error() -> None:
    backend = DummyDifferentialBackend()
    with backend.as_base() as plain, pytest.raises(SwayError, match="2 generations for 3"):
        write_batches(Together(plain, short=True), [(PROMPTS, SETTINGS[0])], probe="t")  # type: ignore[arg-type]
