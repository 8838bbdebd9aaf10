"""Generations under several null adapters decoded in one mixed batch: the same texts
as one null at a time, the trained adapter untouched, and calibration unchanged."""

from __future__ import annotations

import logging
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import pytest
import torch
from spies import hf_entry, run_spied, views_at

from dlm_sway.backends import hf_mixed, hf_null_generate
from dlm_sway.backends.hf import HFDifferentialBackend
from dlm_sway.core.scoring import GenerationSettings, NullDraw, open_null
from dlm_sway.suite.loader import from_dict

pytestmark = pytest.mark.hf

PROMPTS = ["The zebra", "Cats sleep in the", "Fresh bread and", "The quick brown fox jumps"]
NULLS = [NullDraw(seed, 0.02, 1.0, "norm_matched") for seed in (11, 22, 33)]
GREEDY = GenerationSettings(12, temperature=0.0, top_p=1.0, seed=0, chat=False)
SAMPLED = GenerationSettings(12, temperature=0.8, top_p=0.9, seed=3, chat=False)


def _texts(backend: HFDifferentialBackend, settings: GenerationSettings) -> dict[int, list[str]]:
    out = {}
    for d in NULLS:
        with open_null(backend, d) as view:
            out[d.seed] = [g.text for g in view.generate_batch(PROMPTS, settings)]
    return out


@pytest.mark.parametrize("settings", [GREEDY, SAMPLED], ids=["greedy", "sampled"])
def test_prefetched_texts_are_each_nulls_own(tiny_assets: Any, settings: Any) -> None:
    with HFDifferentialBackend(str(tiny_assets.base), tiny_assets.adapter, batch_size=3) as one:
        alone = _texts(one, settings)
        with one.as_finetuned() as view:
            trained = [g.text for g in view.generate_batch(PROMPTS, settings)]
    with HFDifferentialBackend(str(tiny_assets.base), tiny_assets.adapter, batch_size=5) as mixed:
        got = mixed.prefetch_null_generations(NULLS, PROMPTS, settings)
        assert got is not None
        texts = {d.seed: [g.text for g in mine] for d, mine in zip(NULLS, got, strict=True)}
        assert texts == alone
        with views_at(mixed, "generate_batch") as calls:
            assert _texts(mixed, settings) == alone
            assert calls == []  # every null answered from its cache
            with mixed.as_finetuned() as view:
                assert [g.text for g in view.generate_batch(PROMPTS, settings)] == trained
            assert calls == ["ft"]
        assert list(mixed.peft_model.peft_config) == ["default"]  # the nulls are gone
        assert mixed.peft_model.active_adapter == "default"
    assert len({tuple(t) for t in alone.values()}) > 1  # the nulls really write differently


def test_adapters_peft_cannot_mix_are_left_to_one_null_at_a_time(
    tiny_assets: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    with HFDifferentialBackend(str(tiny_assets.base), tiny_assets.adapter, batch_size=3) as b:
        assert b.prefetch_null_generations(NULLS[:1], PROMPTS, GREEDY) is None  # one null
        assert b.prefetch_null_generations(NULLS, [], GREEDY) is None
        monkeypatch.setattr(hf_mixed, "mixable", lambda *_: False)  # e.g. DoRA
        assert b.prefetch_null_generations(NULLS, PROMPTS, GREEDY) is None
        with views_at(b, "generate_batch") as calls:
            _texts(b, GREEDY)
        assert len(calls) == len(NULLS)


def _suite(base: Any, adapter: Any) -> Any:
    return from_dict(
        {
            "models": {"ft": hf_entry(base, adapter, 4)},
            "defaults": {"seed": 0},
            "suite": [
                {"name": "nulls", "kind": "null_adapter", "runs": 4},
                {
                    "name": "style",
                    "kind": "style_fingerprint",
                    "prompts": PROMPTS[:2],
                    "doc_reference": "The zebra astronaut sings quietly. " * 8,
                    "max_new_tokens": 16,
                    "min_words": 1,
                },
            ],
        },
        source="inline",
        base_dir=base.parent,
    )


def _calibrate(tiny_assets: Any) -> tuple[Any, list[str]]:
    return run_spied(_suite(tiny_assets.base, tiny_assets.adapter), "generate_batch")


def test_a_generation_probe_calibrates_the_same_with_one_batch_for_its_nulls(
    tiny_assets: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("SWAY_DISABLE_NULL_CACHE", "1")
    shared, calls = _calibrate(tiny_assets)
    # The calibration's sweep writes its first generation for base, fine-tune and every
    # null in one mixed batch: no view writes it alone.
    assert calls == [], calls
    # Without the sweep, the first null writes alone (its prompts are learned then) and
    # the other three are answered from the one mixed batch decoded right after it.
    monkeypatch.setattr(HFDifferentialBackend, "sweep", lambda *_: nullcontext())
    batched, calls = _calibrate(tiny_assets)
    assert len([c for c in calls if c.startswith("null")]) == 1, calls
    monkeypatch.setattr(HFDifferentialBackend, "prefetch_null_generations", lambda *a: None)
    alone, calls = _calibrate(tiny_assets)
    assert len([c for c in calls if c.startswith("null")]) == 4, calls
    a, b = batched.by_name("style"), alone.by_name("style")
    assert a.null is not None and a.null.k == 4, a.message
    for got in (a, shared.by_name("style")):
        assert (got.verdict, got.raw, got.z_score) == (b.verdict, b.raw, b.z_score)
        assert got.null == b.null
    # A failure of the batched path costs only speed, and says so.
    monkeypatch.undo()
    monkeypatch.setenv("SWAY_DISABLE_NULL_CACHE", "1")
    monkeypatch.setattr(HFDifferentialBackend, "sweep", lambda *_: nullcontext())

    def broken(*_: Any) -> Any:
        raise RuntimeError("mixed batch unavailable")

    monkeypatch.setattr(hf_null_generate, "generate_mixed", broken)
    with caplog.at_level(logging.WARNING, logger="dlm_sway.probes.null_adapter"):
        fallback, _ = _calibrate(tiny_assets)
    c = fallback.by_name("style")
    assert (c.verdict, c.raw, c.z_score, c.null) == (b.verdict, b.raw, b.z_score, b.null)
    assert "batched null generation failed (RuntimeError: mixed batch unavailable)" in caplog.text


def test_per_module_ranks_and_dropout_batch_exactly(tiny_assets: Any, tmp_path: Path) -> None:
    """Each LoRA module's mask follows its own rank (``rank_pattern``); dropout is off."""
    from finetune_kinds import lora, train_adapter

    config = lora(rank_pattern={"v_proj": 2})
    config.lora_dropout = 0.1
    adapter = train_adapter(tiny_assets.base, tmp_path / "ranks", config, steps=3)
    with HFDifferentialBackend(str(tiny_assets.base), adapter, batch_size=3) as one:
        alone = _texts(one, GREEDY)
    with HFDifferentialBackend(str(tiny_assets.base), adapter, batch_size=3) as mixed:
        assert mixed.prefetch_null_generations(NULLS, PROMPTS, GREEDY) is not None
        with views_at(mixed, "generate_batch") as calls:
            assert _texts(mixed, GREEDY) == alone
        assert calls == []


def test_a_second_prefetch_of_cached_texts_and_a_failed_one_are_not_redone(
    tiny_assets: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    with HFDifferentialBackend(str(tiny_assets.base), tiny_assets.adapter, batch_size=3) as b:
        first = b.prefetch_null_generations(NULLS, PROMPTS, GREEDY)
        tries: list[int] = []
        real = hf_null_generate.generate_mixed

        def counted(*args: Any) -> Any:
            tries.append(1)
            return real(*args)

        monkeypatch.setattr(hf_null_generate, "generate_mixed", counted)
        assert b.prefetch_null_generations(NULLS, PROMPTS, GREEDY) == first  # from the caches
        assert tries == []

        def broken(*_: Any) -> Any:
            tries.append(1)
            raise RuntimeError("rows cannot be told apart")

        monkeypatch.setattr(hf_null_generate, "generate_mixed", broken)
        with pytest.raises(RuntimeError):
            b.prefetch_null_generations(NULLS, PROMPTS, SAMPLED)
        assert b.prefetch_null_generations(NULLS, PROMPTS[:2], SAMPLED) is None  # not retried
        assert tries == [1]
        with b.as_finetuned():  # the failed attempt released its claim on the weights
            pass


def test_the_two_model_backend_never_batches_nulls(tiny_assets: Any, tmp_path: Path) -> None:
    from dlm_sway.backends.registry import build_backend

    two = build_backend(
        "two_model", base=str(tiny_assets.base), finetuned=str(tiny_assets.base), device="cpu"
    )
    try:
        assert two.prefetch_null_generations(NULLS, PROMPTS, GREEDY) is None
    finally:
        two.close()


def test_mixed_batches_grow_to_the_kv_budget_and_write_the_same_texts(
    tiny_assets: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A mixed batch holds up to MIXED_ROWS plain batches while its KV cache fits the
    budget, never fewer rows than a plain batch, and its rows' texts do not depend on it."""
    from dlm_sway.backends import hf_generate

    sizes: list[int] = []
    real = hf_generate._length_chunks

    def spied(rows: Any, batch_size: int) -> Any:
        sizes.append(batch_size)
        return real(rows, batch_size)

    monkeypatch.setattr(hf_generate, "_length_chunks", spied)
    texts = []
    for budget in (1 << 40, 0):
        monkeypatch.setattr(hf_null_generate, "KV_BUDGET_BYTES", budget)
        with HFDifferentialBackend(str(tiny_assets.base), tiny_assets.adapter, batch_size=2) as b:
            got = b.prefetch_null_generations(NULLS, PROMPTS, GREEDY)
            assert got is not None
            texts.append([[g.text for g in mine] for mine in got])
            config = b.peft_model.get_base_model().config
            per_token = hf_null_generate.kv_bytes_per_token(b.peft_model)
    assert sizes == [hf_null_generate.MIXED_ROWS * 2, 2]
    assert texts[0] == texts[1]
    head_dim = config.hidden_size // config.num_attention_heads
    kv_heads = config.num_key_value_heads or config.num_attention_heads
    assert per_token == 2 * config.num_hidden_layers * kv_heads * head_dim * 4  # fp32


def test_a_model_whose_kv_size_is_unknown_keeps_twice_the_plain_batch() -> None:
    class Bare(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.layer = torch.nn.Linear(2, 2)

    assert hf_null_generate.kv_bytes_per_token(Bare()) is None
    odd = Bare()
    odd.config = type(  # type: ignore[assignment]
        "Config", (), {"num_hidden_layers": 2, "num_attention_heads": [4, 8], "hidden_size": 64}
    )()
    assert hf_null_generate.kv_bytes_per_token(odd) is None  # per-layer head counts: unknown
    mixed = object.__new__(hf_null_generate._MixedGenerator)
    mixed.model, mixed.batch_size = Bare(), 3
    assert mixed._chunk_rows([]) == 6
