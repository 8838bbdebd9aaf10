"""The null calibration path never yields a verdict it cannot back (issue 7, item 2).

* A cached null is used only when it passes the schema; every other cache file —
  empty rank group, stats under another name, ``n: -5, samples: []``, NaN, wrong
  types, junk — is a miss: recomputed, overwritten, and the verdicts are those of
  an uncached run.
* An entry the null_adapter tried and failed to calibrate never PASSes on fixed
  thresholds; a null_adapter that calibrated nothing is not a PASS.
* Null seeds derive from ``defaults.seed`` (and ``seed_base`` when given).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from dlm_sway.backends.dummy import DummyDifferentialBackend
from dlm_sway.core.errors import SwayError
from dlm_sway.core.result import NullCalibration, ProbeResult, SuiteResult, Verdict
from dlm_sway.probes import base
from dlm_sway.probes._null_proxy import NullCalibrationBackendProxy
from dlm_sway.probes._verdict import calibrate, judge, judged_result
from dlm_sway.probes.base import Probe, ProbeSpec, RunContext

RunSuite = Callable[..., SuiteResult]
Payload = dict[str, Any]

NULL = {"name": "null", "kind": "null_adapter", "runs": 3}


class CachedDummy(DummyDifferentialBackend):
    """A dummy that, like the HF backend, names itself for the cache."""

    def __init__(self, identity: str = "dummy:v1", **kw: Any) -> None:
        super().__init__(**kw)
        self.identity = identity

    def cache_identity(self) -> str:
        return self.identity


def dkl(name: str = "dkl", **kw: Any) -> dict[str, Any]:
    prompts = ["The quick brown fox", "Alpha beta gamma delta", "Hello world", "Once upon a"]
    return {"name": name, "kind": "delta_kl", "prompts": prompts, **kw}


def the_file(root: Path) -> Path:
    (path,) = sorted(root.glob("*.json"))
    return path


def numbers(res: SuiteResult) -> list[tuple[str, str, Any, Any]]:
    return [(p.name, p.verdict.value, p.raw, p.z_score) for p in res.probes]


# --- each kind of bad entry --------------------------------------------------------------------


def _groups(p: Payload) -> dict[str, Any]:
    by_rank: dict[str, Any] = p["by_rank"]
    return by_rank


def _entry(p: Payload, name: str = "dkl") -> dict[str, Any]:
    group: dict[str, Any] = next(iter(_groups(p).values()))
    entry: dict[str, Any] = group[name]
    return entry


def _empty_group(p: Payload) -> None:
    for key in _groups(p):
        _groups(p)[key] = {}


def _other_name(p: Payload) -> None:
    for key, group in _groups(p).items():
        _groups(p)[key] = {"not-dkl": group["dkl"]}


def _negative_n(p: Payload) -> None:
    _entry(p).update(n=-5, samples=[])


def _nan_sample(p: Payload) -> None:
    _entry(p)["samples"][0] = math.nan


def _nan_mean(p: Payload) -> None:
    _entry(p)["mean"] = math.inf


def _string_n(p: Payload) -> None:
    _entry(p)["n"] = "3"


def _bool_samples(p: Payload) -> None:
    _entry(p)["samples"] = [True, False, True]


def _too_few_samples(p: Payload) -> None:
    e = _entry(p)
    xs = e["samples"][:2]
    e.update(samples=xs, n=2, mean=sum(xs) / 2)


def _too_many_samples(p: Payload) -> None:
    e = _entry(p)
    e["samples"] = [*e["samples"], e["samples"][0]]
    e["n"] = len(e["samples"])


def _mean_disagrees(p: Payload) -> None:
    _entry(p)["mean"] += 1.0


def _extra_entry(p: Payload) -> None:
    for group in _groups(p).values():
        group["junk"] = dict(group["dkl"])


def _extra_rank(p: Payload) -> None:
    _groups(p)["rank_9.00"] = dict(next(iter(_groups(p).values())))


def _renamed_rank(p: Payload) -> None:
    p["by_rank"] = {"rank_2.00": next(iter(_groups(p).values()))}


def _extra_field(p: Payload) -> None:
    _entry(p)["note"] = "hand-edited"


def _top_level_junk(p: Payload) -> None:
    p["junk"] = [1, 2, 3]


def _other_construction(p: Payload) -> None:
    _entry(p)["construction"] = "init_scale"


def _other_identity(p: Payload) -> None:
    p["identity"] = "some-other-adapter"


def _other_params(p: Payload) -> None:
    p["params"] = {"runs": 3}


def _by_rank_list(p: Payload) -> None:
    p["by_rank"] = []


def _entry_is_null(p: Payload) -> None:
    for group in _groups(p).values():
        group["dkl"] = None


CORRUPTIONS: dict[str, Callable[[Payload], None]] = {
    f.__name__.lstrip("_"): f
    for f in (
        _empty_group,
        _other_name,
        _negative_n,
        _nan_sample,
        _nan_mean,
        _string_n,
        _bool_samples,
        _too_few_samples,
        _too_many_samples,
        _mean_disagrees,
        _extra_entry,
        _extra_rank,
        _renamed_rank,
        _extra_field,
        _top_level_junk,
        _other_construction,
        _other_identity,
        _other_params,
        _by_rank_list,
        _entry_is_null,
    )
}


@pytest.mark.parametrize("kind", sorted(CORRUPTIONS))
def test_bad_cache_entry_is_a_miss_recomputed_and_overwritten(
    kind: str, run_suite: RunSuite, null_cache_dir: Path
) -> None:
    fresh = run_suite(NULL, dkl(), backend=CachedDummy())
    path = the_file(null_cache_dir)
    payload = json.loads(path.read_text(encoding="utf-8"))
    CORRUPTIONS[kind](payload)
    path.write_text(json.dumps(payload), encoding="utf-8")

    again = run_suite(NULL, dkl(), backend=CachedDummy())
    null = again.by_name("null")
    assert null.calibration is not None and null.calibration.from_cache is False, null.message
    assert numbers(again) == numbers(fresh)
    assert null.calibration.by_rank == _calibration(fresh).by_rank
    assert str(path) in null.message and "rejected" in null.message
    assert null.evidence["cache_rejected"]
    # the miss rewrote the file with the recomputed stats: the next run trusts it
    third = run_suite(NULL, dkl(), backend=CachedDummy())
    assert _calibration(third).from_cache is True
    assert numbers(third) == numbers(fresh)


def test_a_hit_records_the_file_it_came_from(run_suite: RunSuite, null_cache_dir: Path) -> None:
    first = run_suite(NULL, dkl(), backend=CachedDummy()).by_name("null")
    assert first.calibration is not None and first.calibration.from_cache is False
    second = run_suite(NULL, dkl(), backend=CachedDummy()).by_name("null")
    path = str(the_file(null_cache_dir))
    assert f"(loaded from cache {path})" in second.message
    assert second.calibration is not None
    assert second.calibration.from_cache is True and second.calibration.cache_file == path


def test_stats_are_recomputed_from_samples(run_suite: RunSuite, null_cache_dir: Path) -> None:
    """A cached entry is only its samples: the stats used are recomputed from them."""
    fresh = run_suite(NULL, dkl(), backend=CachedDummy())
    hit = run_suite(NULL, dkl(), backend=CachedDummy())
    assert _calibration(hit).from_cache is True
    assert hit.null_stats == fresh.null_stats
    assert hit.by_name("dkl").z_score == fresh.by_name("dkl").z_score


def test_incomplete_calibration_is_never_cached(run_suite: RunSuite, null_cache_dir: Path) -> None:
    """An entry with no null would make every later run's cache incomplete: store nothing."""
    run_suite(NULL, dkl(), {"name": "tok", "kind": NULL_RUN_FAILS}, backend=CachedDummy())
    assert list(null_cache_dir.glob("*.json")) == []


# --- a failed calibration is never a PASS -------------------------------------------------------

CALIB_RAISES = "_test_schema_calib_raises"
NULL_RUN_FAILS = "_test_schema_null_run_fails"
OPTS_OUT = "_test_schema_opts_out"


def _fixed_pass(spec: ProbeSpec, ctx: RunContext) -> ProbeResult:
    """A raw of 0.5 that fixed thresholds pass, judged the one way every probe is."""
    cal = calibrate(0.5, ctx, spec)
    j = judge(0.5, cal, spec, ctx, what="raw 0.5", fixed_score=0.9)
    return judged_result(spec, cal, j, raw=0.5, measured="raw 0.5", evidence={})


@pytest.fixture(scope="module", autouse=True)
def _test_kinds() -> Iterator[None]:
    class _OptsOut(Probe):
        """PASSes on fixed thresholds and never asks for a null."""

        kind = OPTS_OUT
        spec_cls = ProbeSpec

        def run(self, spec: ProbeSpec, ctx: RunContext) -> ProbeResult:
            return _fixed_pass(spec, ctx)

    class _CalibRaises(_OptsOut):
        kind = CALIB_RAISES

        @classmethod
        def calibrate_spec(cls, ctx: RunContext, target: ProbeSpec | None = None) -> ProbeSpec:
            raise SwayError("this entry cannot say how to calibrate it")

    class _NullRunFails(_OptsOut):
        kind = NULL_RUN_FAILS

        def run(self, spec: ProbeSpec, ctx: RunContext) -> ProbeResult:
            if isinstance(ctx.backend, NullCalibrationBackendProxy):
                raise SwayError("needs a tokenizer the null view does not expose")
            return _fixed_pass(spec, ctx)

        @classmethod
        def calibrate_spec(cls, ctx: RunContext, target: ProbeSpec | None = None) -> ProbeSpec:
            assert target is not None
            return target

    yield
    for kind in (CALIB_RAISES, NULL_RUN_FAILS, OPTS_OUT):
        base._REGISTRY.pop(kind, None)


@pytest.mark.parametrize(
    ("kind", "why"),
    [(NULL_RUN_FAILS, "tokenizer"), (CALIB_RAISES, "cannot say how to calibrate")],
)
def test_entry_that_got_no_null_warns_instead_of_passing(
    kind: str, why: str, run_suite: RunSuite
) -> None:
    res = run_suite(NULL, dkl(), {"name": "x", "kind": kind}, {"name": "o", "kind": OPTS_OUT})
    x = res.by_name("x")
    assert x.verdict is Verdict.WARN, x.message
    assert x.headline == "not calibrated" and why in x.message
    assert x.score is None  # an unbacked PASS does not feed the composite either
    null = res.by_name("null")
    assert null.verdict is Verdict.PASS  # dkl was calibrated
    assert null.calibration is not None and why in null.calibration.failures["x"]
    assert res.by_name("dkl").verdict is Verdict.PASS and res.by_name("dkl").z_score is not None
    # an entry that never asked for a null keeps its fixed-threshold verdict
    assert res.by_name("o").verdict is Verdict.PASS


def test_calibration_failing_for_every_entry(run_suite: RunSuite) -> None:
    res = run_suite(NULL, {"name": "x", "kind": NULL_RUN_FAILS})
    null = res.by_name("null")
    assert null.verdict is not Verdict.PASS
    assert "calibration failed for every probe" in null.message
    assert res.by_name("x").verdict is Verdict.WARN


def test_crashing_null_adapter_leaves_no_fixed_threshold_pass(run_suite: RunSuite) -> None:
    class BrokenIdentity(CachedDummy):
        def cache_identity(self) -> str:
            raise RuntimeError("adapter file vanished while hashing")

    res = run_suite(NULL, dkl(), {"name": "o", "kind": OPTS_OUT}, backend=BrokenIdentity())
    assert res.by_name("null").verdict is Verdict.ERROR
    d = res.by_name("dkl")
    assert d.verdict is Verdict.WARN, d.message
    assert "vanished while hashing" in d.message
    assert res.by_name("o").verdict is Verdict.PASS


def test_without_null_adapter_fixed_thresholds_still_judge(run_suite: RunSuite) -> None:
    """No null was asked for: the fixed-threshold verdict stands (and says so)."""
    d = run_suite(dkl()).by_name("dkl")
    assert d.verdict is Verdict.PASS and d.null is None and d.z_score is None
    assert "no null calibration for delta_kl: fixed thresholds" in d.message


# --- null seeds derive from defaults.seed ---------------------------------------------------------


def _calibration(res: SuiteResult) -> NullCalibration:
    cal = res.by_name("null").calibration
    assert cal is not None
    return cal


def _samples(res: SuiteResult) -> list[float]:
    return list(_calibration(res).stats["dkl"].samples)


def test_null_seeds_follow_the_run_seed(run_suite: RunSuite) -> None:
    a0 = run_suite(NULL, dkl(), seed=0)
    b0 = run_suite(NULL, dkl(), seed=0)
    a1 = run_suite(NULL, dkl(), seed=1)
    assert _samples(a0) == _samples(b0)  # deterministic
    assert set(_samples(a0)).isdisjoint(_samples(a1))  # another run seed: other nulls
    seeds0 = a0.by_name("null").evidence["null_seeds"]
    seeds1 = a1.by_name("null").evidence["null_seeds"]
    assert len(set(seeds0)) == 3 and set(seeds0).isdisjoint(seeds1)


def test_explicit_seed_base_selects_another_family(run_suite: RunSuite) -> None:
    plain = run_suite(NULL, dkl(), seed=0)
    based = run_suite({**NULL, "seed_base": 7}, dkl(), seed=0)
    based_again = run_suite({**NULL, "seed_base": 7}, dkl(), seed=0)
    assert _samples(based) == _samples(based_again)
    assert set(_samples(based)).isdisjoint(_samples(plain))
    other_run = run_suite({**NULL, "seed_base": 7}, dkl(), seed=3)
    assert set(_samples(based)).isdisjoint(_samples(other_run))


def test_run_seed_is_part_of_the_cache_key(run_suite: RunSuite, null_cache_dir: Path) -> None:
    run_suite(NULL, dkl(), backend=CachedDummy(), seed=0)
    other = run_suite(NULL, dkl(), backend=CachedDummy(), seed=1)
    assert _calibration(other).from_cache is False
    assert len(list(null_cache_dir.glob("*.json"))) == 2
    back = run_suite(NULL, dkl(), backend=CachedDummy(), seed=0)
    assert _calibration(back).from_cache is True


def test_null_seeds_function_is_documented_and_stable() -> None:
    from dlm_sway.probes.null_adapter import null_seeds

    assert null_seeds(0, 5) == null_seeds(0, 5)
    assert null_seeds(0, 5)[:3] == null_seeds(0, 3)  # more runs extend, never reshuffle
    assert null_seeds(0, 5) != null_seeds(1, 5) != null_seeds(0, 5, seed_base=1000)
    assert all(0 <= s < 2**31 for s in null_seeds(2**64 + 5, 200))
    assert len(set(null_seeds(0, 200))) == 200
