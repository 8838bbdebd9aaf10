"""The suite runner: order, fencing, preflight, null-stat threading, provenance, determinism."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from dlm_sway.backends.dummy import DummyDifferentialBackend
from dlm_sway.core.errors import ProbeError, SwayError
from dlm_sway.core.result import DeterminismReport, ProbeResult, SuiteResult, Verdict
from dlm_sway.probes import base
from dlm_sway.probes.base import Probe, ProbeSpec, RunContext
from dlm_sway.suite.loader import LoadedSpec
from dlm_sway.suite.runner import run

RunSuite = Callable[..., SuiteResult]
MakeSuite = Callable[..., LoadedSpec]

BOOM = "_test_runner_boom"
SWAY_BOOM = "_test_runner_sway_boom"
SPY = "_test_runner_spy"
SPY_CALLS: list[str] = []

NULL = {"name": "null", "kind": "null_adapter", "runs": 3}


def dkl(name: str = "dkl", **kw: Any) -> dict[str, Any]:
    return {
        "name": name,
        "kind": "delta_kl",
        "prompts": ["The quick brown fox", "Hello world", "Once upon a time"],
        **kw,
    }


@pytest.fixture(scope="module", autouse=True)
def test_probe_kinds() -> Iterator[None]:
    class _Boom(Probe):
        kind = BOOM
        spec_cls = ProbeSpec

        def run(self, spec: ProbeSpec, ctx: RunContext) -> ProbeResult:
            raise TypeError("unsupported operand")

    class _SwayBoom(_Boom):
        kind = SWAY_BOOM

        def run(self, spec: ProbeSpec, ctx: RunContext) -> ProbeResult:
            raise ProbeError(spec.name, "backend lacks a tokenizer")

    class _Spy(Probe):
        kind = SPY
        spec_cls = ProbeSpec

        def run(self, spec: ProbeSpec, ctx: RunContext) -> ProbeResult:
            SPY_CALLS.append(spec.name)
            return ProbeResult(name=spec.name, kind=spec.kind, verdict=Verdict.PASS, raw=1.0)

    yield
    for kind in (BOOM, SWAY_BOOM, SPY):
        base._REGISTRY.pop(kind, None)


@pytest.fixture(autouse=True)
def _reset_spy() -> None:
    SPY_CALLS.clear()


def test_declaration_order_kept(run_suite: RunSuite) -> None:
    res = run_suite(
        {"name": "z-first", "kind": SPY},
        dkl("a-second"),
        {"name": "m-third", "kind": BOOM},
        {"name": "b-fourth", "kind": SPY, "enabled": False},
        NULL,
        dkl("c-last"),
    )
    assert [p.name for p in res.probes] == [
        "z-first",
        "a-second",
        "m-third",
        "b-fourth",
        "null",
        "c-last",
    ]


def test_disabled_probe_is_skipped_and_not_run(run_suite: RunSuite) -> None:
    res = run_suite({"name": "off", "kind": SPY, "enabled": False, "weight": 3.0}, dkl())
    off = res.by_name("off")
    assert off.verdict is Verdict.SKIP
    assert off.message == "disabled in spec"
    assert off.weight == 3.0  # stamped by the runner, typed
    assert SPY_CALLS == []


def test_arbitrary_exception_becomes_error_and_suite_continues(run_suite: RunSuite) -> None:
    res = run_suite({"name": "broken", "kind": BOOM}, dkl(), {"name": "after", "kind": SPY})
    broken = res.by_name("broken")
    assert broken.verdict is Verdict.ERROR
    assert broken.message == "TypeError: unsupported operand"
    assert broken.raw is None and broken.score is None
    assert res.by_name("dkl").verdict is Verdict.PASS
    assert SPY_CALLS == ["after"]


def test_sway_error_message_is_kept_verbatim(run_suite: RunSuite) -> None:
    res = run_suite({"name": "nt", "kind": SWAY_BOOM}, dkl())
    assert res.by_name("nt").verdict is Verdict.ERROR
    assert res.by_name("nt").message == "nt: backend lacks a tokenizer"


class TestPreflight:
    def test_non_finite_logits_abort_with_one_error(self, run_suite: RunSuite) -> None:
        be = DummyDifferentialBackend(nan=True)
        res = run_suite({"name": "spy", "kind": SPY}, NULL, dkl(), backend=be)
        assert len(res.probes) == 1
        (only,) = res.probes
        assert only.name == "__preflight__"
        assert only.verdict is Verdict.ERROR
        assert "non-finite" in only.message
        assert SPY_CALLS == []
        assert res.backend_stats["forward_passes"] == 2  # one forward per preflight view
        assert res.null_stats == {}

    def test_skipping_preflight_still_never_passes_nan(self, make_suite: MakeSuite) -> None:
        be = DummyDifferentialBackend(nan=True)
        res = run(make_suite(dkl()), be, skip_preflight=True)
        r = res.by_name("dkl")
        assert r.verdict is Verdict.ERROR
        assert "non-finite" in r.message

    def test_finite_backend_records_preflight_time(self, run_suite: RunSuite) -> None:
        res = run_suite(dkl())
        assert "preflight_s" in res.timings and res.timings["preflight_s"] >= 0


def test_null_stats_reach_later_probes_only(run_suite: RunSuite) -> None:
    res = run_suite(dkl("before"), NULL, dkl("after"))
    before, after = res.by_name("before"), res.by_name("after")
    assert before.z_score is None and "no null calibration for delta_kl" in before.message
    assert after.z_score is not None and after.z_score >= 3
    assert set(res.null_stats) == {"after"}
    assert before.raw == pytest.approx(after.raw)  # same metric, only the calibration differs


def test_failed_null_adapter_calibrates_nothing(run_suite: RunSuite, two_view_backend: Any) -> None:
    res = run_suite(NULL, dkl(), backend=two_view_backend)
    assert res.by_name("null").verdict is Verdict.SKIP
    assert res.null_stats == {}


def test_suite_result_provenance(run_suite: RunSuite) -> None:
    be = DummyDifferentialBackend()
    res = run_suite(NULL, dkl(), backend=be, seed=11)
    assert isinstance(res.determinism, DeterminismReport)
    assert res.determinism.seed == 11
    assert res.determinism.class_ in {"strict", "best_effort", "loose"}
    assert {"preflight_s", "noise_floor_s", "total_s"} <= set(res.timings)
    assert res.versions["sway"] == res.sway_version
    assert "python" in res.versions and "numpy" in res.versions
    assert res.backend_stats["forward_passes"] == be.stats.forward_passes > 0
    assert set(res.null_stats) == {"dkl"}
    assert res.null_stats["dkl"]["n"] == 3 and len(res.null_stats["dkl"]["samples"]) == 3
    assert res.base_model_id == "dummy-base"
    assert res.adapter_id == "builtin:x"
    assert res.finished_at >= res.started_at
    assert all(p.duration_s >= 0 for p in res.probes)
    assert res.by_name("dkl").duration_s > 0


def test_adapter_id_override(make_suite: MakeSuite) -> None:
    res = run(make_suite(dkl()), DummyDifferentialBackend(), adapter_id="sha256:abc")
    assert res.adapter_id == "sha256:abc"


def test_missing_backend_is_an_error(make_suite: MakeSuite) -> None:
    with pytest.raises(SwayError, match="need a model backend"):
        run(make_suite(dkl()), None)


def test_progress_is_reported(make_suite: MakeSuite) -> None:
    events: list[tuple[str, Any]] = []

    class Recorder:
        def probe_started(self, name: str, index: int, total: int) -> None:
            events.append(("start", (name, index, total)))

        def probe_finished(self, result: ProbeResult) -> None:
            events.append(("done", result.name))

        def step(self, label: str, done: int, total: int) -> None:
            events.append(("step", (done, total)))

    run(make_suite(NULL, dkl()), DummyDifferentialBackend(), progress=Recorder())
    assert ("start", ("null", 0, 2)) in events and ("start", ("dkl", 1, 2)) in events
    # dkl is judged as soon as its own nulls are drawn, before null_adapter reports.
    assert [e[1] for e in events if e[0] == "done"] == ["dkl", "null"]
    steps = [e[1] for e in events if e[0] == "step"]
    assert steps and steps[-1] == (3, 3)  # one step per null seed and entry


def test_entries_judged_while_nulls_draw_equal_entries_judged_after(
    run_suite: RunSuite,
) -> None:
    """Early judging changes when a verdict appears, never what it is.

    In ``late`` a disabled entry sits between the null and the delta_kl entries, so
    they are judged at their turn, after every null is drawn; in ``early`` each is
    judged as soon as its own nulls are in. Same numbers, same report order.
    """
    common = ({**NULL, "rank_multipliers": [0.5, 1.0]},)
    tail = (
        dkl("a"),
        dkl("b", prompts=["Hello world", "Zebras graze"]),
        {"name": "abl", "kind": "adapter_ablation", "prompts": ["a b c", "Hello"]},
    )
    gap = {"name": "gap", "kind": SPY, "enabled": False}
    early = run_suite(*common, *tail, gap)
    late = run_suite(*common, gap, *tail)
    assert [p.name for p in early.probes] == ["null", "a", "b", "abl", "gap"]
    drop_gap = [n for n in _numbers(late) if n[0] != "gap"]
    assert [n for n in _numbers(early) if n[0] != "gap"] == drop_gap
    for name in ("a", "b", "abl"):
        e, lt = early.by_name(name), late.by_name(name)
        assert e.ci_95 == lt.ci_95 and e.message == lt.message
        assert e.null == lt.null and e.null is not None and len(e.null.z_by_rank) == 2
    assert early.null_stats == late.null_stats
    assert early.by_name("null").duration_s < sum(p.duration_s for p in early.probes)


def _numbers(res: SuiteResult) -> list[tuple[str, Any, Any, Any]]:
    return [(p.name, p.verdict.value, p.raw, p.z_score) for p in res.probes]


def test_two_runs_are_identical(run_suite: RunSuite) -> None:
    suite = (
        {**NULL, "rank_multipliers": [0.5, 1.0]},
        dkl(),
        {"name": "abl", "kind": "adapter_ablation", "prompts": ["a b c", "Hello"]},
    )
    a, b = run_suite(*suite), run_suite(*suite)
    assert _numbers(a) == _numbers(b)
    assert a.null_stats == b.null_stats
    assert a.by_name("dkl").ci_95 == b.by_name("dkl").ci_95


_SCRIPT = textwrap.dedent(
    """
    import json
    import sys
    class _NoTorch:  # the torch-free core must not need torch (and it is faster)
        def find_spec(self, name, path=None, target=None):
            if name == "torch" or name.startswith("torch."):
                raise ImportError("torch blocked in this test")
            return None
    sys.meta_path.insert(0, _NoTorch())
    from dlm_sway.backends.dummy import DummyDifferentialBackend
    from dlm_sway.suite.loader import from_dict
    from dlm_sway.suite.runner import run

    prompts = [f"prompt number {i} about topic {i * 7}" for i in range(8)]
    spec = {
        "models": {"ft": {"kind": "dummy", "base": "dummy-base"}},
        "defaults": {"seed": 5},
        "suite": [
            {"name": "null", "kind": "null_adapter", "runs": 3,
             "rank_multipliers": [2.0, 0.5, 1.0],
             "calibrate_kinds": ["delta_kl", "adapter_ablation"]},
            {"name": "dkl", "kind": "delta_kl", "prompts": prompts},
            {"name": "abl", "kind": "adapter_ablation", "prompts": prompts},
        ],
    }
    res = run(from_dict(spec), DummyDifferentialBackend(strength=0.5))
    print(json.dumps([[p.name, p.raw, p.z_score, p.ci_95, p.evidence.get("z_by_rank")]
                      for p in res.probes]))
    """
)


def test_same_numbers_across_hash_seeds() -> None:
    procs = []
    for hash_seed in ("0", "4242"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed, "SWAY_DISABLE_NULL_CACHE": "1"}
        procs.append(
            subprocess.Popen(
                [sys.executable, "-c", _SCRIPT],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    outs = []
    for p in procs:
        out, err = p.communicate(timeout=60)
        assert p.returncode == 0, err
        outs.append(json.loads(out.strip().splitlines()[-1]))
    assert outs[0] == outs[1]
    assert [row[0] for row in outs[0]] == ["null", "dkl", "abl"]
    assert outs[0][1][1] is not None and outs[0][1][2] is not None
