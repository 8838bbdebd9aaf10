"""Which of the first null's generations null calibration asks a backend to decode for
the other nulls ahead of time: the ones written under that null, once each, and not a
dialogue's later turns (their prompts carry text the first null wrote)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from dlm_sway.backends.dummy import DummyDifferentialBackend
from dlm_sway.core.scoring import ChatTurn, GenerationSettings, NullDraw
from dlm_sway.probes._null_proxy import NullCalibrationBackendProxy
from dlm_sway.probes._textgen import Written
from dlm_sway.probes.base import RunContext
from dlm_sway.probes.null_adapter import _prefetch

GREEDY = GenerationSettings(16, temperature=0.0, top_p=1.0, seed=0, chat=True)
WARM = GenerationSettings(16, temperature=0.7, top_p=1.0, seed=1, chat=True)


class Prefetching(DummyDifferentialBackend):
    def __init__(self) -> None:
        super().__init__()
        self.asked: list[tuple[list[int], tuple[Any, ...], GenerationSettings]] = []

    def prefetch_null_generations(
        self, nulls: Sequence[NullDraw], prompts: Sequence[Any], settings: GenerationSettings
    ) -> bool:
        self.asked.append(([n.seed for n in nulls], tuple(prompts), settings))
        return True


def _first(backend: Prefetching) -> RunContext:
    proxy = NullCalibrationBackendProxy(
        backend, seed=7, init_scale=0.02, rank_scale=2.0, construction="norm_matched"
    )
    proxy.ft_view_ids.add("null_7")
    return RunContext(backend=proxy)


def test_the_first_nulls_independent_writes_are_prefetched_once_each() -> None:
    backend = Prefetching()
    reply = " The lamps are lit at dusk by the keeper on watch."
    follow_up = (
        ChatTurn("user", "When are the lamps lit?"),
        ChatTurn("assistant", reply.strip()),
        ChatTurn("user", "And who lights them?"),
    )
    written = [
        Written("base", ("When are the lamps lit?",), GREEDY, (" At dusk, every night.",)),
        Written("null_7", ("When are the lamps lit?",), GREEDY, (reply,)),
        Written("null_7", (follow_up,), GREEDY, (" The keeper.",)),  # turn 2: follows turn 1
        Written("null_7", ("When are the lamps lit?",), WARM, (" Dusk.",)),  # another sample
        Written("null_7", ("When are the lamps lit?",), GREEDY, (reply,)),  # asked already
    ]
    _prefetch(backend, _first(backend), written, [11, 12])
    assert backend.asked == [
        ([11, 12], ("When are the lamps lit?",), GREEDY),
        ([11, 12], ("When are the lamps lit?",), WARM),
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
