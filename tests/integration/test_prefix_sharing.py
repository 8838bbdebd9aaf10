"""Next-token dists of prompts that prefix one another come from one forward per longest text."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pytest

from dlm_sway.backends.hf import HFDifferentialBackend
from dlm_sway.backends.hf_views import prefix_hosts

if TYPE_CHECKING:
    from tiny_model import TinyAssets

pytestmark = pytest.mark.hf

#: A dialogue scored turn by turn (each context extends the last), a duplicate, a stranger.
DIALOGUE = [
    "User: hello there\nAssistant:",
    "User: hello there\nAssistant: The quick",
    "User: hello there\nAssistant: The quick brown fox\nUser: more\nAssistant:",
    "User: hello there\nAssistant: The quick",
    "Cats sleep",
]


def test_prefix_hosts_finds_the_longest_extension() -> None:
    seqs = [[1, 2], [1, 2, 3, 4], [1, 2, 3], [5], [1, 2, 3], [1, 9], [], [7, 7]]
    hosts = prefix_hosts(seqs)
    assert hosts[0] == hosts[2] == hosts[4] == 1 and hosts[1] == 1
    assert hosts[5] == 5 and hosts[3] == 3 and hosts[7] == 7  # diverging or unrelated
    assert seqs[hosts[6]][:0] == []  # the empty sequence is a prefix of something
    for i, h in enumerate(hosts):
        assert seqs[h][: len(seqs[i])] == seqs[i] and hosts[h] == h


@pytest.mark.parametrize("view", ["base", "ft"])
def test_shared_forwards_give_each_prompts_own_dist(tiny_assets: TinyAssets, view: str) -> None:
    def dists(prompts: list[str]) -> tuple[list[np.ndarray], int]:
        with HFDifferentialBackend(
            str(tiny_assets.base), tiny_assets.adapter, batch_size=2
        ) as backend:
            opener = backend.as_base if view == "base" else backend.as_finetuned
            with opener() as v:
                scorer = backend._live_scorer()
                before = scorer.instr.stats.forward_passes
                out = scorer.next_token_full(prompts, batched=True)
                forwards = scorer.instr.stats.forward_passes - before
                top = scorer.next_token_dists(prompts, 5, batched=True)
                assert [d.token_ids.tolist() for d in top] == [
                    v.next_token_dist(p, 5).token_ids.tolist() for p in prompts
                ]
        return [d.logprobs for d in out], forwards

    shared, forwards = dists(DIALOGUE)
    alone = [dists([p])[0][0] for p in DIALOGUE]
    for got, want in zip(shared, alone, strict=True):
        np.testing.assert_allclose(got, want, atol=1e-5)
    assert forwards == 1  # 5 prompts at batch_size 2, yet one forward: 2 longest texts
