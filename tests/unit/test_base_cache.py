"""The on-disk base cache returns exactly what was stored, or nothing — never a wrong number."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from dlm_sway.backends.base_cache import BaseCache, enabled, model_dir_hash
from dlm_sway.core.scoring import RollingLogprob, TokenDist

ID = '{"weights": "abc", "dtype": "torch.float32"}'


def _topk() -> TokenDist:
    return TokenDist(
        np.array([5, 2, 9], dtype=np.int64),
        np.array([-0.1, -2.5, -3.0], dtype=np.float32),
        vocab_size=16,
        tail_logprob=-4.25,
    )


def _full() -> TokenDist:
    lp = np.log(np.full(16, 1 / 16, dtype=np.float64)).astype(np.float32)
    return TokenDist(np.arange(16, dtype=np.int64), lp, 16, None)


def _rolling() -> RollingLogprob:
    lp = np.array([-1.5, -0.25, -3.0], dtype=np.float32)
    return RollingLogprob(np.array([1, 7, 3, 4], dtype=np.int64), lp, 4, float(lp.sum()))


@pytest.fixture
def cache(tmp_path: Path) -> BaseCache:
    return BaseCache(tmp_path, ID)


def test_every_kind_round_trips_bit_exactly(cache: BaseCache) -> None:
    cache.put("next_token", "The quick", 3, _topk())
    cache.put("next_token_full", "The quick", 0, _full())
    cache.put("logprob_of", "3:Thequick", 0, -7.125)
    cache.put("rolling", "The quick brown", 0, _rolling())
    topk = cache.get("next_token", "The quick", 3)
    full = cache.get("next_token_full", "The quick", 0)
    roll = cache.get("rolling", "The quick brown", 0)
    assert isinstance(topk, TokenDist) and isinstance(full, TokenDist)
    np.testing.assert_array_equal(topk.token_ids, _topk().token_ids)
    np.testing.assert_array_equal(topk.logprobs, _topk().logprobs)
    assert topk.tail_logprob == -4.25 and topk.vocab_size == 16
    np.testing.assert_array_equal(full.logprobs, _full().logprobs)
    np.testing.assert_array_equal(full.token_ids, np.arange(16))
    assert full.tail_logprob is None
    assert cache.get("logprob_of", "3:Thequick", 0) == -7.125
    assert isinstance(roll, RollingLogprob)
    np.testing.assert_array_equal(roll.logprobs, _rolling().logprobs)
    assert roll.total_logprob == _rolling().total_logprob and roll.num_tokens == 4
    assert not topk.logprobs.flags.writeable  # shared results stay read-only
    assert cache.stats.hits == 4 and cache.stats.rejected == 0


def test_key_covers_identity_request_and_top_k(cache: BaseCache, tmp_path: Path) -> None:
    cache.put("next_token", "The quick", 3, _topk())
    assert cache.get("next_token", "The quick", 4) is None
    assert cache.get("next_token", "The quick ", 3) is None
    assert cache.get("next_token_full", "The quick", 3) is None
    other = BaseCache(tmp_path, ID.replace("float32", "bfloat16"))
    assert other.get("next_token", "The quick", 3) is None


def test_an_entry_moved_under_another_key_is_refused(cache: BaseCache) -> None:
    cache.put("logprob_of", "a", 0, -1.0)
    target = cache.path("logprob_of", "b", 0)
    target.parent.mkdir(parents=True, exist_ok=True)
    cache.path("logprob_of", "a", 0).replace(target)
    assert cache.get("logprob_of", "b", 0) is None
    assert cache.stats.rejected == 1


@pytest.mark.parametrize("damage", ["truncate", "flip", "garbage", "empty"])
def test_corrupt_entry_is_a_warned_miss_then_rewritten(
    cache: BaseCache, damage: str, caplog: pytest.LogCaptureFixture
) -> None:
    cache.put("rolling", "text", 0, _rolling())
    path = cache.path("rolling", "text", 0)
    data = bytearray(path.read_bytes())
    if damage == "truncate":
        data = data[: len(data) // 2]
    elif damage == "flip":
        # Inside the stored float32 log-probs: the zip CRC or our checksum must notice.
        needle = _rolling().logprobs.tobytes()
        at = bytes(data).index(needle)
        data[at + 2] ^= 0x40
    elif damage == "garbage":
        data = bytearray(b"not a cache entry at all")
    else:
        data = bytearray()
    path.write_bytes(bytes(data))
    calls: list[list[int]] = []

    def compute(idx: list[int]) -> list[RollingLogprob]:
        calls.append(idx)
        return [_rolling() for _ in idx]

    with caplog.at_level(logging.WARNING, logger="dlm_sway.backends.base_cache"):
        (value,) = cache.fetch("rolling", ["text"], 0, compute)
    assert calls == [[0]]
    assert "corrupt base-cache entry" in caplog.text
    np.testing.assert_array_equal(value.logprobs, _rolling().logprobs)
    fixed = cache.get("rolling", "text", 0)  # rewritten: a hit again
    assert isinstance(fixed, RollingLogprob)
    np.testing.assert_array_equal(fixed.logprobs, _rolling().logprobs)


def test_tampered_scalar_in_the_header_fails_the_checksum(cache: BaseCache) -> None:
    cache.put("logprob_of", "pair", 0, -2.5)
    path = cache.path("logprob_of", "pair", 0)
    with np.load(path) as npz:
        arrays = {k: npz[k] for k in npz.files}
    header = bytes(arrays["header"]).replace(b"-2.5", b"-1.5")
    arrays["header"] = np.frombuffer(header, dtype=np.uint8)
    with path.open("wb") as fh:
        np.savez(fh, **arrays)
    assert cache.get("logprob_of", "pair", 0) is None
    assert cache.stats.rejected == 1


def test_non_finite_values_are_never_stored(cache: BaseCache) -> None:
    bad = TokenDist(
        np.array([0, 1], dtype=np.int64), np.array([np.nan, -1.0], dtype=np.float32), 4, None
    )
    cache.put("next_token", "p", 2, bad)
    cache.put("logprob_of", "q", 0, float("nan"))
    assert not cache.path("next_token", "p", 2).exists()
    assert not cache.path("logprob_of", "q", 0).exists()


def test_fetch_computes_only_misses_in_order(cache: BaseCache) -> None:
    cache.put("logprob_of", "b", 0, -2.0)
    seen: list[list[int]] = []

    def compute(idx: list[int]) -> list[float]:
        seen.append(idx)
        return [-float(10 + i) for i in idx]

    assert cache.fetch("logprob_of", ["a", "b", "c"], 0, compute) == [-10.0, -2.0, -12.0]
    assert seen == [[0, 2]]
    assert cache.fetch("logprob_of", ["a", "b", "c"], 0, compute) == [-10.0, -2.0, -12.0]
    assert seen == [[0, 2]]  # all three on disk now


def test_size_bound_evicts_the_oldest(tmp_path: Path) -> None:
    probe = BaseCache(tmp_path, ID)
    probe.put("next_token_full", "x", 0, _full())
    one = probe.path("next_token_full", "x", 0).stat().st_size
    cache = BaseCache(tmp_path, ID, limit_bytes=4 * one)
    for i in range(10):
        cache.fetch("next_token_full", [f"p{i}"], 0, lambda idx: [_full() for _ in idx])
    total = sum(p.stat().st_size for p in tmp_path.glob("*/*/*.npz"))
    assert total <= 4 * one
    assert cache.get("next_token_full", "p9", 0) is not None  # the newest survives
    assert cache.get("next_token_full", "p0", 0) is None


def test_env_switch_and_model_hash(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SWAY_DISABLE_BASE_CACHE", "1")
    assert not enabled()
    monkeypatch.setenv("SWAY_DISABLE_BASE_CACHE", "0")
    assert enabled()
    model = tmp_path / "model"
    model.mkdir()
    (model / "w.safetensors").write_bytes(b"\x00" * 64)
    memo = tmp_path / "memo"
    first = model_dir_hash(model, memo)
    assert model_dir_hash(model, memo) == first
    (model / "w.safetensors").write_bytes(b"\x01" * 64)  # same size, new content
    assert model_dir_hash(model, memo) != first
