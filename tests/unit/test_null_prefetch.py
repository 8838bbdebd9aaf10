"""Which of the first null's generations null calibration asks a backend to decode for
the other nulls ahead of time: the ones written under that null, once each, and not a
dialogue's later turns (their prompts carry text the first null wrote)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from dlm_sway.backends.dummy import DummyDifferentialBackend
from dlm_sway.core.scoring import ChatTurn, Generation, GenerationSettings, NullDraw
from dlm_sway.probes._null_proxy import NullCalibrationBackendProxy
from dlm_sway.probes._textgen import Written
from dlm_sway.probes.base import RunContext
from dlm_sway.probes.null_adapter import _prefetch

GREEDY = GenerationSettings(16, temperature=0.0, top_p=1.0, seed=0, chat=True)
WARM = GenerationSettings(16, temperature=0.7, top_p=1.0, seed=1, chat=True)
REPLY = " The lamps are lit at dusk by the keeper on watch."


class Prefetching(DummyDifferentialBackend):
    """Records what it is asked; null ``seed`` writes ``texts[seed]`` (else "same")."""

    def __init__(self, texts: dict[int, str] | None = None) -> None:
        super().__init__()
        self.texts = texts or {}
        self.asked: list[tuple[list[int], tuple[Any, ...], GenerationSettings]] = []

    def prefetch_null_generations(
        self, nulls: Sequence[NullDraw], prompts: Sequence[Any], settings: GenerationSettings
    ) -> list[list[Generation]] | None:
        self.asked.append(([n.seed for n in nulls], tuple(prompts), settings))
        return [
            [Generation(self.texts.get(n.seed, REPLY), 4, "length", True) for _ in prompts]
            for n in nulls
        ]


def _first(backend: Prefetching) -> RunContext:
    proxy = NullCalibrationBackendProxy(
        backend, seed=7, init_scale=0.02, rank_scale=2.0, construction="norm_matched"
    )
    proxy.ft_view_ids.add("null_7")
    return RunContext(backend=proxy)


def _dialogue() -> list[Written]:
    follow_up = (
        ChatTurn("user", "When are the lamps lit?"),
        ChatTurn("assistant", REPLY.strip()),
        ChatTurn("user", "And who lights them?"),
    )
    return [
        Written("base", ("When are the lamps lit?",), GREEDY, (" At dusk, every night.",)),
        Written("null_7", ("When are the lamps lit?",), GREEDY, (REPLY,)),
        Written("null_7", (follow_up,), GREEDY, (" The keeper.",)),  # turn 2: follows turn 1
        Written("null_7", ("When are the lamps lit?",), WARM, (" Dusk.",)),  # another sample
        Written("null_7", ("When are the lamps lit?",), GREEDY, (REPLY,)),  # asked already
    ]


def test_each_write_is_prefetched_once_and_a_next_turn_only_for_nulls_that_agree() -> None:
    backend = Prefetching({12: " Nobody knows."})  # null 12 answers turn 1 otherwise
    _prefetch(backend, _first(backend), _dialogue(), [11, 12, 13])
    turn_two = _dialogue()[2].prompts
    assert backend.asked == [
        ([11, 12, 13], ("When are the lamps lit?",), GREEDY),
        ([11, 13], turn_two, GREEDY),  # null 12's second turn is another prompt
        ([11, 12, 13], ("When are the lamps lit?",), WARM),
    ]


def test_nothing_is_prefetched_without_other_nulls_or_a_capable_backend() -> None:
    backend = Prefetching()
    written = [Written("null_7", ("Hello",), GREEDY, (" there",))]
    _prefetch(backend, _first(backend), written, [])
    assert backend.asked == []
    plain = DummyDifferentialBackend()  # no prefetch_null_generations
    _prefetch(plain, _first(backend), written, [11])
    assert backend.asked == []


def test_the_nulls_are_drawn_like_the_first_one() -> None:
    backend = Prefetching()
    first = _first(backend)
    _prefetch(backend, first, [Written("null_7", ("Hello",), GREEDY, ("x",))], [11])
    proxy = first.backend
    assert isinstance(proxy, NullCalibrationBackendProxy)
    assert proxy.draw(11) == NullDraw(11, 0.02, 2.0, "norm_matched")
