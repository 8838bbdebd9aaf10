"""Texts opening with the same long run of tokens compute that run once (``hf_trunks``):
each text's next-token dist still equals its own forward's within float jitter, in any
view and inside a sweep, and a model whose cache cannot be handed on scores texts whole."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest
import torch
from spies import views_at

from dlm_sway.backends import hf_views
from dlm_sway.backends.hf import HFDifferentialBackend
from dlm_sway.backends.hf_trunks import MAX_PACKED_TOKENS, MIN_TRUNK, Trunk, find_trunks, pack
from dlm_sway.core.scoring import BASE_AND_FT, NullDraw, SweepMember, open_view

pytestmark = pytest.mark.hf

#: The shape prompt_collapse asks for: prompts behind neutral padding of several lengths.
PAD = "the river runs past the mill and the old road bends toward the hills " * 8
PROMPTS = ["The zebra", "Cats sleep in the", "Fresh bread and", "A"]
TEXTS = [
    *PROMPTS,
    *(f"{PAD[:120]}\n\n{p}" for p in PROMPTS),
    *(f"{PAD[:400]}\n\n{p}" for p in PROMPTS),
    "A lone text with nothing in common",
]
TOL = 1e-4
MEMBERS = [*BASE_AND_FT, SweepMember.of_null(NullDraw(5, 0.02, 1.0, "norm_matched"))]


@pytest.fixture(autouse=True)
def _no_disk_base(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every backend here computes its base (no run reads another's from disk)."""
    monkeypatch.setenv("SWAY_DISABLE_BASE_CACHE", "1")


def _check(seqs: Sequence[Sequence[int]], trunks: list[Trunk]) -> None:
    seen: set[int] = set()
    for t in trunks:
        assert len(t.members) >= 2 and t.length >= MIN_TRUNK
        assert not seen & set(t.members)
        seen |= set(t.members)
        head = list(seqs[t.members[0]][: t.length])
        for m in t.members:
            assert list(seqs[m][: t.length]) == head and len(seqs[m]) > t.length


def test_runs_follow_the_longest_shared_openings() -> None:
    pad = list(range(100, 220))  # 120 shared tokens
    seqs = [
        [*pad[:40], 1, 2],
        [*pad[:40], 3],
        [*pad, 4, 5],
        [*pad, 6],
        [*pad, 7, 8, 9],
        [1, 2, 3],
        [*pad[:10], 9, 9],  # shares 10 tokens only: too short to be worth a forward
    ]
    trunks = find_trunks(seqs)
    _check(seqs, trunks)
    # Two runs, each on its own long opening: one run over all five would share 40 tokens
    # and forward the other 80 three times.
    assert sorted((t.length, t.members) for t in trunks) == [(40, (0, 1)), (120, (2, 3, 4))]


def test_runs_never_cross_keys_and_leave_every_member_a_token() -> None:
    pad = list(range(100, 150))
    seqs = [[*pad], [*pad, 1], [*pad, 2], [*pad, 3], [*pad]]
    keys = [0, 0, 1, 1, 0]
    trunks = find_trunks(seqs, keys)
    _check(seqs, trunks)
    for t in trunks:
        assert len({keys[m] for m in t.members}) == 1
    # A text that *is* the shared run keeps its last token for its own forward.
    assert {t.members for t in trunks} == {(0, 1, 4), (2, 3)}
    assert min(t.length for t in trunks) == len(pad) - 1
    assert find_trunks([]) == [] and find_trunks([[1] * 80]) == []


def test_long_tails_on_a_short_trunk_are_not_packed() -> None:
    """A packed row computes attention over all its token pairs: ten 200-token tails on a
    32-token trunk would cost more packed than whole."""
    head = list(range(100, 100 + MIN_TRUNK))
    seqs = [[*head, *([k] * 200)] for k in range(10)]
    assert find_trunks(seqs) == []
    seqs = [[*head, *([k] * 3)] for k in range(10)]  # short tails: one run
    assert [t.members for t in find_trunks(seqs)] == [tuple(range(10))]
    # A text longer than a packed row never joins one (its mask would be its length squared).
    long = [*head, *([7] * MAX_PACKED_TOKENS)]
    assert [t.members for t in find_trunks([*seqs, long])] == [tuple(range(10))]
    assert find_trunks([long, [*long, 1]]) == []


def _own(b: HFDifferentialBackend, member: SweepMember) -> list[np.ndarray[Any, Any]]:
    """Each text alone, one forward per text: no trunk can form."""
    with open_view(b, member) as view:
        return [view.next_token_full_batch([t])[0].logprobs for t in TEXTS]


def test_shared_openings_keep_each_texts_own_dist(tiny_assets: Any) -> None:
    with HFDifferentialBackend(str(tiny_assets.base), tiny_assets.adapter, batch_size=3) as b:
        own = {m: _own(b, m) for m in MEMBERS}
    with HFDifferentialBackend(str(tiny_assets.base), tiny_assets.adapter, batch_size=3) as b:
        for m in MEMBERS:
            with open_view(b, m):
                scorer = b._live_scorer()
                before = scorer.instr.stats.scored_tokens
                got = [d.logprobs for d in scorer.next_token_full(TEXTS, batched=True)]
                pushed = scorer.instr.stats.scored_tokens - before
                lengths = [len(scorer.encode(t)) for t in TEXTS]
            for x, y in zip(got, own[m], strict=True):
                np.testing.assert_allclose(x, y, atol=TOL, rtol=0)
            # Each padding went through the model once, not once per prompt.
            assert scorer._packing is True
            assert pushed < sum(lengths) - 2 * 3 * MIN_TRUNK
    # The views really differ (a trunk computed under the wrong view would not show it).
    assert not np.allclose(own[MEMBERS[0]][-2], own[MEMBERS[1]][-2], atol=1e-3)


def test_trunks_inside_a_sweep_stay_with_their_view(tiny_assets: Any) -> None:
    with HFDifferentialBackend(str(tiny_assets.base), tiny_assets.adapter, batch_size=3) as b:
        own = {m: _own(b, m) for m in MEMBERS}
    with HFDifferentialBackend(str(tiny_assets.base), tiny_assets.adapter, batch_size=3) as b:
        with b.sweep(MEMBERS), views_at(b, "_record") as forwards:
            shared = {}
            for m in MEMBERS:
                with open_view(b, m) as view:
                    shared[m] = [d.logprobs for d in view.next_token_full_batch(TEXTS)]
        assert set(forwards) == {"base"}  # one mixed set of forwards served all three
    for m in MEMBERS:
        for x, y in zip(shared[m], own[m], strict=True):
            np.testing.assert_allclose(x, y, atol=TOL, rtol=0)


def test_a_model_that_ignores_the_packed_mask_scores_texts_whole(
    tiny_assets: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The one-time check compares a packed row with the whole text whose tail comes last:
    a model that saw past the 4D mask (here: a plain causal one) fails it, and every text
    is then scored whole."""
    real = hf_views.packed_inputs

    def plain_causal(rows: Any, pad_id: int, dtype: Any, device: Any) -> Any:
        ids, kwargs = real(rows, pad_id, dtype, device)
        width = ids.shape[1]
        causal = torch.ones((width, width), dtype=torch.bool).tril()
        mask = torch.zeros((len(rows), 1, width, width), dtype=dtype)
        kwargs["attention_mask"] = mask.masked_fill_(~causal, torch.finfo(dtype).min)
        return ids, kwargs

    with HFDifferentialBackend(str(tiny_assets.base), tiny_assets.adapter, batch_size=3) as b:
        own = _own(b, MEMBERS[1])
    monkeypatch.setattr(hf_views, "packed_inputs", plain_causal)
    with (
        HFDifferentialBackend(str(tiny_assets.base), tiny_assets.adapter, batch_size=3) as b,
        b.as_finetuned() as view,
    ):
        got = [d.logprobs for d in view.next_token_full_batch(TEXTS)]
        assert b._live_scorer()._packing is False
    for x, y in zip(got, own, strict=True):
        np.testing.assert_allclose(x, y, atol=TOL, rtol=0)


def test_a_run_of_many_long_tails_packs_into_bounded_rows() -> None:
    trunk = Trunk(40, (0, 1, 2))
    seqs = [[7] * 40 + [k] * (MAX_PACKED_TOKENS // 2) for k in range(3)]
    rows = pack(seqs, trunk)
    assert [r.members for r in rows] == [(0,), (1,), (2,)]
    assert all(len(r.ids) <= MAX_PACKED_TOKENS and r.ids[:40] == (7,) * 40 for r in rows)
    short = pack([[7] * 40 + [k] for k in range(3)], trunk)
    assert len(short) == 1 and short[0].ends == (40, 41, 42) and short[0].starts == (40, 41, 42)
    assert short[0].positions == (*range(40), 40, 40, 40)
