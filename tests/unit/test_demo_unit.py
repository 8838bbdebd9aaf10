"""``sway demo`` pieces that need no model: the impostor adapter, the demo suites,
the closing sentences, and the command's flow with the suites faked."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from dlm_sway.cli.app import app
from dlm_sway.core.result import (
    Direction,
    NullSummary,
    OverfitSignal,
    ProbeResult,
    SuiteResult,
    Verdict,
)
from dlm_sway.demo.assets import adapter_dir
from dlm_sway.demo.summary import Contrast, adapter_line
from dlm_sway.suite.score import compute

NULLS = NullSummary(
    construction="norm_matched",
    method="t_prediction",
    k=10,
    samples=tuple(0.001 * i for i in range(1, 11)),
    z_threshold=3.0,
)


# ---- the impostor ----------------------------------------------------------------------


def _slots(path: Path) -> dict[str, Any]:
    from dlm_sway.backends.hf_load import inspect_adapter
    from dlm_sway.backends.vllm_adapters import read_slots

    return {s.name: s for s in read_slots(inspect_adapter(path), None)}


@pytest.fixture(scope="module")
def impostor(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("torch")
    pytest.importorskip("safetensors")
    from dlm_sway.demo.impostor import impostor_dir

    return impostor_dir(adapter_dir("strong"), 1612, root=tmp_path_factory.mktemp("impostors"))


def test_impostor_has_the_strong_adapters_config_and_per_module_norms(impostor: Path) -> None:
    from dlm_sway.backends.hf_lora import delta_norm

    strong, fake = _slots(adapter_dir("strong")), _slots(impostor)
    assert set(fake) == set(strong) and len(strong) == 120
    config = json.loads((adapter_dir("strong") / "adapter_config.json").read_text())
    assert json.loads((impostor / "adapter_config.json").read_text()) == config
    for name, s in strong.items():
        f = fake[name]
        assert f.a.shape == s.a.shape and f.b.shape == s.b.shape and f.scaling == s.scaling
        want, got = delta_norm(s.a, s.b, s.scaling), delta_norm(f.a, f.b, f.scaling)
        assert got == pytest.approx(want, rel=1e-5), name


def test_impostor_points_elsewhere(impostor: Path) -> None:
    """Same norms, unrelated directions: the weight changes are nearly orthogonal."""
    import torch

    strong, fake = _slots(adapter_dir("strong")), _slots(impostor)
    for name in list(strong)[:8]:
        s, f = strong[name], fake[name]
        ds = (s.b.double() @ s.a.double()).flatten()
        df = (f.b.double() @ f.a.double()).flatten()
        cosine = float(torch.dot(ds, df) / (ds.norm() * df.norm()))
        assert abs(cosine) < 0.1, (name, cosine)


def test_impostor_is_fixed_by_its_seed_and_cached(impostor: Path, tmp_path: Path) -> None:
    import torch

    from dlm_sway.demo.impostor import impostor_dir, impostor_tensors

    again, other = (
        impostor_tensors(adapter_dir("strong"), 1612),
        impostor_tensors(adapter_dir("strong"), 1613),
    )
    saved = {n: (s.a, s.b) for n, s in _slots(impostor).items()}
    first = next(k for k in again if "lora_A" in k)
    assert set(again) == set(other)
    assert not any(torch.equal(again[k], other[k]) for k in again)
    module = first.removeprefix("base_model.model.").rsplit(".lora_A", 1)[0]
    assert torch.equal(again[first], saved[module][0])
    stamp = (impostor / "adapter_model.safetensors").stat().st_mtime_ns
    assert impostor_dir(adapter_dir("strong"), 1612, root=impostor.parent) == impostor
    assert (impostor / "adapter_model.safetensors").stat().st_mtime_ns == stamp  # reused


def test_impostor_cache_that_cannot_be_written_is_a_clear_error(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    from dlm_sway.core.errors import SwayError
    from dlm_sway.demo.impostor import impostor_dir

    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(SwayError, match="SWAY_IMPOSTOR_CACHE_DIR"):
        impostor_dir(adapter_dir("strong"), 1612, root=blocker / "sub")


# ---- the demo suites -----------------------------------------------------------------


def test_quick_keeps_every_autogen_probe_and_shrinks_sizes() -> None:
    from dlm_sway.demo.suite import QUICK, demo_suite

    full = demo_suite(adapter_dir("strong"), runs=7, quick=False)
    quick = demo_suite(adapter_dir("strong"), runs=7, quick=True)
    kinds = [e["kind"] for e in full["suite"]]
    assert kinds == [e["kind"] for e in quick["suite"]]
    # The document supports these; the demo must not fall back to two probes.
    for kind in ("delta_kl", "section_internalization", "leakage", "calibration_drift"):
        assert kind in kinds
    assert len(kinds) >= 8
    for f, q in zip(full["suite"], quick["suite"], strict=True):
        if f["kind"] == "null_adapter":
            assert f["runs"] == q["runs"] == 7
        for key, value in QUICK.get(f["kind"], {}).items():
            if key == "prompts":
                assert q["prompts"] == f["prompts"][:value]
            else:
                assert q[key] == value != f.get(key)
    assert full["models"]["ft"]["dtype"] == "fp32"


def test_contrast_suite_judges_the_headline_probe_against_fixed_noise() -> None:
    from dlm_sway.demo.suite import FIXED_NOISE_STD, contrast_suite, demo_suite
    from dlm_sway.suite.loader import from_dict

    spec = contrast_suite(adapter_dir("strong"), runs=5, quick=True)
    null, headline = spec["suite"]
    assert null["null"] == "init_scale" and null["init_scale"] == FIXED_NOISE_STD
    assert null["calibrate_kinds"] == ["delta_kl"] and null["runs"] == 5
    ours = next(
        e
        for e in demo_suite(adapter_dir("strong"), runs=5, quick=True)["suite"]
        if e["kind"] == "delta_kl"
    )
    assert headline == ours
    from_dict(spec, source="contrast")  # loads with absolute paths, no document


# ---- closing sentences -----------------------------------------------------------------


def run_of(*probes: ProbeResult) -> tuple[SuiteResult, Any]:
    start = datetime(2025, 1, 1, tzinfo=UTC)
    suite = SuiteResult("s", start, start + timedelta(seconds=1), "b", "a", "0", probes)
    return suite, compute(suite)


def kl(verdict: Verdict, z: float, ratio: float, raw: float, p: float, score: float) -> ProbeResult:
    return ProbeResult(
        "topic_shift",
        "delta_kl",
        verdict,
        score=score,
        raw=raw,
        z_score=z,
        p_value=p,
        effect_ratio=ratio,
        null=NULLS,
    )


def other(name: str, verdict: Verdict, p: float, score: float, **kw: Any) -> ProbeResult:
    return ProbeResult(name, "section_internalization", verdict, score=score, p_value=p, **kw)


def test_healthy_sentence_names_z_nulls_and_checks() -> None:
    suite, score = run_of(
        kl(Verdict.PASS, 41.2, 95.0, 0.41, 1e-12, 0.99), other("s", Verdict.PASS, 1e-6, 0.9)
    )
    line = adapter_line("strong", suite, score)
    assert score.band == "healthy" and line.band == "healthy"
    assert line.sentence.startswith("strong: learned its document")
    assert (
        "z=+41" in line.sentence and "z=+41 against 10 random adapters of its size" in line.sentence
    )
    assert "95× their median" in line.sentence and "2 of 2 effect checks passed" in line.sentence
    assert line.sentence.endswith("; healthy.")


def test_real_but_negligible_sentence_explains_both_numbers() -> None:
    suite, score = run_of(kl(Verdict.FAIL, 5.7, 78.6, 8.6e-10, 1e-6, 0.1))
    line = adapter_line("weak", suite, score)
    assert line.band == "noise"
    assert "a real but negligible change" in line.sentence
    assert "z=+5.7" in line.sentence and "78.6× their median" in line.sentence
    assert "8.6e-10 nats" in line.sentence and "too small to matter" in line.sentence


def test_indistinguishable_sentence_and_the_fixed_noise_contrast() -> None:
    suite, score = run_of(
        kl(Verdict.FAIL, 0.4, 1.1, 0.3, 0.4, 0.1), other("s", Verdict.FAIL, 0.6, 0.1)
    )
    contrast = Contrast(plain_z=8.87, z_bar=3.0, init_scale=0.02)
    line = adapter_line("impostor", suite, score, contrast=contrast)
    assert line.band == "noise"
    assert "indistinguishable from random adapters of the same size" in line.sentence
    assert "0 of 2 effect checks passed" in line.sentence
    assert "fixed-noise nulls (std 0.02" in line.sentence
    assert "z=+8.9 by the reference's plain z, a PASS under its z ≥ 3 rule" in line.sentence


def test_contrast_is_the_reference_plain_z_over_the_null_samples() -> None:
    from dlm_sway.demo.summary import contrast_of

    nulls = NullSummary(
        construction="init_scale",
        method="t_prediction",
        k=4,
        samples=(1.0, 2.0, 3.0, 4.0),
        z_threshold=3.0,
    )
    result = ProbeResult("t", "delta_kl", Verdict.FAIL, raw=10.0, null=nulls)
    got = contrast_of(result, 0.02)
    assert got is not None and got.z_bar == 3.0 and got.init_scale == 0.02
    sd = (sum((x - 2.5) ** 2 for x in (1, 2, 3, 4)) / 3) ** 0.5
    assert got.plain_z == pytest.approx((10.0 - 2.5) / sd)
    flat = NullSummary(
        construction="init_scale", method="t_prediction", k=2, samples=(1.0, 1.0), z_threshold=3.0
    )
    assert contrast_of(ProbeResult("t", "delta_kl", Verdict.FAIL, raw=2.0, null=flat), 0.02) is None
    assert contrast_of(ProbeResult("t", "delta_kl", Verdict.FAIL, raw=2.0), 0.02) is None


def test_partial_suspicious_and_harmful_sentences_follow_the_band() -> None:
    suite, score = run_of(
        kl(Verdict.WARN, 2.5, 3.0, 0.05, 0.01, 0.4), other("s", Verdict.FAIL, 0.5, 0.1)
    )
    assert adapter_line("a", suite, score).sentence.startswith("a: a real but partial effect")

    signal = OverfitSignal("verbatim_recital", "recites 39% of its text")
    suite, score = run_of(
        kl(Verdict.PASS, 9.0, 50.0, 0.4, 1e-9, 0.95),
        ProbeResult(
            "recital",
            "leakage",
            Verdict.FAIL,
            score=0.0,
            p_value=1e-9,
            overfit=signal,
            direction=Direction.HARM,
        ),
    )
    line = adapter_line("b", suite, score)
    # A recital FAIL (intent generalize) is memorisation, not forgetting: suspicious.
    assert line.band == "suspicious" and "recites 39% of its text" in line.sentence

    suite, score = run_of(
        kl(Verdict.PASS, 9.0, 50.0, 0.4, 1e-9, 0.95),
        ProbeResult(
            "general_english",
            "external_perplexity",
            Verdict.FAIL,
            score=0.0,
            direction=Direction.HARM,
        ),
    )
    line = adapter_line("c", suite, score)
    assert line.band == "harmful"
    assert line.sentence.startswith("c: learned its document — ")
    assert "but at a cost: forgetting probe 'general_english' failed" in line.sentence
    assert "memorised" not in line.sentence

    suite, score = run_of(
        *suite.probes,
        ProbeResult(
            "recital", "leakage", Verdict.FAIL, score=0.0, overfit=signal, direction=Direction.HARM
        ),
    )
    line = adapter_line("d", suite, score)
    assert (
        line.band == "harmful" and "it also memorised its text (verbatim_recital)" in line.sentence
    )


def test_an_undertrained_adapter_is_not_called_harmful() -> None:
    """gradient_ghost's FAIL (a HARM-direction training check) says the training fell
    short, not that the adapter costs knowledge: the band follows the effect claims."""
    suite, score = run_of(
        ProbeResult(
            "undertrained", "gradient_ghost", Verdict.FAIL, score=0.0, direction=Direction.HARM
        ),
        kl(Verdict.FAIL, 5.7, 78.6, 8.6e-10, 1e-6, 0.1),
    )
    assert score.band == "noise", score.band_reason
    assert "negligible" in adapter_line("weak", suite, score).sentence


# ---- the command, with the suites faked ---------------------------------------------------


def test_demo_runs_three_adapters_and_writes_one_html_page(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("torch")
    import dlm_sway.backends.builtin_models as builtin_models
    import dlm_sway.cli.demo as demo_module

    seen: list[str] = []

    def fake_execute(loaded: Any, **_: Any) -> Any:
        seen.append(str(loaded.path))
        good = "strong" in str(loaded.path) or "fixed-noise" in str(loaded.path)
        return run_of(
            kl(
                Verdict.PASS if good else Verdict.FAIL,
                30.0 if good else 0.3,
                9.0,
                0.4,
                1e-9 if good else 0.4,
                0.9 if good else 0.1,
            )
        )

    monkeypatch.setenv("SWAY_IMPOSTOR_CACHE_DIR", str(tmp_path / "impostors"))
    monkeypatch.setattr(builtin_models, "ensure_converted", lambda: None)
    monkeypatch.setattr(demo_module, "execute", fake_execute)
    result = CliRunner().invoke(
        app, ["demo", "--json-dir", str(tmp_path / "out")], env={"COLUMNS": "400"}
    )
    assert result.exit_code == 0, result.output
    assert seen == [
        "sway demo [strong]",
        "sway demo [impostor]",
        "sway demo [weak]",
        "sway demo [impostor-vs-fixed-noise]",
    ]
    html = tmp_path / "out" / "sway-demo.html"
    assert html.is_file() and "impostor" in html.read_text(encoding="utf-8")
    assert f"HTML report: {html}" in result.output
    assert sorted(p.name for p in (tmp_path / "out").glob("*.json")) == [
        "impostor-vs-fixed-noise.json",
        "impostor.json",
        "strong.json",
        "weak.json",
    ]
    table = result.output.rpartition("sway demo — ")[2]
    assert "strong: learned its document" in table
    assert "impostor: indistinguishable from random adapters" in table
    assert (
        "by the reference's plain z, a PASS under its z ≥ 3 rule" in table
    )  # the fixed-noise contrast, in the impostor's row
