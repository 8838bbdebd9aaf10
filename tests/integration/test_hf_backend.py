"""Invariants of the HF + PEFT backend on a tiny in-process Llama with a trained LoRA.

These are the properties every probe silently relies on: views really are the
base / fine-tune / scaled / null model, weights come back bit-exactly, batching
does not change numbers, and user mistakes give a clear BackendLoadError.
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytestmark = pytest.mark.hf

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("peft")

from dlm_sway.backends.hf import HFDifferentialBackend  # noqa: E402
from dlm_sway.backends.hf_views import token_dist_from_row  # noqa: E402
from dlm_sway.backends.instrumentation import ForwardCache, Instrumentation  # noqa: E402
from dlm_sway.core.errors import BackendLoadError, ProbeError, ViewError  # noqa: E402
from dlm_sway.core.scoring import (  # noqa: E402
    NullCalibratedBackend,
    PreflightCheckable,
    ScalableDifferentialBackend,
    ScoringModel,
)

PROMPTS = [
    "The",
    "The quick brown fox jumps over the lazy",
    "Cats sleep",
    "She opened the door and walked into the quiet library and",
    "The zebra astronaut",
    "",
]
TEXTS = [
    "The zebra astronaut sings quietly to the purple moon.",
    "Fresh bread",
    "A",
    "He wrote a letter to his friend about the long journey home and the river.",
]
PAIRS = [
    ("The zebra", " astronaut sings"),
    ("The quick brown fox jumps over the", " lazy dog."),
    ("Cats", " sleep in the sun"),
    ("", "Fresh bread and hot coffee"),
]
TOL = 1e-4


def _full(view: ScoringModel, prompt: str) -> np.ndarray:
    """The whole next-token log-prob row, indexed by token id."""
    dist = view.next_token_dist(prompt, top_k=10**6)
    assert dist.tail_logprob is None
    row = np.empty(dist.vocab_size, dtype=np.float64)
    row[dist.token_ids] = dist.logprobs
    return row


def _lora_snapshot(backend: HFDifferentialBackend) -> dict[str, Any]:
    model = backend.peft_model
    state = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" in n}
    from peft.tuners.lora import LoraLayer

    scalings = {n: dict(m.scaling) for n, m in model.named_modules() if isinstance(m, LoraLayer)}
    return {"state": state, "scalings": scalings}


def _assert_bit_exact(backend: HFDifferentialBackend, snap: dict[str, Any]) -> None:
    now = _lora_snapshot(backend)
    assert now["scalings"] == snap["scalings"]
    assert now["state"].keys() == snap["state"].keys()
    for name, before in snap["state"].items():
        assert torch.equal(now["state"][name], before), name


# ---------------------------------------------------------------- views are what they claim


def test_backend_satisfies_protocols(hf_backend: HFDifferentialBackend) -> None:
    assert isinstance(hf_backend, ScalableDifferentialBackend)
    assert isinstance(hf_backend, NullCalibratedBackend)
    assert isinstance(hf_backend, PreflightCheckable)
    with hf_backend.as_base() as view:
        assert isinstance(view, ScoringModel)
        assert view.id == "base"
    with hf_backend.as_finetuned() as view:
        assert view.id == "ft"
    with hf_backend.as_scaled_adapter(0.5) as view:
        assert view.id == "scaled_0.5"
    with hf_backend.as_null_adapter(7, init_scale=0.02, rank_scale=2.0) as view:
        assert view.id == "null_7_s0.02_r2"


def test_base_and_ft_views_match_independent_models(
    hf_backend: HFDifferentialBackend, tiny_assets: Any
) -> None:
    from tiny_model import load_plain_and_peft

    plain, peft_model = load_plain_and_peft(tiny_assets)
    text = TEXTS[0]
    ids = hf_backend.tokenizer(text, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        ref_base = plain(ids).logits[0, -1].float().log_softmax(-1).numpy()
        ref_ft = peft_model(ids).logits[0, -1].float().log_softmax(-1).numpy()
    with hf_backend.as_base() as view:
        base_row = _full(view, text)
    with hf_backend.as_finetuned() as view:
        ft_row = _full(view, text)
    np.testing.assert_allclose(base_row, ref_base, atol=1e-5)
    np.testing.assert_allclose(ft_row, ref_ft, atol=1e-5)
    # The trained adapter must really move the model, or every other test is vacuous.
    assert np.abs(ft_row - base_row).max() > 0.05


def test_scaled_zero_is_base_and_one_is_ft(hf_backend: HFDifferentialBackend) -> None:
    rows = {}
    for name, opener in {
        "base": hf_backend.as_base,
        "ft": hf_backend.as_finetuned,
        "s0": lambda: hf_backend.as_scaled_adapter(0.0),
        "s1": lambda: hf_backend.as_scaled_adapter(1.0),
        "s2": lambda: hf_backend.as_scaled_adapter(2.0),
    }.items():
        with opener() as view:
            rows[name] = _full(view, PROMPTS[4])
    np.testing.assert_allclose(rows["s0"], rows["base"], atol=1e-5)
    np.testing.assert_allclose(rows["s1"], rows["ft"], atol=1e-5)
    assert np.abs(rows["s2"] - rows["ft"]).max() > 1e-3  # overshoot is a different model


def test_scaled_view_restores_scalings_even_on_error(hf_backend: HFDifferentialBackend) -> None:
    snap = _lora_snapshot(hf_backend)
    with hf_backend.as_scaled_adapter(0.3) as view:
        view.next_token_dist("The", top_k=4)
    _assert_bit_exact(hf_backend, snap)
    with pytest.raises(KeyError), hf_backend.as_scaled_adapter(1.7):
        raise KeyError("boom")
    _assert_bit_exact(hf_backend, snap)
    with pytest.raises(ValueError, match="finite"):
        hf_backend.as_scaled_adapter(math.nan)


def test_null_view_is_deterministic_per_seed(hf_backend: HFDifferentialBackend) -> None:
    def null_row(seed: int) -> np.ndarray:
        # Clear the cache so the second entry really recomputes with regenerated noise.
        hf_backend.instrumentation.cache.clear()
        with hf_backend.as_null_adapter(seed, init_scale=0.5) as view:
            return _full(view, PROMPTS[1])

    first, again, other = null_row(11), null_row(11), null_row(12)
    np.testing.assert_array_equal(first, again)
    assert np.abs(first - other).max() > 1e-6
    with hf_backend.as_finetuned() as view:
        assert np.abs(first - _full(view, PROMPTS[1])).max() > 1e-3


def test_null_view_noise_has_requested_scale(hf_backend: HFDifferentialBackend) -> None:
    with hf_backend.as_null_adapter(3, init_scale=0.02, rank_scale=4.0):
        weights = [
            p.detach().flatten()
            for n, p in hf_backend.peft_model.named_parameters()
            if "lora_A" in n or "lora_B" in n
        ]
        std = float(torch.cat(weights).std())
    assert std == pytest.approx(0.02 * math.sqrt(4.0), rel=0.1)


def test_null_view_restores_weights_bit_exactly_even_on_error(
    hf_backend: HFDifferentialBackend, tiny_assets: Any
) -> None:
    snap = _lora_snapshot(hf_backend)
    with hf_backend.as_null_adapter(5) as view:
        view.rolling_logprob(TEXTS[0])
        changed = _lora_snapshot(hf_backend)["state"]
        assert any(not torch.equal(changed[n], snap["state"][n]) for n in changed)
    _assert_bit_exact(hf_backend, snap)
    with pytest.raises(RuntimeError, match="probe crashed"), hf_backend.as_null_adapter(6):
        raise RuntimeError("probe crashed")
    _assert_bit_exact(hf_backend, snap)
    # And the fine-tune still scores exactly as before the null views.
    with hf_backend.as_finetuned() as view:
        hf_backend.instrumentation.cache.clear()
        after = _full(view, PROMPTS[2])
    from tiny_model import load_plain_and_peft

    _, peft_model = load_plain_and_peft(tiny_assets)
    ids = hf_backend.tokenizer(PROMPTS[2], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        ref = peft_model(ids).logits[0, -1].float().log_softmax(-1).numpy()
    np.testing.assert_allclose(after, ref, atol=1e-5)


@pytest.mark.parametrize("rank_scale", [0.0, -1.0, math.nan, math.inf])
def test_null_view_rejects_bad_rank_scale(
    hf_backend: HFDifferentialBackend, rank_scale: float
) -> None:
    with pytest.raises(ValueError, match="rank_scale"):
        hf_backend.as_null_adapter(0, rank_scale=rank_scale)


def test_views_are_mutually_exclusive(hf_backend: HFDifferentialBackend) -> None:
    openers = [
        hf_backend.as_base,
        hf_backend.as_finetuned,
        lambda: hf_backend.as_scaled_adapter(0.5),
        lambda: hf_backend.as_null_adapter(1),
    ]
    snap = _lora_snapshot(hf_backend)
    for outer in openers:
        for inner in openers:
            with outer(), pytest.raises(ViewError, match="active"), inner():
                pass
    _assert_bit_exact(hf_backend, snap)
    with hf_backend.as_finetuned() as view:
        pass
    with pytest.raises(ViewError, match="after its with-block"):
        view.next_token_dist("The")


# ---------------------------------------------------------------- scoring paths


def test_batched_paths_equal_single_paths(fresh_backend: HFDifferentialBackend) -> None:
    with fresh_backend.as_finetuned() as view:
        single_dists = [view.next_token_dist(p, top_k=16) for p in PROMPTS]
        single_lp = [view.logprob_of(p, c) for p, c in PAIRS]
        single_roll = [view.rolling_logprob(t) for t in TEXTS]
        fresh_backend.instrumentation.cache.clear()
        before = fresh_backend.stats.forward_passes
        batch_dists = view.next_token_dist_batch(PROMPTS, top_k=16)
        batch_lp = view.logprob_of_batch(PAIRS)
        batch_roll = view.rolling_logprob_batch(TEXTS)
    # batch_size=3: 6 prompts → 2 forwards, 4 pairs → 2, 4 texts → 2 (which rows share a
    # forward is the chunker's cheapest cut: two of two pad less than three and one).
    assert fresh_backend.stats.forward_passes - before == 6
    assert fresh_backend.stats.max_batch_size >= 2
    for s, b in zip(single_dists, batch_dists, strict=True):
        np.testing.assert_array_equal(s.token_ids, b.token_ids)
        np.testing.assert_allclose(s.logprobs, b.logprobs, atol=TOL)
        assert s.tail_logprob is not None and b.tail_logprob is not None
        assert s.tail_logprob == pytest.approx(b.tail_logprob, abs=TOL)
    np.testing.assert_allclose(single_lp, batch_lp, atol=TOL)
    for s, b in zip(single_roll, batch_roll, strict=True):
        np.testing.assert_array_equal(s.token_ids, b.token_ids)
        np.testing.assert_allclose(s.logprobs, b.logprobs, atol=TOL)
        assert s.total_logprob == pytest.approx(b.total_logprob, abs=TOL)


def test_logprob_of_scores_only_the_completion(hf_backend: HFDifferentialBackend) -> None:
    prompt, completion = "The quick brown fox", " jumps over the lazy dog."
    n_prompt = len(hf_backend.tokenizer(prompt)["input_ids"])
    with hf_backend.as_finetuned() as view:
        total = view.logprob_of(prompt, completion)
        rolling = view.rolling_logprob(prompt + completion)
        with pytest.raises(ProbeError, match="no tokens"):
            view.logprob_of(prompt, "")
    assert rolling.num_tokens == len(rolling.token_ids) == len(rolling.logprobs) + 1
    assert total == pytest.approx(float(rolling.logprobs[n_prompt - 1 :].sum()), abs=1e-4)
    assert total < 0


def test_rolling_logprob_of_single_token_text_is_empty(hf_backend: HFDifferentialBackend) -> None:
    with hf_backend.as_base() as view:
        empty = view.rolling_logprob("")  # BOS only
    assert empty.num_tokens == 1 and empty.logprobs.shape == (0,)
    assert empty.total_logprob == 0.0


def test_token_dist_tail_states(hf_backend: HFDifferentialBackend) -> None:
    with hf_backend.as_finetuned() as view:
        full = view.next_token_dist("The", top_k=10**6)
        top = view.next_token_dist("The", top_k=5)
    assert full.tail_logprob is None and full.k == full.vocab_size
    assert top.k == 5 and np.all(np.diff(top.logprobs) <= 0)
    assert top.tail_logprob is not None and top.tail_logprob < 0
    expected = math.log1p(-float(np.exp(top.logprobs.astype(np.float64)).sum()))
    assert top.tail_logprob == pytest.approx(expected, abs=1e-5)
    # A tail that exists but underflows reports 0.0, not -inf.
    row = torch.full((50,), -1000.0)
    row[3] = 0.0
    assert token_dist_from_row(row, 2).tail_logprob == 0.0
    with pytest.raises(ValueError, match="read-only"):
        full.token_ids[0] = 1  # cached results are read-only


def test_generate_is_deterministic_greedy(hf_backend: HFDifferentialBackend) -> None:
    prompt = "The zebra astronaut"
    with hf_backend.as_finetuned() as view:
        first = view.generate(prompt, 8)
        second = view.generate(prompt, 8)
        nothing = view.generate(prompt, 0)
    assert first == second and first
    assert not first.startswith(prompt)
    assert nothing == ""
    # Greedy: the first generated token is the argmax of the next-token distribution.
    with hf_backend.as_finetuned() as view:
        top = view.next_token_dist(prompt, top_k=1)
    first_token = hf_backend.tokenizer(prompt + first)["input_ids"]
    prompt_len = len(hf_backend.tokenizer(prompt)["input_ids"])
    assert first_token[prompt_len] == int(top.token_ids[0])


def test_sampling_is_seeded_and_leaves_global_rng_alone(
    hf_backend: HFDifferentialBackend,
) -> None:
    torch.manual_seed(123)
    expected_next = torch.rand(1)
    torch.manual_seed(123)
    with hf_backend.as_finetuned() as view:
        a = view.generate("The", 12, temperature=1.5, seed=4)
        b = view.generate("The", 12, temperature=1.5, seed=4)
        c = view.generate("The", 12, temperature=1.5, seed=5)
    assert a == b and a != c
    assert torch.equal(torch.rand(1), expected_next)


# ---------------------------------------------------------------- cache and stats


def test_forward_cache_serves_repeats(fresh_backend: HFDifferentialBackend) -> None:
    stats = fresh_backend.stats
    with fresh_backend.as_finetuned() as view:
        view.next_token_dist("The quick", top_k=8)
        passes = stats.forward_passes
        view.next_token_dist("The quick", top_k=8)
        assert stats.forward_passes == passes and stats.cache_hits == 1
        view.next_token_dist_batch(["The quick", "Cats sleep", "Cats sleep"], top_k=8)
        assert stats.forward_passes == passes + 1  # one miss, deduplicated
        view.next_token_dist("The quick", top_k=9)  # top_k is part of the key
        assert stats.forward_passes == passes + 2
    with fresh_backend.as_base() as view:
        view.next_token_dist("The quick", top_k=8)  # another view is another namespace
    assert stats.forward_passes == passes + 3
    summary = stats.to_dict()
    assert summary["cache_hits"] == 3 and summary["cache_misses"] == 4
    assert summary["hit_rate"] == pytest.approx(3 / 7)
    assert summary["scored_tokens"] > 0 and summary["scoring_wall_s"] > 0


def test_close_lambdas_never_share_cached_results(fresh_backend: HFDifferentialBackend) -> None:
    # Both ids print as "scaled_0.123457"; the cache namespace keeps full precision.
    with fresh_backend.as_scaled_adapter(0.1234567) as view:
        low = view.next_token_dist("The", top_k=4)
    with fresh_backend.as_scaled_adapter(0.1234568) as view:
        assert view.id == "scaled_0.123457"
        high = view.next_token_dist("The", top_k=4)
    assert fresh_backend.stats.forward_passes == 2
    assert low is not high


def test_forward_cache_is_bounded_lru() -> None:
    instr = Instrumentation(cache_maxsize=2)
    calls: list[list[int]] = []

    def compute(idx: list[int]) -> list[int]:
        calls.append(idx)
        return [i * 10 for i in idx]

    assert instr.cached_batch("op", "v", ["a", "b", "a"], 0, compute) == [0, 10, 0]
    assert calls == [[0, 1]]
    assert instr.cached_batch("op", "v", ["c"], 0, compute) == [0]  # evicts "a"
    assert len(instr.cache) == 2
    found, _ = instr.cache.get(ForwardCache.key("op", "v", "a", 0))
    assert not found
    long_prompt = "x" * 1000
    assert ForwardCache.key("op", "v", long_prompt, 0)[2].startswith("h:")


# ---------------------------------------------------------------- checks and identity


def test_preflight_passes_on_good_adapter(hf_backend: HFDifferentialBackend) -> None:
    ok, reason = hf_backend.preflight_finite_check()
    assert ok, reason


def test_preflight_fails_on_nan_adapter(tiny_assets: Any) -> None:
    backend = HFDifferentialBackend(str(tiny_assets.base), tiny_assets.nan_adapter)
    ok, reason = backend.preflight_finite_check()
    assert not ok
    assert "NaN" in reason and "fine-tuned" in reason and "adapter" in reason
    backend.close()


def test_cache_identity_tracks_adapter_contents(tiny_assets: Any, adapter_copy: Path) -> None:
    base = str(tiny_assets.base)
    first = HFDifferentialBackend(base, adapter_copy).cache_identity()
    assert first == HFDifferentialBackend(base, adapter_copy).cache_identity()
    assert first.startswith("hf:") and first.endswith(":fp32")
    # "Retrain" in place: same path, different weights.
    shutil.copy(
        tiny_assets.zero_adapter / "adapter_model.safetensors",
        adapter_copy / "adapter_model.safetensors",
    )
    assert HFDifferentialBackend(base, adapter_copy).cache_identity() != first


def test_adapter_norms_and_summary(hf_backend: HFDifferentialBackend, tiny_assets: Any) -> None:
    norms = hf_backend.adapter_norms()
    assert len(norms) == 4 and all(v > 0 for v in norms.values())
    module = hf_backend.peft_model.get_submodule("base_model.model.model.layers.0.self_attn.q_proj")
    with torch.no_grad():
        a, b = module.lora_A["default"].weight, module.lora_B["default"].weight
        delta = module.scaling["default"] * b @ a
    assert norms["model.layers.0.self_attn.q_proj"] == pytest.approx(
        float(torch.linalg.norm(delta)), rel=1e-5
    )
    # Norms describe the trained adapter even while a null view rewrites the weights.
    with hf_backend.as_null_adapter(2):
        assert hf_backend.adapter_norms() == norms
    summary = hf_backend.adapter_summary()
    assert summary["num_modules"] == 4 and summary["ranks"] == [4]
    assert summary["alphas"] == [8.0] and summary["target_modules"] == ["q_proj", "v_proj"]
    assert summary["total_params"] == 4 * (4 * 64 + 64 * 4) - 2 * (64 - 32) * 4
    zero = HFDifferentialBackend(str(tiny_assets.base), tiny_assets.zero_adapter)
    assert set(zero.adapter_norms().values()) == {0.0}


def test_tokenizer_comes_from_adapter_dir_and_pad_falls_back_to_eos(
    tiny_assets: Any, adapter_copy: Path
) -> None:
    from tiny_model import build_tokenizer

    tokenizer = build_tokenizer()
    tokenizer.pad_token = None
    tokenizer.save_pretrained(adapter_copy)
    backend = HFDifferentialBackend(str(tiny_assets.base), adapter_copy)
    assert backend.tokenizer.pad_token == backend.tokenizer.eos_token == "</s>"
    assert backend.tokenizer.padding_side == "left"


def test_close_is_idempotent(tiny_assets: Any) -> None:
    backend = HFDifferentialBackend(str(tiny_assets.base), tiny_assets.adapter)
    backend.close()
    backend.close()
    with pytest.raises(ViewError, match="closed"), backend.as_base():
        pass


# ---------------------------------------------------------------- load errors


def _non_lora(tiny_assets: Any, tmp: Path) -> Path:
    from tiny_model import rewrite_adapter_config

    path = Path(shutil.copytree(tiny_assets.adapter, tmp / "ia3"))
    rewrite_adapter_config(path, peft_type="IA3")
    return path


def _no_config(tiny_assets: Any, tmp: Path) -> Path:
    path = Path(shutil.copytree(tiny_assets.adapter, tmp / "bare"))
    (path / "adapter_config.json").unlink()
    return path


@pytest.mark.parametrize(
    ("case", "match"),
    [
        ("missing_base", "base model path .* does not exist"),
        ("hub_id_offline", "pass its local directory"),
        ("missing_adapter", "adapter path .* does not exist"),
        ("not_peft", "not a PEFT adapter"),
        ("non_lora", "unsupported adapter type 'IA3'"),
        ("shape_mismatch", "does not fit base model"),
        ("bad_dtype", "unknown dtype 'fp8'"),
    ],
)
def test_load_errors_are_actionable(
    tiny_assets: Any, tmp_path: Path, case: str, match: str
) -> None:
    base, adapter = str(tiny_assets.base), tiny_assets.adapter
    if case == "missing_base":
        base = str(tmp_path / "no_such_model")
    elif case == "hub_id_offline":
        base = "sway-test-org/definitely-not-cached"
    elif case == "missing_adapter":
        adapter = tmp_path / "no_such_adapter"
    elif case == "not_peft":
        adapter = _no_config(tiny_assets, tmp_path)
    elif case == "non_lora":
        adapter = _non_lora(tiny_assets, tmp_path)
    elif case == "shape_mismatch":
        adapter = tiny_assets.mismatched_adapter
    dtype = "fp8" if case == "bad_dtype" else "auto"
    with pytest.raises(BackendLoadError, match=match):
        HFDifferentialBackend(base, adapter, dtype=dtype)


def test_gguf_base_resolves_to_directory_plus_file(tmp_path: Path) -> None:
    from dlm_sway.backends.hf_load import resolve_base

    gguf = tmp_path / "model-q8.gguf"
    gguf.write_bytes(b"GGUF")
    location = resolve_base(str(gguf), None)
    assert (location.source, location.gguf_file) == (str(tmp_path.resolve()), "model-q8.gguf")
    assert resolve_base(str(tmp_path), "model-q8.gguf").gguf_file == "model-q8.gguf"
    with pytest.raises(BackendLoadError, match="not found"):
        resolve_base(str(tmp_path), "other.gguf")
    (tmp_path / "weights.bin").write_bytes(b"")
    with pytest.raises(BackendLoadError, match="not a .gguf file"):
        resolve_base(str(tmp_path / "weights.bin"), None)
