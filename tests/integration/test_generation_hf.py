"""Generation on the HF backend with the tiny in-process model.

Batched output must equal one-prompt output (greedy and seeded sampling), so
every comparison runs the two on *separate* backends: one backend's run cache
would otherwise serve the second call from the first.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import torch

from dlm_sway.backends import hf_generate
from dlm_sway.backends.hf import HFDifferentialBackend
from dlm_sway.core.errors import ViewError
from dlm_sway.core.scoring import (
    BASE_AND_FT,
    ChatTurn,
    Generating,
    GeneratingBatches,
    GenerationBatch,
    GenerationError,
    GenerationSettings,
    shared_forwards,
)

if TYPE_CHECKING:
    from tiny_model import TinyAssets

pytestmark = pytest.mark.hf

PROMPTS = [
    "The zebra astronaut",
    "The quick brown fox jumps over",
    "Cats",
    "She opened the door and walked into the",
    "Numbers like one, two",
]
VIEWS = ("base", "ft", "scaled", "null")


def _open(backend: HFDifferentialBackend, which: str) -> Any:
    if which == "base":
        return backend.as_base()
    if which == "ft":
        return backend.as_finetuned()
    if which == "scaled":
        return backend.as_scaled_adapter(0.5)
    return backend.as_null_adapter(3, construction="norm_matched")


@pytest.fixture
def pair(tiny_assets: TinyAssets) -> Iterator[tuple[HFDifferentialBackend, HFDifferentialBackend]]:
    """Two backends on the trained adapter, each with its own empty cache."""
    a = HFDifferentialBackend(str(tiny_assets.base), tiny_assets.adapter, batch_size=2)
    b = HFDifferentialBackend(str(tiny_assets.base), tiny_assets.adapter, batch_size=2)
    yield a, b
    a.close()
    b.close()


def _batched_and_single(
    pair: tuple[HFDifferentialBackend, HFDifferentialBackend],
    which: str,
    settings: GenerationSettings,
) -> tuple[list[Any], list[Any]]:
    first, second = pair
    with _open(first, which) as view:
        assert isinstance(view, Generating)
        batched = view.generate_batch(PROMPTS, settings)
    with _open(second, which) as view:
        single = [view.generate_batch([p], settings)[0] for p in reversed(PROMPTS)][::-1]
    return batched, single


@pytest.mark.parametrize("which", VIEWS)
def test_greedy_batched_equals_one_prompt_on_every_view(
    pair: tuple[HFDifferentialBackend, HFDifferentialBackend], which: str
) -> None:
    batched, single = _batched_and_single(pair, which, GenerationSettings(max_new_tokens=12))
    assert batched == single
    assert all(g.new_tokens >= 1 and g.text for g in batched)
    assert all(g.finish != "length" or g.new_tokens == 12 for g in batched)


def test_rows_that_stop_early_leave_the_batch_without_changing_the_others(
    pair: tuple[HFDifferentialBackend, HFDifferentialBackend],
) -> None:
    settings = GenerationSettings(max_new_tokens=12, stop=("e", "o"))
    batched, single = _batched_and_single(pair, "ft", settings)
    assert batched == single
    assert any(g.finish == "stop" for g in batched)
    assert len({g.new_tokens for g in batched}) > 1  # rows finished at different steps


def test_seeded_sampling_is_per_prompt_and_batch_independent(
    pair: tuple[HFDifferentialBackend, HFDifferentialBackend],
) -> None:
    settings = GenerationSettings(max_new_tokens=12, temperature=1.3, top_p=0.9, seed=7)
    batched, single = _batched_and_single(pair, "ft", settings)
    assert batched == single
    with pair[0].as_finetuned() as view:
        other_seed = view.generate_batch(PROMPTS, GenerationSettings(12, temperature=1.3, seed=8))
        greedy = view.generate_batch(PROMPTS, GenerationSettings(12))
    assert [g.text for g in other_seed] != [g.text for g in batched]
    assert [g.text for g in greedy] != [g.text for g in batched]


def test_near_ties_are_redecided_on_the_canonical_forward(
    tiny_assets: TinyAssets, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With every decision treated as a near-tie, the canonical path picks the same tokens."""
    settings = GenerationSettings(max_new_tokens=8)
    normal = HFDifferentialBackend(str(tiny_assets.base), tiny_assets.adapter, batch_size=4)
    with normal.as_finetuned() as view:
        expected = view.generate_batch(PROMPTS, settings)
    normal.close()
    calls: list[int] = []
    real_choose = hf_generate.choose

    def always_tied(logits: torch.Tensor, s: Any, u: float | None, margin: float) -> Any:
        token, _ = real_choose(logits, s, u, margin)
        calls.append(int(margin > 0))
        return token, margin == 0.0  # robust only on the canonical re-decision

    monkeypatch.setattr(hf_generate, "choose", always_tied)
    tied = HFDifferentialBackend(str(tiny_assets.base), tiny_assets.adapter, batch_size=4)
    with tied.as_finetuned() as view:
        assert view.generate_batch(PROMPTS, settings) == expected
    tied.close()
    assert calls.count(0) == calls.count(1) > 0  # every step re-decided once


def test_choose_flags_near_ties() -> None:
    logits = torch.tensor([1.0, 3.0, 2.999, -1.0])
    greedy = GenerationSettings(4)
    assert hf_generate.choose(logits, greedy, None, 1e-2) == (1, False)
    assert hf_generate.choose(logits, greedy, None, 1e-4) == (1, True)
    # Sampling is Gumbel-max: the noise decides, and its near-ties are flagged the same way.
    sampled = GenerationSettings(4, temperature=1.0)
    noise = torch.tensor([0.0, 0.0, 0.5, 0.0], dtype=torch.float64)
    assert hf_generate.choose(logits, sampled, noise, 1e-2) == (2, True)
    tied = torch.tensor([0.0, 0.0, 0.001, 0.0], dtype=torch.float64)  # 3.0 vs 3.0
    assert hf_generate.choose(logits, sampled, tied, 1e-2)[1] is False
    # top_p keeps only the smallest set reaching it: token 0 (p ≈ 0.06) is cut off.
    nucleus = GenerationSettings(4, temperature=1.0, top_p=0.8)
    far = torch.tensor([9.0, 0.0, 0.0, 0.0], dtype=torch.float64)
    assert hf_generate.choose(logits, nucleus, far, 1e-2)[0] in (1, 2)
    # Draws follow the row's stream: the same seed and prompt give the same noise.
    a = hf_generate.gumbel_noise(8, hf_generate.row_generator(3, "The"))
    b = hf_generate.gumbel_noise(8, hf_generate.row_generator(3, "The"))
    c = hf_generate.gumbel_noise(8, hf_generate.row_generator(3, "Cats"))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_stop_strings_cut_before_the_stop(hf_backend: HFDifferentialBackend) -> None:
    with hf_backend.as_finetuned() as view:
        full = view.generate_batch(PROMPTS[:2], GenerationSettings(max_new_tokens=16))
        stop = full[0].text[4:7]
        cut = view.generate_batch(PROMPTS[:2], GenerationSettings(16, stop=(stop, "\x00")))
    first = full[0].text
    assert cut[0].finish == "stop" and cut[0].text == first[: first.index(stop)]
    assert cut[0].new_tokens <= full[0].new_tokens
    if stop not in full[1].text:
        assert cut[1] == full[1]


def test_plain_text_fallback_and_chat_required(hf_backend: HFDifferentialBackend) -> None:
    convo = (ChatTurn("system", "Be brief."), ChatTurn("user", "Name a fox."))
    with hf_backend.as_base() as view:
        out = view.generate_batch([convo], GenerationSettings(6))
        with pytest.raises(GenerationError, match="chat template"):
            view.generate_batch([convo], GenerationSettings(6, chat=True))
    assert out[0].templated is False


TEMPLATE = (
    "{% for m in messages %}<s>{{ m['role'] }}: {{ m['content'] }}</s>{% endfor %}"
    "{% if add_generation_prompt %}<s>assistant:{% endif %}"
)


def test_chat_template_is_used_when_present(tiny_assets: TinyAssets, tmp_path: Path) -> None:
    base = Path(shutil.copytree(tiny_assets.base, tmp_path / "base"))
    config_path = base / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config["chat_template"] = TEMPLATE
    config_path.write_text(json.dumps(config))
    backend = HFDifferentialBackend(str(base), tiny_assets.adapter, batch_size=2)
    try:
        tok = backend.tokenizer
        ids, templated = hf_generate.encode_prompt(tok, "Name a fox.", None)
        rendered = "<s>user: Name a fox.</s><s>assistant:"
        assert templated and ids == tok(rendered, add_special_tokens=False)["input_ids"]
        assert hf_generate.encode_prompt(tok, "Name a fox.", False) == (
            tok("Name a fox.")["input_ids"],
            False,
        )
        with backend.as_finetuned() as view:
            chat = view.generate_batch(["Name a fox."], GenerationSettings(6))[0]
            plain = view.generate_batch(["Name a fox."], GenerationSettings(6, chat=False))[0]
    finally:
        backend.close()
    assert chat.templated and not plain.templated


def test_generations_are_cached_per_view_prompt_and_settings(
    fresh_backend: HFDifferentialBackend,
) -> None:
    stats = fresh_backend.stats
    settings = GenerationSettings(max_new_tokens=6)
    with fresh_backend.as_finetuned() as view:
        first = view.generate_batch(PROMPTS[:2], settings)
        misses, hits = stats.cache_misses, stats.cache_hits
        again = view.generate_batch(PROMPTS[:2], settings)
        assert again == first and stats.cache_hits == hits + 2 and stats.cache_misses == misses
        view.generate_batch(PROMPTS[:1], GenerationSettings(max_new_tokens=7))
        assert stats.cache_misses == misses + 1  # other settings: not the cached answer
    with fresh_backend.as_base() as view:
        view.generate_batch(PROMPTS[:1], settings)
        assert stats.cache_misses == misses + 2  # other view: not the cached answer


def test_a_closed_view_refuses_to_generate(hf_backend: HFDifferentialBackend) -> None:
    with hf_backend.as_base() as view:
        pass
    with pytest.raises(ViewError):
        view.generate_batch(["The"], GenerationSettings(2))


def test_a_prompt_past_the_context_is_a_clear_error(hf_backend: HFDifferentialBackend) -> None:
    with hf_backend.as_base() as view, pytest.raises(GenerationError, match="positions"):
        view.generate_batch(["The fox " * 100], GenerationSettings(max_new_tokens=100))


#: Greedy, sampled with a nucleus, and sampled with a stop: rows of each in one batch.
SEVERAL = (
    GenerationSettings(max_new_tokens=10),
    GenerationSettings(max_new_tokens=12, temperature=1.3, top_p=0.9, seed=7),
    GenerationSettings(max_new_tokens=6, temperature=0.8, seed=3, stop=("e",)),
)


def _count_decodes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Rows of every ``generate_each`` call (each is one set of shared decode batches)."""
    calls: list[int] = []
    real = hf_generate.HFGenerator.generate_each

    def spy(self: Any, prompts: Any, settings: Any, groups: Any = None) -> Any:
        calls.append(len(prompts))
        return real(self, prompts, settings, groups)

    monkeypatch.setattr(hf_generate.HFGenerator, "generate_each", spy)
    return calls


@pytest.mark.parametrize("which", VIEWS)
def test_several_settings_decoded_together_equal_each_written_alone(
    pair: tuple[HFDifferentialBackend, HFDifferentialBackend],
    which: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    first, second = pair
    with _open(second, which) as view:
        alone = [view.generate_batch(PROMPTS, s) for s in SEVERAL]
    decodes = _count_decodes(monkeypatch)
    with _open(first, which) as view:
        assert isinstance(view, GeneratingBatches)
        together = view.generate_batches([GenerationBatch(tuple(PROMPTS), s) for s in SEVERAL])
    assert together == alone
    assert decodes == [len(PROMPTS) * len(SEVERAL)]  # one shared decode, not one per settings
    assert len({tuple(g.text for g in out) for out in alone}) == len(SEVERAL)  # not vacuous


def test_batches_decoded_together_are_cached_like_generate_batch(
    fresh_backend: HFDifferentialBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    decodes = _count_decodes(monkeypatch)
    stats = fresh_backend.stats
    with fresh_backend.as_finetuned() as view:
        view.generate_batch(PROMPTS[:2], SEVERAL[0])
        decodes.clear()
        got = view.generate_batches(
            [GenerationBatch(tuple(PROMPTS[:3]), SEVERAL[0]), GenerationBatch((), SEVERAL[1])]
            + [GenerationBatch(tuple(PROMPTS[:3]), SEVERAL[1])]
        )
        assert [len(g) for g in got] == [3, 0, 3]
        assert decodes == [1 + 3]  # the two cached rows are not written again
        hits = stats.cache_hits
        assert view.generate_batch(PROMPTS[:3], SEVERAL[1]) == got[2]
        assert stats.cache_hits == hits + 3
    assert decodes == [4]


def test_an_open_sweep_shares_the_first_batch_and_decodes_the_rest_together(
    pair: tuple[HFDifferentialBackend, HFDifferentialBackend], monkeypatch: pytest.MonkeyPatch
) -> None:
    first, second = pair
    with second.as_base() as view:
        base_alone = [view.generate_batch(PROMPTS, s) for s in SEVERAL]
    with second.as_finetuned() as view:
        ft_alone = [view.generate_batch(PROMPTS, s) for s in SEVERAL]
    batches = [GenerationBatch(tuple(PROMPTS), s) for s in SEVERAL]
    with shared_forwards(first, BASE_AND_FT):
        with first.as_base() as view:
            decodes = _count_decodes(monkeypatch)
            assert view.generate_batches(batches) == base_alone
            # The sweep's batch under both members, then the other two settings together.
            assert decodes == [len(BASE_AND_FT) * len(PROMPTS), (len(SEVERAL) - 1) * len(PROMPTS)]
        with first.as_finetuned() as view:
            misses = first.stats.cache_misses
            assert view.generate_batch(PROMPTS, SEVERAL[0]) == ft_alone[0]
            assert first.stats.cache_misses == misses  # written with the base's rows
            assert view.generate_batches(batches) == ft_alone


def test_rows_that_start_alike_share_one_prefill_row(
    tiny_assets: TinyAssets, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A prompt asked under three settings is prefilled once; each row then decodes on
    its own copy of that row's cache, to the text it gets alone."""
    alone = HFDifferentialBackend(str(tiny_assets.base), tiny_assets.adapter, batch_size=16)
    with alone.as_finetuned() as view:
        expected = [view.generate_batch(PROMPTS, s) for s in SEVERAL]
    alone.close()
    widths: list[tuple[int, int]] = []
    real = hf_generate.HFGenerator._forward

    def spy(self: Any, rows: Any, **inputs: Any) -> Any:
        widths.append(tuple(inputs["input_ids"].shape))
        return real(self, rows, **inputs)

    monkeypatch.setattr(hf_generate.HFGenerator, "_forward", spy)
    together = HFDifferentialBackend(str(tiny_assets.base), tiny_assets.adapter, batch_size=16)
    with together.as_finetuned() as view:
        got = view.generate_batches([GenerationBatch(tuple(PROMPTS), s) for s in SEVERAL])
    together.close()
    assert got == expected
    prefills = [w for w in widths if w[1] > 1]
    assert [rows for rows, _ in prefills] == [len(PROMPTS)]  # 15 rows, 5 distinct starts
    # Then every row decodes (less any that finished on the prefill's token).
    assert len(PROMPTS) < widths[1][0] <= len(PROMPTS) * len(SEVERAL)


def test_a_bad_prompt_among_batches_is_named_as_its_own_batch_names_it(
    hf_backend: HFDifferentialBackend,
) -> None:
    long = GenerationSettings(max_new_tokens=100)
    with hf_backend.as_base() as view:
        with pytest.raises(GenerationError) as alone:
            view.generate_batch(["The fox " * 100], long)
        with pytest.raises(GenerationError) as together:
            view.generate_batches(
                [GenerationBatch(("Cats",), SEVERAL[0]), GenerationBatch(("The fox " * 100,), long)]
            )
    assert str(together.value) == str(alone.value)
    assert "prompt 0 has" in str(alone.value)
