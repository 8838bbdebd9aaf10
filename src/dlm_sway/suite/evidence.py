"""Suite-level statistics around the probes: noise floor, Holm correction, health checks.

These turn a list of per-probe results into claims that hold up together: no
effect below the model's own numerical jitter, no PASS that does not survive
multiplicity, and a plain sentence whenever the evidence cannot carry a claim.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from dlm_sway.core.calibration import prediction_threshold
from dlm_sway.core.divergence import divergence
from dlm_sway.core.judge import holm_rejudge
from dlm_sway.core.multiplicity import holm, p_from_z
from dlm_sway.core.result import Direction, HealthCheck, ProbeResult, Verdict
from dlm_sway.core.scoring import (
    AdapterNorms,
    DifferentialBackend,
    LoadDiagnostics,
    NoiseFloorMeasurable,
    NullCoverage,
    TokenDist,
)
from dlm_sway.probes.base import Probe, ProbeSpec

#: One forward per prompt is the expensive layout; jitter is a property of the numerics,
#: not of the prompt set, so a handful of the suite's prompts measures it.
NOISE_FLOOR_MAX_PROMPTS = 8
#: Below this many nulls the calibration is too coarse to stake verdicts on.
MIN_NULLS = 5
NULL_ADAPTER_KIND = "null_adapter"


def measure_noise_floor(
    backend: DifferentialBackend | None,
    probes: Sequence[tuple[Probe, ProbeSpec]],
    top_k: int,
) -> dict[str, Any]:
    """JS between the base view under two batch layouts, on the suite's own prompts."""
    if backend is None or not isinstance(backend, NoiseFloorMeasurable):
        return {}
    prompts: list[str] = []
    for _, spec in probes:
        for p in getattr(spec, "prompts", None) or []:
            if isinstance(p, str) and p not in prompts:
                prompts.append(p)
    prompts = prompts[:NOISE_FLOOR_MAX_PROMPTS]
    if not prompts:
        return {}
    pairs = backend.base_layout_pairs(prompts, top_k)
    js = [divergence(a, b, "js") for a, b in pairs]
    return {
        "js_max": float(np.max(js)),
        "js_mean": float(np.mean(js)),
        "logprob_max_abs_diff": max(_max_logprob_diff(a, b) for a, b in pairs),
        "prompts": len(prompts),
        "method": "base view: padded batches vs one prompt per forward",
    }


def _max_logprob_diff(a: TokenDist, b: TokenDist) -> float:
    """Largest |Δ log p| over the tokens both layouts list (JS of ~1e-10-level jitter
    rounds to 0 in float64, so this says how far apart the layouts really are)."""
    common, ia, ib = np.intersect1d(a.token_ids, b.token_ids, return_indices=True)
    if common.size == 0:
        return float("inf")
    diff = np.abs(a.logprobs[ia].astype(np.float64) - b.logprobs[ib].astype(np.float64))
    return float(diff.max())


def holm_family(results: Sequence[ProbeResult]) -> dict[str, float]:
    """Name → p of the calibrated "effect beyond random adapters" claims Holm guards.

    Read from typed fields only: an EFFECT claim (a forgetting probe's PASS claims
    *no* harm, the opposite) with a null comparison and a finite p, that reached a
    verdict, and is not the null_adapter itself.
    """
    return {
        r.name: float(r.p_value)
        for r in results
        if r.direction is Direction.EFFECT
        and r.null is not None
        and r.p_value is not None
        and math.isfinite(r.p_value)
        and r.verdict in (Verdict.PASS, Verdict.FAIL, Verdict.WARN)
        and r.kind != NULL_ADAPTER_KIND
    }


def apply_holm(results: list[ProbeResult]) -> list[ProbeResult]:
    """Holm-adjust the family's p-values; each member is re-judged on its adjusted p
    (:func:`dlm_sway.core.judge.holm_rejudge` writes the words from those numbers)."""
    family = holm_family(results)
    if not family:
        return results
    adjusted = holm(family)
    return [
        holm_rejudge(r, adjusted[r.name], len(family)) if r.name in adjusted else r for r in results
    ]


def health_checks(
    results: Sequence[ProbeResult],
    probes: Sequence[tuple[Probe, ProbeSpec]],
    backend: DifferentialBackend | None,
) -> tuple[HealthCheck, ...]:
    """Plain sentences, each with its fix, whenever the evidence cannot support a claim."""
    checks: list[HealthCheck] = []
    if isinstance(backend, LoadDiagnostics):
        checks.extend(backend.load_health())
    if isinstance(backend, AdapterNorms):
        values = list(backend.adapter_norms().values())
        if values and not any(v > 0 for v in values):
            checks.append(
                HealthCheck(
                    "error",
                    "adapter_zero_norm",
                    "the adapter's weight change is exactly zero in every module: it cannot "
                    "change the model, and norm-matched nulls are zero too",
                    "check that the trained weights were saved (a LoRA whose B is all zeros "
                    "never trained)",
                )
            )
    if isinstance(backend, NullCoverage):
        uncovered = list(backend.null_coverage())
        if uncovered:
            checks.append(
                HealthCheck(
                    "warn",
                    "null_structure_mismatch",
                    f"the adapter also trains {len(uncovered)} non-LoRA tensor(s) "
                    f"(e.g. {uncovered[0]}) that null adapters leave as trained, so the "
                    "null shares part of the real effect and z-scores understate it",
                    "compare with a LoRA-only adapter, or read z as a lower bound",
                )
            )
    kinds = [s.kind for _, s in probes]
    null_results = [r for r in results if r.kind == NULL_ADAPTER_KIND]
    if NULL_ADAPTER_KIND not in kinds and any(k in kinds for k in ("delta_kl", "adapter_ablation")):
        checks.append(
            HealthCheck(
                "warn",
                "no_null",
                "no null_adapter in the suite: verdicts use fixed thresholds, which say "
                "nothing about whether the effect is beyond a random adapter",
                "add {name: null_baseline, kind: null_adapter} as the first probe",
            )
        )
    thresholds = [r.null.z_threshold for r in results if r.null is not None]
    z_needed = max(thresholds, default=3.0)
    for r in null_results:
        few = _too_few_nulls(r, z_needed)
        if few is not None:
            checks.append(few)
    for r in results:
        if r.null is not None and r.null.degenerate:
            checks.append(
                HealthCheck(
                    "warn",
                    "degenerate_null",
                    f"{r.name}: the null distribution is unusable ({r.null.degenerate}), so "
                    "this probe fell back to fixed thresholds",
                    "raise runs: on null_adapter; if the adapter norm is zero, fix the adapter",
                )
            )
    return tuple(checks)


def _too_few_nulls(result: ProbeResult, z_needed: float) -> HealthCheck | None:
    """A warning when the null_adapter's verdicts rest on fewer than 5 nulls.

    K is the fewest finite nulls any calibrated entry got (``calibration`` is typed
    on the null_adapter's result); an entry with none is reported by its own WARN.
    """
    cal = result.calibration
    if cal is None or not cal.stats:
        return None
    runs = min(s.n for s in cal.stats.values())
    if runs >= MIN_NULLS:
        return None
    if any(s.method == "reference_z" for s in cal.stats.values()):
        message = (
            f"only {runs} null adapter(s) with reference_z: (x − mean)/pstdev on so few "
            "samples is over-confident (about 19% false positives at a nominal 5% with "
            "K=3, see docs/statistics.md)"
        )
    else:
        need = prediction_threshold(runs, p_from_z(z_needed)) if runs >= 2 else math.inf
        message = (
            f"only {runs} null adapter(s): to reach z ≥ {z_needed:g} an effect must sit "
            f"{need:.0f} null standard deviations above the null mean, so real effects "
            "will often fail"
        )
    return HealthCheck(
        "warn",
        "too_few_nulls",
        message,
        "set runs: 10 or more on null_adapter (each null costs one pass over the probe prompts)",
    )


__all__ = ["apply_holm", "health_checks", "holm_family", "measure_noise_floor"]
