"""Views sharing forwards inside ``backend.sweep(...)``: each view's numbers equal its own
forward's within float jitter, the other members answer from their caches, every view
is left exactly as it was, and what cannot share scores as before."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest
import torch
from spies import views_at

from dlm_sway.backends import hf_mixed
from dlm_sway.backends.hf import HFDifferentialBackend
from dlm_sway.core.errors import ViewError
from dlm_sway.core.scoring import (
    BASE_AND_FT,
    BASE_ONLY,
    GenerationSettings,
    NullDraw,
    ScoringSweep,
    SweepMember,
    open_view,
    shared_forwards,
)
from dlm_sway.probes._null_proxy import NullCalibrationBackendProxy

pytestmark = pytest.mark.hf

PROMPTS = ["The zebra", "Cats sleep in the", "Fresh bread and", "The quick brown fox jumps", "A"]
PAIRS = [("The cat", " sat on the mat"), ("Bread is", " baked"), ("One two", " three four five")]
TEXTS = ["The cat sat on the mat and slept.", "Fresh bread", "A long time ago in a small town"]
NULLS = [NullDraw(seed, 0.02, 1.0, "norm_matched") for seed in (5, 6)]
#: |Δ log p| allowed between a shared and an own forward (fp32 jitter is ~1e-6 here).
TOL = 1e-4

MEMBERS = [
    *BASE_AND_FT,
    SweepMember.scaled(0.5),
    SweepMember.scaled(1.5),
    *(SweepMember.of_null(d) for d in NULLS),
]


def _everything(view: Any) -> list[np.ndarray[Any, Any]]:
    """Every scoring op of a view, as arrays of log-probs."""
    out = [d.logprobs for d in view.next_token_full_batch(PROMPTS)]
    out += [d.logprobs for d in view.next_token_dist_batch(PROMPTS, top_k=7)]
    out.append(np.asarray(view.logprob_of_batch(PAIRS)))
    out += [r.logprobs for r in view.rolling_logprob_batch(TEXTS)]
    out.append(np.asarray([view.logprob_of("Alone", " here")]))
    return out


def _scores(backend: HFDifferentialBackend, members: Sequence[SweepMember]) -> dict[int, Any]:
    out = {}
    for i, m in enumerate(members):
        with open_view(backend, m) as view:
            out[i] = _everything(view)
    return out


@pytest.fixture(autouse=True)
def _no_disk_base(monkeypatch: pytest.MonkeyPatch) -> None:
    """The base is computed in every backend here (the disk test turns the cache on)."""
    monkeypatch.setenv("SWAY_DISABLE_BASE_CACHE", "1")


@pytest.fixture
def own(tiny_assets: Any) -> dict[int, Any]:
    with HFDifferentialBackend(str(tiny_assets.base), tiny_assets.adapter, batch_size=2) as b:
        return _scores(b, MEMBERS)


def _close(a: dict[int, Any], b: dict[int, Any]) -> None:
    assert a.keys() == b.keys()
    for i in a:
        for x, y in zip(a[i], b[i], strict=True):
            np.testing.assert_allclose(x, y, atol=TOL, rtol=0)


def test_members_share_forwards_and_keep_their_own_numbers(
    tiny_assets: Any, own: dict[int, Any]
) -> None:
    with HFDifferentialBackend(str(tiny_assets.base), tiny_assets.adapter, batch_size=2) as b:
        assert isinstance(b, ScoringSweep)
        with b.sweep(MEMBERS), views_at(b, "_record") as forwards:
            shared = _scores(b, MEMBERS)
        # Only the first member ran forwards: every other one answered from its cache.
        assert set(forwards) == {"base"}
        _close(shared, own)
        # The views are back to exactly themselves: outside the sweep, bit for bit.
        with b.as_scaled_adapter(0.5) as view:
            again = view.next_token_full_batch(["A fresh prompt"])[0].logprobs
        with (
            HFDifferentialBackend(str(tiny_assets.base), tiny_assets.adapter) as fresh,
            fresh.as_scaled_adapter(0.5) as view,
        ):
            assert np.array_equal(view.next_token_full_batch(["A fresh prompt"])[0].logprobs, again)
    # The rows really differ by view (a mask that let every row see one view would not).
    assert not np.allclose(own[0][0], own[1][0], atol=1e-3)
    assert not np.allclose(own[4][0], own[5][0], atol=1e-3)


@pytest.mark.parametrize("path", ["own", "masked"])
def test_both_ways_of_adding_the_lora_terms_keep_each_views_numbers(
    tiny_assets: Any, own: dict[int, Any], path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Long runs of one view's rows get that view's own r-wide term, short ones the
    masked n-wide pair: either way every row keeps its view's numbers, and generation
    (whose decode steps hold a token per row) still writes each view's own text."""
    monkeypatch.setattr(hf_mixed, "GROUPED_MIN_TOKENS", 0 if path == "own" else 10**9)
    taken: list[str] = []
    for name in ("_own_terms", "_masked_terms"):
        real = getattr(hf_mixed.Stack, name)

        def spy(self: Any, *args: Any, _real: Any = real, _name: str = name) -> Any:
            taken.append(_name)
            return _real(self, *args)

        monkeypatch.setattr(hf_mixed.Stack, name, spy)
    with HFDifferentialBackend(str(tiny_assets.base), tiny_assets.adapter, batch_size=2) as b:
        with b.sweep(MEMBERS):
            shared = _scores(b, MEMBERS)
        with b.sweep(MEMBERS):
            written = _written(b, GREEDY)
    assert set(taken) == {f"_{path}_terms"}
    _close(shared, own)
    with HFDifferentialBackend(str(tiny_assets.base), tiny_assets.adapter, batch_size=2) as b:
        assert written == _written(b, GREEDY)


def test_a_mixed_chunk_holds_its_rows_one_view_after_another(
    tiny_assets: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each view's rows of a shared forward form one run, so each LoRA module adds that
    view's own term over the run (not every view's term over every row)."""
    extra_runs: list[int] = []
    real = hf_mixed.Stack.select

    def spy(self: Any, rows: Sequence[int]) -> None:
        real(self, rows)
        if len(rows) > 1:
            extra_runs.append(len(self._runs) - len(set(rows)))

    monkeypatch.setattr(hf_mixed.Stack, "select", spy)
    with (
        HFDifferentialBackend(str(tiny_assets.base), tiny_assets.adapter, batch_size=2) as b,
        b.sweep(MEMBERS),
    ):
        _scores(b, MEMBERS)
    assert extra_runs and set(extra_runs) == {0}  # as many runs as views, every forward


def test_a_sweep_entered_in_any_view_order_gives_the_same(
    tiny_assets: Any, own: dict[int, Any]
) -> None:
    """The first miss may come from any member (a null, a scaled view): the live state of
    that view (swapped factors, changed scalings) never leaks into the shared rows."""
    order = [5, 3, 0, 1, 2, 4]
    with (
        HFDifferentialBackend(str(tiny_assets.base), tiny_assets.adapter, batch_size=3) as b,
        b.sweep(MEMBERS),
    ):
        got = {i: _scores(b, [MEMBERS[i]])[0] for i in order}
    _close(got, own)


GREEDY = GenerationSettings(10, temperature=0.0, top_p=1.0, seed=0, chat=False)
SAMPLED = GenerationSettings(10, temperature=0.9, top_p=1.0, seed=4, chat=False)


def _written(b: HFDifferentialBackend, settings: GenerationSettings) -> dict[int, list[str]]:
    out = {}
    for i, m in enumerate(MEMBERS):
        with open_view(b, m) as view:
            out[i] = [g.text for g in view.generate_batch(PROMPTS[:3], settings)]
    return out


@pytest.mark.parametrize("settings", [GREEDY, SAMPLED], ids=["greedy", "sampled"])
def test_the_first_generation_is_written_for_every_member_as_its_own(
    tiny_assets: Any, settings: GenerationSettings
) -> None:
    with HFDifferentialBackend(str(tiny_assets.base), tiny_assets.adapter, batch_size=2) as b:
        alone = _written(b, settings)
    with HFDifferentialBackend(str(tiny_assets.base), tiny_assets.adapter, batch_size=2) as b:
        with b.sweep(MEMBERS), views_at(b, "generate_batch") as calls:
            shared = _written(b, settings)
        assert calls == []  # one mixed batch wrote them all, outside the views' own path
    assert shared == alone
    assert len({tuple(t) for t in alone.values()}) > 2  # the views really write differently


def test_generation_ends_the_sharing(tiny_assets: Any) -> None:
    with HFDifferentialBackend(str(tiny_assets.base), tiny_assets.adapter, batch_size=2) as b:
        with b.sweep(BASE_AND_FT), views_at(b, "generate_batch") as calls:
            for opener in (b.as_finetuned, b.as_base):
                with opener() as view:
                    view.generate_batch(["The zebra"], GREEDY)
                    view.generate_batch(["Bread"], GREEDY)  # the second: each view alone
        assert calls == ["ft", "base"]
        with b.sweep(BASE_AND_FT), views_at(b, "_record") as forwards:
            with b.as_finetuned() as view:
                view.generate_batch(["The zebra"], GREEDY)
                view.next_token_full_batch(PROMPTS)
            with b.as_base() as view:
                view.next_token_full_batch(PROMPTS)
        assert "base" in forwards  # the base scored its own prompts


def test_a_block_only_the_base_asks_in_pauses_the_sweep(tiny_assets: Any) -> None:
    """Rewordings only the base writes are decoded for the base alone, and the sweep's
    shared generation is still there for what every member asks afterwards."""
    with HFDifferentialBackend(str(tiny_assets.base), tiny_assets.adapter, batch_size=2) as b:
        with b.sweep(MEMBERS), views_at(b, "generate_batch") as calls:
            with shared_forwards(b, BASE_ONLY), b.as_base() as view:
                view.generate_batch(["Bread"], GREEDY)
            for m in MEMBERS:  # the first shared generation: one mixed batch for all
                with open_view(b, m) as view:
                    view.generate_batch(["The zebra"], GREEDY)
            with b.as_finetuned() as view:
                view.generate_batch(["Bread"], GREEDY)  # never decoded for it: its own now
        assert calls == ["base", "ft"]


def test_a_calibrating_probes_own_sweeps_keep_or_pause_the_null_adapters(
    tiny_assets: Any,
) -> None:
    """Under the null proxy a probe's base-and-fine-tune block keeps the enclosing sweep
    (it holds every null); a base-only block pauses it."""
    with HFDifferentialBackend(str(tiny_assets.base), tiny_assets.adapter, batch_size=2) as b:
        proxy = NullCalibrationBackendProxy(b, seed=5, construction="norm_matched")
        with b.sweep(MEMBERS):
            outer = b._sweep
            with shared_forwards(proxy, BASE_AND_FT):
                assert b._sweep is outer
            with shared_forwards(proxy, BASE_ONLY):
                assert b._sweep is None
            assert b._sweep is outer


def test_base_rows_go_to_the_disk_base_cache(
    tiny_assets: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SWAY_DISABLE_BASE_CACHE")
    with HFDifferentialBackend(str(tiny_assets.base), tiny_assets.adapter, batch_size=2) as b:
        with b.sweep(BASE_AND_FT), b.as_finetuned() as view:
            view.next_token_full_batch(PROMPTS)
        shared = _base(b)
    with HFDifferentialBackend(str(tiny_assets.base), tiny_assets.adapter, batch_size=2) as b:
        with views_at(b, "_record") as forwards:
            stored = _base(b)
        assert forwards == []  # read back from disk
    for x, y in zip(shared, stored, strict=True):
        assert np.array_equal(x, y)


def _base(b: HFDifferentialBackend) -> list[Any]:
    with b.as_base() as view:
        return [d.logprobs for d in view.next_token_full_batch(PROMPTS)]


def test_what_cannot_share_scores_alone(
    tiny_assets: Any,
    own: dict[int, Any],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    with HFDifferentialBackend(str(tiny_assets.base), tiny_assets.adapter, batch_size=2) as b:
        # A view open: refused. One distinct member: nothing to share.
        with b.as_base(), pytest.raises(ViewError, match="outside views"), b.sweep(BASE_AND_FT):
            pass
        with b.sweep([SweepMember.base(), SweepMember.scaled(0.0), SweepMember.base()]):
            assert b._sweep is not None  # base and λ=0 are two views (two caches)
        with b.sweep([SweepMember.finetuned(), SweepMember.finetuned()]):
            assert b._sweep is None
        with b.sweep(MEMBERS), pytest.raises(ViewError, match="inside a sweep"):
            b.swap_adapter(tiny_assets.adapter)
        # Too large a stack, or an adapter that is not plain LoRA: each view alone.
        monkeypatch.setattr(hf_mixed, "MAX_STACK_BYTES", 0)
        with b.sweep(MEMBERS):
            assert b._sweep is None
        monkeypatch.undo()
        monkeypatch.setattr(hf_mixed, "mixable", lambda *_: False)
        with b.sweep(MEMBERS):
            assert b._sweep is None
    monkeypatch.undo()

    def broken(*_: Any) -> None:
        raise RuntimeError("rows cannot be told apart")

    monkeypatch.setattr(hf_mixed.Stack, "add_terms", broken)
    with (
        HFDifferentialBackend(str(tiny_assets.base), tiny_assets.adapter, batch_size=2) as b,
        caplog.at_level(logging.WARNING),
        b.sweep(MEMBERS),
    ):
        got = _scores(b, MEMBERS)
    assert "cannot share a batch" in caplog.text
    _close(got, own)


def test_calibrated_suite_matches_the_unshared_run(tiny_assets: Any, monkeypatch: Any) -> None:
    """A whole suite (null calibration, delta_kl, ablation, calibration_drift): the same
    verdicts, raws and z within jitter, in fewer forwards."""
    from spies import hf_entry

    from dlm_sway.suite.build import backend_from_spec
    from dlm_sway.suite.loader import from_dict
    from dlm_sway.suite.runner import run

    monkeypatch.setenv("SWAY_DISABLE_NULL_CACHE", "1")
    monkeypatch.setenv("SWAY_DISABLE_BASE_CACHE", "1")
    loaded = from_dict(
        {
            "models": {"ft": hf_entry(tiny_assets.base, tiny_assets.adapter, 4)},
            "defaults": {"seed": 0},
            "suite": [
                {"name": "nulls", "kind": "null_adapter", "runs": 5},
                {"name": "kl", "kind": "delta_kl", "prompts": PROMPTS},
                {"name": "abl", "kind": "adapter_ablation", "prompts": PROMPTS[:3]},
                {"name": "drift", "kind": "calibration_drift", "items_limit": 12},
            ],
        }
    )

    def suite(share: bool) -> tuple[Any, int]:
        if not share:
            monkeypatch.setattr(hf_mixed, "mixable", lambda *_: False)
        backend = backend_from_spec(loaded.spec.models.ft)
        try:
            return run(loaded, backend), backend.stats.forward_passes
        finally:
            backend.close()
            monkeypatch.undo()
            monkeypatch.setenv("SWAY_DISABLE_NULL_CACHE", "1")
            monkeypatch.setenv("SWAY_DISABLE_BASE_CACHE", "1")

    (alone, n_alone), (shared, n_shared) = suite(False), suite(True)
    assert n_shared < n_alone
    for a, s in zip(alone.probes, shared.probes, strict=True):
        assert (a.name, a.verdict) == (s.name, s.verdict)
        for x, y in ((a.raw, s.raw), (a.z_score, s.z_score)):
            assert (x is None) == (y is None)
            if x is not None:
                assert y == pytest.approx(x, rel=1e-5, abs=1e-7)


def test_shared_chunks_are_wider_but_bounded() -> None:
    from dlm_sway.backends.hf_views import MIX_CHUNK_TOKENS, _chunks

    def sizes(chunks: list[list[int]]) -> list[int]:
        return [len(c) for c in chunks]

    assert sizes(_chunks([10] * 20, 4)) == [4] * 5  # one view: the batch size
    assert sizes(_chunks([10] * 20, 4, widen=5)) == [20]  # five views: five times the rows
    # Past the batch size only up to MIX_CHUNK_TOKENS padded tokens, never below it.
    long = MIX_CHUNK_TOKENS // 2
    assert sizes(_chunks([long] * 12, 4, widen=3)) == [4, 4, 4]
    # ... and past one view's own chunk of these texts (here 1 text a view) likewise.
    third = MIX_CHUNK_TOKENS // 3
    assert sizes(_chunks([third] * 12, 4, widen=12, own_rows=1)) == [3, 3, 3, 3]
    # Logit rows (rolling log-probs keep one per token) stay within the cap given.
    assert sizes(_chunks([8] * 12, 4, widen=3, logits=[7] * 12, max_logits=28)) == [4, 4, 4]
    assert sorted(i for c in _chunks([3, 9, 1, 7] * 5, 2, widen=4) for i in c) == list(range(20))


def test_long_texts_under_many_views_never_hold_all_their_logits(
    tiny_assets: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rolling log-probs need one log-prob per token, not a vocabulary-wide row per token
    of every view at once: the head runs a bounded slice of positions at a time, and the
    numbers are those of the unsliced head."""
    from dlm_sway.backends import hf_positions

    texts = [" ".join(["word"] * 40) + f" {i}" for i in range(3)]
    nulls = (SweepMember.of_null(NullDraw(s, 0.02, 1.0, "init_scale")) for s in range(6))
    members = [*BASE_AND_FT, *nulls]
    with HFDifferentialBackend(str(tiny_assets.base), tiny_assets.adapter, batch_size=4) as b:
        with b.as_finetuned() as view:
            whole = [r.logprobs for r in view.rolling_logprob_batch(texts)]
        b.instrumentation.cache.clear()
        monkeypatch.setattr(hf_positions, "TARGET_SLICE", 16)
        seen: list[int] = []
        slice_logprobs = hf_positions.slice_logprobs

        def spy(head: Any, h: torch.Tensor, wanted: torch.Tensor) -> torch.Tensor:
            seen.append(h.shape[0])
            return slice_logprobs(head, h, wanted)

        monkeypatch.setattr(hf_positions, "slice_logprobs", spy)
        with b.sweep(members), b.as_finetuned() as view:
            sliced = [r.logprobs for r in view.rolling_logprob_batch(texts)]
    assert seen and max(seen) <= 16
    assert sum(seen) == sum(len(w) for w in whole) * len(members)  # every view's tokens
    for a, c in zip(whole, sliced, strict=True):
        np.testing.assert_allclose(a, c, atol=TOL, rtol=0)
