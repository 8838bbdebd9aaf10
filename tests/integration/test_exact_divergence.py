"""Exact divergences on the HF backend: probes see the whole next-token distribution.

Every number here is checked against a direct float64 computation from the
logits of independently loaded reference models (no sway code), so "exact"
means exact over the whole vocabulary, not "close to the top-k estimate".
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

pytestmark = pytest.mark.hf

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("peft")

from dlm_sway.backends.hf import HFDifferentialBackend  # noqa: E402
from dlm_sway.core.divergence import divergence  # noqa: E402
from dlm_sway.probes._dists import dists  # noqa: E402
from dlm_sway.probes.base import RunContext  # noqa: E402
from dlm_sway.probes.delta_kl import DeltaKLProbe, DeltaKLSpec  # noqa: E402

PROMPTS = [
    "The",
    "The quick brown fox jumps over the lazy",
    "Cats sleep",
    "She opened the door and walked into the quiet library and",
    "The zebra astronaut",
    "The zebra astronaut sings quietly to the",
    "",
]
EXACT = 1e-6


@pytest.fixture(scope="module")
def reference(tiny_assets: Any) -> tuple[Any, Any]:
    from tiny_model import load_plain_and_peft

    return load_plain_and_peft(tiny_assets)


def _direct_rows(model: Any, tokenizer: Any, prompts: list[str]) -> list[Any]:
    """float64 log-softmax of each prompt's last position, one unpadded forward each.

    ``logits_to_keep=1`` as the backend asks: the lm_head on one row instead of all
    rounds differently (~2e-5 on SmolLM2's logits), which is not a divergence error.
    """
    rows = []
    for prompt in prompts:
        ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            logits = model(ids, logits_to_keep=1).logits[0, -1]
        rows.append(logits.double().log_softmax(-1))
    return rows


def _direct(base: Any, ft: Any, kind: str) -> float:
    """JS or KL(ft‖base) in nats from two float64 log-prob rows."""
    if kind == "kl":
        return float((ft.exp() * (ft - base)).sum())
    m = torch.logaddexp(base, ft) - math.log(2.0)
    return float(0.5 * (base.exp() * (base - m)).sum() + 0.5 * (ft.exp() * (ft - m)).sum())


@pytest.fixture(scope="module")
def exact_values(reference: tuple[Any, Any], hf_backend: HFDifferentialBackend) -> Any:
    plain, peft_model = reference
    base = _direct_rows(plain, hf_backend.tokenizer, PROMPTS)
    ft = _direct_rows(peft_model, hf_backend.tokenizer, PROMPTS)
    return {
        kind: [_direct(b, f, kind) for b, f in zip(base, ft, strict=True)] for kind in ("js", "kl")
    }


@pytest.mark.parametrize("kind", ["js", "kl"])
@pytest.mark.parametrize("top_k", [1, 16, 256])
def test_batched_divergences_are_exact_whatever_top_k(
    hf_backend: HFDifferentialBackend, exact_values: Any, kind: str, top_k: int
) -> None:
    with hf_backend.as_base() as view:
        base = dists(view, PROMPTS, top_k)
    with hf_backend.as_finetuned() as view:
        ft = dists(view, PROMPTS, top_k)
    got = [divergence(b, f, kind) for b, f in zip(base, ft, strict=True)]
    np.testing.assert_allclose(got, exact_values[kind], rtol=0, atol=EXACT)
    # The fine-tune really moves these prompts, so exactness is not 0 ≈ 0.
    assert min(exact_values["js"]) > 1e-3


@pytest.mark.parametrize("kind", ["js", "kl"])
def test_single_prompt_divergences_are_exact(
    fresh_backend: HFDifferentialBackend, exact_values: Any, kind: str
) -> None:
    from dlm_sway.core.scoring import FullDistributions

    got = []
    for prompt in PROMPTS:
        with fresh_backend.as_base() as view:
            assert isinstance(view, FullDistributions)
            base = view.next_token_full(prompt)
        with fresh_backend.as_finetuned() as view:
            ft = view.next_token_full(prompt)
        got.append(divergence(base, ft, kind))
    np.testing.assert_allclose(got, exact_values[kind], rtol=0, atol=EXACT)


def test_delta_kl_reports_the_exact_mean_and_a_zero_tail_bound(
    hf_backend: HFDifferentialBackend, exact_values: Any
) -> None:
    prompts = [p for p in PROMPTS if p]  # the spec refuses blank prompts
    for kind in ("js", "kl"):
        exact = [v for p, v in zip(PROMPTS, exact_values[kind], strict=True) if p]
        spec = DeltaKLSpec(name="d", prompts=prompts, divergence=kind, top_k=8)
        result = DeltaKLProbe().run(spec, RunContext(backend=hf_backend, calibrating=True))
        assert result.raw == pytest.approx(float(np.mean(exact)), abs=EXACT)
        np.testing.assert_allclose(result.evidence["per_prompt"], exact, rtol=0, atol=EXACT)
        assert result.evidence["max_tail_bound"] == 0.0


def test_full_dists_are_float32_shared_ids_and_batch_equals_single(
    fresh_backend: HFDifferentialBackend,
) -> None:
    with fresh_backend.as_finetuned() as view:
        single = [view.next_token_full(p) for p in PROMPTS]
        fresh_backend._live_scorer().full_instr.cache.clear()
        before = fresh_backend.stats.forward_passes
        batch = view.next_token_full_batch(PROMPTS)
        # 7 prompts, but "", "The" and "The zebra astronaut" are token prefixes of longer
        # ones: 4 texts to run, at batch_size=3 → 2 padded forwards.
        assert fresh_backend.stats.forward_passes - before == 2
        again = view.next_token_full_batch(PROMPTS)
        assert fresh_backend.stats.forward_passes - before == 2  # served from the cache
        topk = view.next_token_dist_batch(PROMPTS, top_k=16)
    vocab = len(fresh_backend.tokenizer)
    for s, b, a, t in zip(single, batch, again, topk, strict=True):
        assert a is b
        assert b.vocab_size == vocab and b.k == vocab and b.tail_logprob is None
        assert b.logprobs.dtype == np.float32 and b.logprobs.base is None  # own copy, no pin
        assert not b.logprobs.flags.writeable and not b.token_ids.flags.writeable
        assert b.token_ids is batch[0].token_ids  # one shared arange, not V ids per prompt
        np.testing.assert_array_equal(b.token_ids, np.arange(vocab))
        np.testing.assert_allclose(s.logprobs, b.logprobs, atol=1e-4)
        assert math.fsum(np.exp(b.logprobs.astype(np.float64))) == pytest.approx(1.0, abs=1e-5)
        # The full row agrees with the top-k path on the listed tokens.
        np.testing.assert_allclose(b.logprobs[t.token_ids], t.logprobs, atol=1e-6)


def test_top_k_error_stays_within_its_reported_bound(
    hf_backend: HFDifferentialBackend, exact_values: Any
) -> None:
    from dlm_sway.core.divergence import tail_error_bound

    for top_k in (1, 4, 16, 64):
        with hf_backend.as_base() as view:
            base = view.next_token_dist_batch(PROMPTS, top_k=top_k)
        with hf_backend.as_finetuned() as view:
            ft = view.next_token_dist_batch(PROMPTS, top_k=top_k)
        for b, f, exact in zip(base, ft, exact_values["js"], strict=True):
            bound = tail_error_bound(b, f, "js")
            assert 0.0 < bound <= math.log(2.0)
            assert abs(divergence(b, f, "js") - exact) <= bound + 1e-5
            assert tail_error_bound(b, f, "kl") == math.inf


def test_noise_floor_compares_whole_vocabulary_layouts(hf_backend: HFDifferentialBackend) -> None:
    """The floor an effect must clear is measured on the same exact dists as the effect."""
    vocab = len(hf_backend.tokenizer)
    pairs = hf_backend.base_layout_pairs(PROMPTS, 8)
    assert len(pairs) == len(PROMPTS)
    for batched, single in pairs:
        assert batched.k == single.k == vocab
        assert divergence(batched, single, "js") < 1e-6
