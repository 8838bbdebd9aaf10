"""Contracts sway promises to code it does not own: third-party backends and declared probes.

A backend written exactly to the seed's ``as_null_adapter(seed, *, init_scale=0.02,
rank_scale=1.0)`` must calibrate a real suite; asking it for a null construction it
cannot draw must say so rather than quietly use another one. ``list-probes``' calibrated
column is a declaration each probe class makes, and it must match what its
``calibrate_spec`` actually does.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from dlm_sway.backends.dummy import DummyDifferentialBackend
from dlm_sway.cli.app import app
from dlm_sway.core.documents import load_document
from dlm_sway.core.errors import SwayError
from dlm_sway.core.result import SuiteResult, Verdict
from dlm_sway.core.scoring import (
    NULL_CONSTRUCTIONS,
    ConstructedNullBackend,
    NullCalibratedBackend,
    NullConstruction,
    ScoringModel,
)
from dlm_sway.probes import base
from dlm_sway.probes._null_proxy import NullCalibrationBackendProxy
from dlm_sway.probes.base import RunContext, build_probe
from dlm_sway.suite.autogen import plan_suite

PROMPTS = [
    "The quick brown fox",
    "Alpha beta gamma delta",
    "Hello world, once again",
    "Once upon a time there was",
]
GUILD = Path(__file__).parent / "data" / "guild.dlm"


class SeedContractBackend:
    """A third-party backend written to the seed contract, and nothing more.

    Its null view is its own: seeded init-scale noise (borrowed from the dummy's
    arithmetic). ``calls`` records every keyword it was handed.
    """

    def __init__(self) -> None:
        self._model = DummyDifferentialBackend(strength=1.0, planted=1.0)
        self.calls: list[dict[str, Any]] = []

    def as_base(self) -> AbstractContextManager[ScoringModel]:
        cm: AbstractContextManager[ScoringModel] = self._model.as_base()
        return cm

    def as_finetuned(self) -> AbstractContextManager[ScoringModel]:
        cm: AbstractContextManager[ScoringModel] = self._model.as_finetuned()
        return cm

    def as_null_adapter(
        self, seed: int, *, init_scale: float = 0.02, rank_scale: float = 1.0
    ) -> AbstractContextManager[ScoringModel]:
        self.calls.append({"seed": seed, "init_scale": init_scale, "rank_scale": rank_scale})
        cm: AbstractContextManager[ScoringModel] = self._model.as_null_adapter(
            seed, init_scale=init_scale, rank_scale=rank_scale
        )
        return cm


class TwoConstructionBackend(SeedContractBackend):
    """Declares ``construction=`` support, but only for two of the three constructions."""

    null_constructions: tuple[NullConstruction, ...] = ("init_scale", "permuted")

    def as_null_adapter(  # type: ignore[override]
        self,
        seed: int,
        *,
        init_scale: float = 0.02,
        rank_scale: float = 1.0,
        construction: NullConstruction = "init_scale",
    ) -> AbstractContextManager[ScoringModel]:
        self.calls.append({"seed": seed, "construction": construction})
        cm: AbstractContextManager[ScoringModel] = self._model.as_null_adapter(
            seed, init_scale=init_scale, rank_scale=rank_scale, construction=construction
        )
        return cm


def _logprobs(cm: AbstractContextManager[ScoringModel]) -> list[np.ndarray]:
    with cm as view:
        return [d.logprobs for d in view.next_token_dist_batch(PROMPTS, top_k=32)]


def _by_kind(suite: SuiteResult, kind: str) -> Any:
    return next(p for p in suite.probes if p.kind == kind)


# --- the seed's null-adapter contract ---------------------------------------------------------


def test_seed_backend_is_null_calibrated_but_declares_no_constructions() -> None:
    seed = SeedContractBackend()
    assert isinstance(seed, NullCalibratedBackend)
    assert not isinstance(seed, ConstructedNullBackend)
    assert isinstance(TwoConstructionBackend(), ConstructedNullBackend)
    assert isinstance(DummyDifferentialBackend(), ConstructedNullBackend)


def test_proxy_calls_a_seed_backend_with_exactly_the_seed_signature() -> None:
    backend = SeedContractBackend()
    proxy = NullCalibrationBackendProxy(backend, seed=1234, init_scale=0.03, rank_scale=2.0)
    got = _logprobs(proxy.as_finetuned())
    assert backend.calls == [{"seed": 1234, "init_scale": 0.03, "rank_scale": 2.0}]
    expected = _logprobs(
        DummyDifferentialBackend().as_null_adapter(1234, init_scale=0.03, rank_scale=2.0)
    )
    assert all(np.array_equal(a, b) for a, b in zip(got, expected, strict=True))


def test_seed_backend_calibrates_a_real_suite(run_suite: Callable[..., SuiteResult]) -> None:
    backend = SeedContractBackend()
    suite = run_suite(
        {"name": "calib", "kind": "null_adapter", "runs": 6, "null": "init_scale"},
        {"name": "topic", "kind": "delta_kl", "prompts": PROMPTS},
        backend=backend,
    )
    null = _by_kind(suite, "null_adapter")
    assert null.verdict == Verdict.PASS, null.message
    assert "calibrated 1 probe" in null.message
    dkl = _by_kind(suite, "delta_kl")
    assert dkl.verdict != Verdict.ERROR, dkl.message
    assert dkl.z_score is not None, dkl.message  # judged against the seed backend's nulls
    assert len({c["seed"] for c in backend.calls}) == 6


@pytest.mark.parametrize("construction", [c for c in NULL_CONSTRUCTIONS if c != "init_scale"])
def test_seed_backend_asked_for_another_construction_says_so(
    run_suite: Callable[..., SuiteResult], construction: str
) -> None:
    """Never a TypeError per seed, never a silent init-scale null: one clear error."""
    backend = SeedContractBackend()
    suite = run_suite(
        {"name": "calib", "kind": "null_adapter", "runs": 4, "null": construction},
        {"name": "topic", "kind": "delta_kl", "prompts": PROMPTS},
        backend=backend,
    )
    null = _by_kind(suite, "null_adapter")
    assert null.verdict == Verdict.ERROR, null.message
    assert "SeedContractBackend" in null.message
    assert repr(construction) in null.message
    assert "null: init_scale" in null.message  # the fix
    assert "TypeError" not in null.message
    assert backend.calls == []  # no null of another construction was drawn
    dkl = _by_kind(suite, "delta_kl")
    assert dkl.z_score is None  # nothing pretends to be calibrated


def test_the_default_null_on_a_seed_backend_calibrates_with_its_nulls_and_says_so(
    run_suite: Callable[..., SuiteResult],
) -> None:
    """A seed-contract backend works with a default suite: the spec did not ask for a
    construction, so the backend's own fixed-std nulls are used — and the result says so."""
    backend = SeedContractBackend()
    suite = run_suite(
        {"name": "calib", "kind": "null_adapter", "runs": 4},
        {"name": "topic", "kind": "delta_kl", "prompts": PROMPTS},
        backend=backend,
    )
    null = _by_kind(suite, "null_adapter")
    assert null.verdict == Verdict.PASS, null.message
    assert "fixed-std" in null.message and "'init_scale'" in null.message
    assert null.evidence["null"] == "init_scale"
    assert len({c["seed"] for c in backend.calls}) == 4
    assert _by_kind(suite, "delta_kl").z_score is not None


def test_declared_constructions_are_passed_through_and_others_refused() -> None:
    backend = TwoConstructionBackend()
    _logprobs(NullCalibrationBackendProxy(backend, seed=5, construction="permuted").as_finetuned())
    assert backend.calls == [{"seed": 5, "construction": "permuted"}]
    with pytest.raises(SwayError, match=r"'norm_matched'.*init_scale or permuted"):
        NullCalibrationBackendProxy(backend, seed=5, construction="norm_matched")


@pytest.mark.parametrize("construction", NULL_CONSTRUCTIONS)
def test_builtin_backends_still_draw_every_construction(construction: NullConstruction) -> None:
    inner = DummyDifferentialBackend()
    proxy = NullCalibrationBackendProxy(inner, seed=9, construction=construction)
    got = _logprobs(proxy.as_finetuned())
    want = _logprobs(inner.as_null_adapter(9, construction=construction))
    assert all(np.array_equal(a, b) for a, b in zip(got, want, strict=True))


# --- the declared "calibrated" attribute ------------------------------------------------------


def _runnable_entries() -> dict[str, dict[str, Any]]:
    """One entry per built-in kind that would run: autogen's plan for a real document,
    plus hand-written entries for the kinds that document is too small for."""
    entries = {e["kind"]: e for e in plan_suite(load_document(GUILD)).suite}
    entries.setdefault(
        "preference_flip",
        {
            "name": "prefs",
            "kind": "preference_flip",
            "triples": [
                {"prompt": f"Question {i}: is the sky blue?", "chosen": "Yes.", "rejected": "No."}
                for i in range(3)
            ],
        },
    )
    entries.setdefault(
        "cluster_kl",
        {
            "name": "clusters",
            "kind": "cluster_kl",
            "prompts": [f"The cat number {i} sat on the mat" for i in range(12)]
            + [f"The compiler pass {i} rewrote the loop" for i in range(12)],
        },
    )
    # autogen adds these only when training artefacts exist next to the adapter
    entries.setdefault("gradient_ghost", {"name": "ghost", "kind": "gradient_ghost"})
    entries.setdefault("training_drift", {"name": "curve", "kind": "training_drift"})
    entries.setdefault("leakage", {"name": "recital", "kind": "leakage", "prefix_chars": 32})
    entries.setdefault(
        "tool_use_fidelity",
        {
            "name": "tools",
            "kind": "tool_use_fidelity",
            "cases": [{"prompt": "Call the weather tool", "json_schema": {"type": "object"}}],
        },
    )
    return entries


def _builtin_classes() -> dict[str, type[base.Probe]]:
    return {
        kind: cls
        for kind, cls in base.registry().items()
        if cls.__module__.removeprefix("dlm_sway.probes.") in base.BUILTIN_PROBE_MODULES
    }


def test_every_builtin_probe_declares_what_calibrate_spec_does() -> None:
    doc = load_document(GUILD)
    ctx = RunContext(backend=None, seed=0, sections=doc.sections, doc_text=doc.text)
    entries = _runnable_entries()
    classes = _builtin_classes()
    assert {c.__module__.rsplit(".", 1)[-1] for c in classes.values()} == set(
        base.BUILTIN_PROBE_MODULES
    )
    mismatched = {}
    for kind, cls in classes.items():
        assert kind in entries, f"no runnable example entry for {kind}"
        _, target = build_probe(entries[kind])
        does = cls.calibrate_spec(ctx, target) is not None
        if does != cls.calibrated:
            mismatched[kind] = f"declares calibrated={cls.calibrated}, calibrate_spec says {does}"
        if not cls.calibrated:
            assert len(cls.uncalibrated_reason) > 10, kind
            assert cls.calibrate_spec(ctx, None) is None, kind
    assert mismatched == {}


def test_prompt_collapse_opts_out_and_null_adapter_is_not_calibrated() -> None:
    reg = base.registry()
    assert reg["prompt_collapse"].calibrated is False
    assert "half-life" in reg["prompt_collapse"].uncalibrated_reason
    assert reg["null_adapter"].calibrated is False
    assert reg["delta_kl"].calibrated is True


def test_list_probes_shows_the_declared_column_and_the_reasons() -> None:
    result = CliRunner().invoke(app, ["list-probes"], env={"COLUMNS": "200", "NO_COLOR": "1"})
    assert result.exit_code == 0, result.output
    rows = {line.split("│")[1].strip(): line for line in result.output.splitlines() if "│" in line}
    assert "no" in rows["prompt_collapse"].split("│")[3]
    assert "yes" in rows["delta_kl"].split("│")[3]
    notes = result.output.split("not calibrated against null adapters:")[1]
    assert "prompt_collapse: a null's half-life" in " ".join(notes.split())
    assert "null_adapter:" in notes


def test_declaring_calibrated_without_calibrate_spec_is_refused() -> None:
    with pytest.raises(TypeError, match="declares calibrated = True"):

        class _Liar(base.Probe):
            kind = "contract_test_liar"
            spec_cls = base.ProbeSpec
            calibrated = True

            def run(self, spec: base.ProbeSpec, ctx: RunContext) -> Any:
                raise AssertionError

    assert "contract_test_liar" not in base.registry()
