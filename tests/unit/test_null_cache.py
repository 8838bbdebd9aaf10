"""On-disk null-stats cache: location, round trip, misses, opt-out, and use by null_adapter."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from dlm_sway.backends.dummy import DummyDifferentialBackend
from dlm_sway.core.result import SuiteResult, Verdict
from dlm_sway.probes import _null_cache


class CachedDummy(DummyDifferentialBackend):
    """A dummy that, like the HF backend, can name itself for the cache."""

    def __init__(self, identity: str = "dummy:v1", **kw: Any) -> None:
        super().__init__(**kw)
        self.identity = identity

    def cache_identity(self) -> str:
        return self.identity


PAYLOAD = {"by_rank": {"rank_1.00": {"dkl": {"mean": 0.1, "std": 0.01, "n": 3}}}}


class TestCacheRoot:
    def test_env_override(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("SWAY_NULL_CACHE_DIR", str(tmp_path / "here"))
        assert _null_cache.cache_root() == tmp_path / "here"

    def test_xdg_fallback(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.delenv("SWAY_NULL_CACHE_DIR")
        monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
        assert _null_cache.cache_root() == tmp_path / "dlm-sway" / "null-stats"


class TestLoadSave:
    def test_round_trip_into_the_override_dir(self, null_cache_dir: Path) -> None:
        assert _null_cache.save("k1", PAYLOAD)
        assert (null_cache_dir / "k1.json").is_file()
        assert _null_cache.load("k1") == PAYLOAD

    def test_missing_is_a_miss(self) -> None:
        assert _null_cache.load("never-saved") is None

    @pytest.mark.parametrize("content", ["{not json", "", "[1, 2, 3]", "\x00\xff"])
    def test_corrupt_file_is_a_miss(self, null_cache_dir: Path, content: str) -> None:
        (null_cache_dir / "bad.json").write_text(content, encoding="utf-8", errors="replace")
        assert _null_cache.load("bad") is None

    def test_disable_env_blocks_load_and_save(
        self, null_cache_dir: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        assert _null_cache.save("k2", PAYLOAD)
        monkeypatch.setenv("SWAY_DISABLE_NULL_CACHE", "1")
        assert _null_cache.load("k2") is None
        assert _null_cache.save("k3", PAYLOAD) is False
        assert not (null_cache_dir / "k3.json").exists()

    def test_no_leftover_temp_files(self, null_cache_dir: Path) -> None:
        for i in range(3):
            assert _null_cache.save("same", {**PAYLOAD, "i": i})
        assert sorted(p.name for p in null_cache_dir.iterdir()) == ["same.json"]
        assert _null_cache.load("same") == {**PAYLOAD, "i": 2}

    def test_unwritable_root_returns_false(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        blocker = tmp_path / "a-file"
        blocker.write_text("x")
        monkeypatch.setenv("SWAY_NULL_CACHE_DIR", str(blocker / "sub"))
        assert _null_cache.save("k", PAYLOAD) is False


class TestKey:
    PARAMS = {"runs": 3, "init_scale": 0.02, "rank_multipliers": [1.0]}

    def test_stable_and_order_independent(self) -> None:
        reordered = dict(reversed(list(self.PARAMS.items())))
        assert _null_cache.cache_key("id", self.PARAMS) == _null_cache.cache_key("id", reordered)

    def test_changes_with_identity(self) -> None:
        assert _null_cache.cache_key("a", self.PARAMS) != _null_cache.cache_key("b", self.PARAMS)

    @pytest.mark.parametrize(
        "change", [{"runs": 4}, {"init_scale": 0.03}, {"rank_multipliers": [1.0, 2.0]}]
    )
    def test_changes_with_params(self, change: dict[str, Any]) -> None:
        assert _null_cache.cache_key("id", self.PARAMS) != _null_cache.cache_key(
            "id", {**self.PARAMS, **change}
        )


# --- null_adapter uses the cache -----------------------------------------------------------


def _suite(prompts: list[str], **null_kw: Any) -> tuple[dict[str, Any], ...]:
    return (
        {"name": "null", "kind": "null_adapter", "runs": 3, **null_kw},
        {"name": "dkl", "kind": "delta_kl", "prompts": prompts},
    )


def _json_files(root: Path) -> list[Path]:
    return sorted(root.glob("*.json"))


def test_null_adapter_hits_the_cache_on_the_second_run(
    run_suite: Callable[..., SuiteResult], prompts: list[str], null_cache_dir: Path
) -> None:
    first = run_suite(*_suite(prompts), backend=CachedDummy())
    null1 = first.by_name("null")
    assert null1.verdict is Verdict.PASS
    assert null1.evidence["from_cache"] is False
    assert "cache" not in null1.message
    assert len(_json_files(null_cache_dir)) == 1

    be = CachedDummy()
    second = run_suite(*_suite(prompts), backend=be)
    null2 = second.by_name("null")
    assert null2.evidence["from_cache"] is True
    assert "loaded from cache" in null2.message
    assert null2.calibration is not None and null1.calibration is not None
    assert null2.calibration.by_rank == null1.calibration.by_rank
    # the fine-tune is judged exactly as when the nulls were computed
    assert second.by_name("dkl").z_score == first.by_name("dkl").z_score
    assert second.null_stats == first.null_stats
    # only the real views ran: preflight (2 forwards) + noise floor (2 layouts x 4
    # prompts) + delta_kl (2 views x 4 prompts); no null view was opened
    assert be.stats.forward_passes == 2 + 2 * len(prompts) + 2 * len(prompts)


def test_corrupt_cache_file_is_recomputed_and_rewritten(
    run_suite: Callable[..., SuiteResult], prompts: list[str], null_cache_dir: Path
) -> None:
    first = run_suite(*_suite(prompts), backend=CachedDummy())
    (path,) = _json_files(null_cache_dir)
    path.write_text('{"by_rank": {"rank_1.00": {"dkl": {"mean": "oops"}}}}')
    again = run_suite(*_suite(prompts), backend=CachedDummy())
    null = again.by_name("null")
    assert null.verdict is Verdict.PASS
    assert null.evidence["from_cache"] is False
    before = first.by_name("null").calibration
    assert null.calibration is not None and before is not None
    assert null.calibration.by_rank == before.by_rank
    # the recomputed stats replaced the broken file
    third = run_suite(*_suite(prompts), backend=CachedDummy())
    assert third.by_name("null").evidence["from_cache"] is True


def test_new_identity_or_params_miss_the_cache(
    run_suite: Callable[..., SuiteResult], prompts: list[str], null_cache_dir: Path
) -> None:
    run_suite(*_suite(prompts), backend=CachedDummy("adapter-hash-1"))
    retrained = run_suite(*_suite(prompts), backend=CachedDummy("adapter-hash-2"))
    assert retrained.by_name("null").evidence["from_cache"] is False
    more_runs = run_suite(*_suite(prompts, runs=4), backend=CachedDummy("adapter-hash-1"))
    assert more_runs.by_name("null").evidence["from_cache"] is False
    other_prompts = run_suite(*_suite(prompts[:2]), backend=CachedDummy("adapter-hash-1"))
    assert other_prompts.by_name("null").evidence["from_cache"] is False
    assert len(_json_files(null_cache_dir)) == 4


def test_spec_cache_false_and_disable_env_skip_the_cache(
    run_suite: Callable[..., SuiteResult],
    prompts: list[str],
    null_cache_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    run_suite(*_suite(prompts, cache=False), backend=CachedDummy())
    assert _json_files(null_cache_dir) == []
    monkeypatch.setenv("SWAY_DISABLE_NULL_CACHE", "1")
    run_suite(*_suite(prompts), backend=CachedDummy())
    assert _json_files(null_cache_dir) == []


def test_backend_without_identity_never_caches(
    run_suite: Callable[..., SuiteResult], prompts: list[str], null_cache_dir: Path
) -> None:
    run_suite(*_suite(prompts))  # plain dummy: no cache_identity()
    assert list(null_cache_dir.iterdir()) == []
