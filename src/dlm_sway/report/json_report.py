"""The JSON report: the machine contract, and the way a saved run is re-rendered.

``to_json`` writes ``schema_version`` (2: every typed result field — null
summary, calibration, category, weight, direction, headline, config — is
written out; the JSON Schema is :func:`~dlm_sway.report.json_read.run_json_schema`)
so consumers can refuse a format they do not know; ``from_json`` rebuilds the
exact ``(SuiteResult, SwayScore)`` pair, so ``sway report run.json --format X``
goes through the same renderers as a live run. Non-finite floats are written as
``null`` (JSON has no NaN), tuples as lists, and naive timestamps are taken to be UTC.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from dlm_sway.core.gate import GateDecision
from dlm_sway.core.result import (
    SCHEMA_VERSION,
    DeterminismReport,
    GeneratedSample,
    HealthCheck,
    NullCalibration,
    NullSummary,
    OverfitSignal,
    ProbeResult,
    SuiteResult,
    SwayScore,
    TokenTrace,
    band_for,
)
from dlm_sway.core.stats import NullStats
from dlm_sway.report.json_read import (
    NullCalibrationIn,
    NullStatsIn,
    NullSummaryIn,
    ProbeIn,
    gate_of,
    parse_run,
)


def to_json(suite: SuiteResult, score: SwayScore, *, gate: GateDecision | None = None) -> str:
    """The report as a JSON document (2-space indent, sorted keys, no NaN tokens)."""
    data = to_json_dict(suite, score, gate=gate)
    return json.dumps(data, indent=2, sort_keys=True, allow_nan=False)


def to_json_dict(
    suite: SuiteResult, score: SwayScore, *, gate: GateDecision | None = None
) -> dict[str, Any]:
    """The report as plain JSON-compatible Python data (``gate`` only from ``sway gate``)."""
    determinism = None
    if suite.determinism is not None:
        determinism = {
            "class": suite.determinism.class_,
            "seed": suite.determinism.seed,
            "notes": list(suite.determinism.notes),
        }
    data: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "sway_version": suite.sway_version,
        "spec_path": suite.spec_path,
        "base_model_id": suite.base_model_id,
        "adapter_id": suite.adapter_id,
        "started_at": _aware(suite.started_at).isoformat(),
        "finished_at": _aware(suite.finished_at).isoformat(),
        "wall_seconds": (_aware(suite.finished_at) - _aware(suite.started_at)).total_seconds(),
        "determinism": determinism,
        "backend_stats": suite.backend_stats,
        "timings": suite.timings,
        "versions": suite.versions,
        "null_stats": suite.null_stats,
        "noise_floor": suite.noise_floor,
        "health": [
            {"level": c.level, "code": c.code, "message": c.message, "fix": c.fix}
            for c in suite.health
        ],
        "score": {
            "overall": score.overall,
            "band": score.band,
            "components": score.components,
            "weights": score.weights,
            "findings": list(score.findings),
            "band_reason": score.band_reason,
        },
        "probes": [_probe_dict(result) for result in suite.probes],
    }
    if gate is not None:
        data["gate"] = _gate_dict(gate)
    cleaned = _plain(data)
    assert isinstance(cleaned, dict)
    return cleaned


def _probe_dict(result: ProbeResult) -> dict[str, Any]:
    return {
        "name": result.name,
        "kind": result.kind,
        "verdict": result.verdict.value,
        "score": result.score,
        "raw": result.raw,
        "z_score": result.z_score,
        "p_value": result.p_value,
        "p_adjusted": result.p_adjusted,
        "effect_ratio": result.effect_ratio,
        "base_value": result.base_value,
        "ft_value": result.ft_value,
        "ci_95": _ci(result.ci_95),
        "evidence": result.evidence,
        "message": result.message,
        "duration_s": result.duration_s,
        "category": result.category,
        "weight": result.weight,
        "direction": result.direction.value,
        "headline": result.headline,
        "measured": result.measured,
        "null": _null_dict(result.null),
        "calibration": _calibration_dict(result.calibration),
        "config": result.config,
        "overfit": (
            None
            if result.overfit is None
            else {"name": result.overfit.name, "message": result.overfit.message}
        ),
        "tokens": [
            {"label": t.label, "pieces": t.pieces, "values": t.values, "unit": t.unit}
            for t in result.tokens
        ],
        "generations": [
            {"prompt": g.prompt, "base": g.base, "finetuned": g.finetuned}
            for g in result.generations
        ],
    }


def _null_dict(null: NullSummary | None) -> dict[str, Any] | None:
    if null is None:
        return None
    return {
        "construction": null.construction,
        "method": null.method,
        "k": null.k,
        "samples": null.samples,
        "z_threshold": null.z_threshold,
        "log_scale": null.log_scale,
        "non_negative": null.non_negative,
        "statistic": null.statistic,
        "p_empirical": null.p_empirical,
        "degenerate": null.degenerate,
        "z_by_rank": null.z_by_rank,
    }


def _calibration_dict(cal: NullCalibration | None) -> dict[str, Any] | None:
    if cal is None:
        return None
    return {
        "by_rank": {
            rank: {name: stats.to_dict() for name, stats in group.items()}
            for rank, group in cal.by_rank.items()
        },
        "primary": cal.primary,
        "failures": cal.failures,
        "from_cache": cal.from_cache,
        "cache_file": cal.cache_file,
    }


def _gate_dict(gate: GateDecision) -> dict[str, Any]:
    return {
        "exit_code": gate.exit_code,
        "passed": gate.passed,
        "threshold": gate.threshold,
        "overall": gate.overall,
        "reasons": [
            {"code": r.code, "message": r.message, "probes": list(r.probes)} for r in gate.reasons
        ],
        "allowed_skips": list(gate.allowed_skips),
        "allowed_warns": list(gate.allowed_warns),
    }


def _ci(ci: tuple[float, float] | None) -> list[float] | None:
    # A half-known interval is no interval: write null rather than [null, hi].
    if ci is None or not all(math.isfinite(bound) for bound in ci):
        return None
    return [float(ci[0]), float(ci[1])]


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _plain(value: Any) -> Any:
    """Recursively turn ``value`` into JSON-safe data; non-finite floats become None."""
    if value is None or isinstance(value, bool | str | int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(key): _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        items = sorted(value, key=repr) if isinstance(value, set | frozenset) else value
        return [_plain(item) for item in items]
    if isinstance(value, datetime):
        return _aware(value).isoformat()
    tolist = getattr(value, "tolist", None)  # numpy arrays and scalars
    if callable(tolist):
        return _plain(tolist())
    return str(value)


def from_json(data: Mapping[str, Any]) -> tuple[SuiteResult, SwayScore]:
    """Rebuild a run from :func:`to_json_dict` output (or a parsed ``to_json`` file).

    Validation is :mod:`dlm_sway.report.json_read`'s: optional fields may be
    missing (older snapshots), anything present must be well formed, and every
    problem is a :class:`SpecValidationError` naming its JSON path.
    """
    suite, score, _ = read_run(data)
    return suite, score


def read_run(data: object) -> tuple[SuiteResult, SwayScore, GateDecision | None]:
    """Like :func:`from_json`, plus the gate decision a ``sway gate`` run recorded."""
    run = parse_run(data)
    determinism = None
    if run.determinism is not None:
        det = run.determinism
        determinism = DeterminismReport(class_=det.class_, seed=det.seed, notes=tuple(det.notes))
    suite = SuiteResult(
        spec_path=run.spec_path,
        started_at=run.started_at,
        finished_at=run.finished_at,
        base_model_id=run.base_model_id,
        adapter_id=run.adapter_id,
        sway_version=run.sway_version,
        probes=tuple(_probe(entry) for entry in run.probes),
        null_stats={kind: dict(stats) for kind, stats in run.null_stats.items()},
        determinism=determinism,
        backend_stats=dict(run.backend_stats),
        timings=dict(run.timings),
        versions=dict(run.versions),
        noise_floor=dict(run.noise_floor),
        health=tuple(HealthCheck(h.level, h.code, h.message, h.fix) for h in run.health),
    )
    body = run.score
    score = SwayScore(
        overall=body.overall,
        band=body.band if body.band is not None else band_for(body.overall),
        components=dict(body.components),
        weights=dict(body.weights),
        findings=tuple(body.findings),
        band_reason=body.band_reason,
    )
    return suite, score, gate_of(run)


def _probe(entry: ProbeIn) -> ProbeResult:
    return ProbeResult(
        name=entry.name,
        kind=entry.kind,
        verdict=entry.verdict,
        score=entry.score,
        raw=entry.raw,
        z_score=entry.z_score,
        p_value=entry.p_value,
        p_adjusted=entry.p_adjusted,
        effect_ratio=entry.effect_ratio,
        base_value=entry.base_value,
        ft_value=entry.ft_value,
        ci_95=entry.ci_95,
        evidence=dict(entry.evidence),
        message=entry.message,
        duration_s=entry.duration_s,
        category=entry.category,
        weight=entry.weight,
        direction=entry.direction,
        headline=entry.headline,
        measured=entry.measured,
        null=None if entry.null is None else _null(entry.null),
        calibration=None if entry.calibration is None else _calibration(entry.calibration),
        config=dict(entry.config),
        overfit=(
            None
            if entry.overfit is None
            else OverfitSignal(entry.overfit.name, entry.overfit.message)
        ),
        tokens=tuple(
            TokenTrace(t.label, tuple(t.pieces), tuple(t.values), t.unit) for t in entry.tokens
        ),
        generations=tuple(
            GeneratedSample(g.prompt, g.base, g.finetuned) for g in entry.generations
        ),
    )


def _null(entry: NullSummaryIn) -> NullSummary:
    return NullSummary(
        construction=entry.construction,
        method=entry.method,
        k=entry.k,
        samples=tuple(entry.samples),
        z_threshold=entry.z_threshold,
        log_scale=entry.log_scale,
        non_negative=entry.non_negative,
        statistic=entry.statistic,
        p_empirical=entry.p_empirical,
        degenerate=entry.degenerate,
        z_by_rank=dict(entry.z_by_rank),
    )


def _stats(entry: NullStatsIn) -> NullStats:
    return NullStats(
        mean=entry.mean,
        std=entry.std,
        n=entry.n,
        degenerate=entry.degenerate,
        samples=tuple(entry.samples),
        construction=entry.construction,
        method=entry.method,
    )


def _calibration(entry: NullCalibrationIn) -> NullCalibration:
    return NullCalibration(
        by_rank={
            rank: {name: _stats(stats) for name, stats in group.items()}
            for rank, group in entry.by_rank.items()
        },
        primary=entry.primary,
        failures=dict(entry.failures),
        from_cache=entry.from_cache,
        cache_file=entry.cache_file,
    )


__all__ = ["from_json", "read_run", "to_json", "to_json_dict"]
