"""``null_adapter``: sample every following numeric probe's metric under random adapters.

For each calibrated suite entry, the entry's calibration spec is run K times
through :class:`NullCalibrationBackendProxy` (one seed each), per rank
multiplier. The finite raws become :class:`~dlm_sway.core.stats.NullStats`
that the runner hands to every later probe. This probe calibrates; it never
judges the adapter, so it PASSes whenever calibration ran.
"""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import Field, field_validator

from dlm_sway import __version__
from dlm_sway.core.calibration import Method
from dlm_sway.core.errors import SwayError
from dlm_sway.core.result import ProbeResult, Verdict
from dlm_sway.core.scoring import NullCalibratedBackend, NullConstruction
from dlm_sway.core.stats import NullStats
from dlm_sway.probes import _null_cache
from dlm_sway.probes._null_proxy import NullCalibrationBackendProxy
from dlm_sway.probes.base import (
    Probe,
    ProbeSpec,
    RunContext,
    bare_result,
    get_probe_class,
)


def rank_key(multiplier: float) -> str:
    return f"rank_{multiplier:.2f}"


#: Default number of null adapters. Chosen from the quality study in docs/statistics.md:
#: with the t-prediction test, K=10 keeps the false-positive rate at nominal and gives
#: a trained adapter enough degrees of freedom to clear z ≥ 3.
DEFAULT_RUNS = 10


class NullAdapterSpec(ProbeSpec):
    kind: Literal["null_adapter"] = "null_adapter"
    runs: int = Field(default=DEFAULT_RUNS, ge=1, le=200)
    #: How null weights are drawn (see :data:`dlm_sway.core.scoring.NullConstruction`).
    null: NullConstruction = "norm_matched"
    #: ``t_prediction`` (small-sample correct) or ``reference_z`` ((x−mean)/pstdev).
    calibration: Method = "t_prediction"
    init_scale: float = Field(default=0.02, gt=0.0)
    seed_base: int = 1000
    calibrate_kinds: list[str] = Field(default_factory=list)
    cache: bool = True
    rank_multipliers: list[float] = Field(default_factory=lambda: [1.0])

    @field_validator("rank_multipliers")
    @classmethod
    def _positive(cls, value: list[float]) -> list[float]:
        if not value:
            return [1.0]
        bad = [m for m in value if not math.isfinite(m) or m <= 0]
        if bad:
            raise ValueError(f"rank multipliers must be finite and > 0, got {bad}")
        return sorted(set(value))

    @field_validator("calibrate_kinds")
    @classmethod
    def _known(cls, value: list[str]) -> list[str]:
        from dlm_sway.probes.base import registry

        unknown = [k for k in value if k not in registry()]
        if unknown:
            raise ValueError(
                f"unknown probe kind(s) {unknown}; registered: {', '.join(sorted(registry()))}"
            )
        return value


class NullAdapterProbe(Probe):
    """Calibrate the following probes against random adapters of the same structure."""

    kind = "null_adapter"
    spec_cls = NullAdapterSpec
    category = "baseline"

    def run(self, spec: ProbeSpec, ctx: RunContext) -> ProbeResult:
        assert isinstance(spec, NullAdapterSpec)
        backend = ctx.require_backend
        if not isinstance(backend, NullCalibratedBackend):
            return bare_result(
                spec,
                Verdict.SKIP,
                "backend has no null views: later probes use fixed thresholds",
            )

        targets: list[tuple[Probe, ProbeSpec, ProbeSpec]] = []
        skipped: list[dict[str, str]] = []
        wanted = set(spec.calibrate_kinds)
        for probe, target in ctx.downstream:
            if target.kind == self.kind or not target.enabled:
                continue
            if wanted and target.kind not in wanted:
                continue
            try:
                calib = type(probe).calibrate_spec(ctx, target)
            except Exception as exc:  # noqa: BLE001 — a plugin's bug must not sink calibration
                reason = f"calibrate_spec raised {type(exc).__name__}: {exc}"
                skipped.append({"kind": target.kind, "name": target.name, "reason": reason})
                continue
            if calib is None:
                skipped.append(
                    {"kind": target.kind, "name": target.name, "reason": "probe opted out"}
                )
                continue
            targets.append((probe, target, calib))

        base_evidence: dict[str, Any] = {
            "runs": spec.runs,
            "null": spec.null,
            "calibration": spec.calibration,
            "init_scale": spec.init_scale,
            "seed_base": spec.seed_base,
            "rank_multipliers": spec.rank_multipliers,
            "skipped_kinds": skipped,
            "weight": spec.weight,
        }
        if not targets:
            return ProbeResult(
                name=spec.name,
                kind=self.kind,
                verdict=Verdict.WARN,
                message=(
                    "nothing to calibrate: put null_adapter first and numeric probes after it"
                    + (f" ({len(skipped)} opted out)" if skipped else "")
                ),
                evidence={**base_evidence, "null_stats": {}, "null_stats_by_rank": {}},
            )

        key = None
        identity = getattr(backend, "cache_identity", None)
        if spec.cache and callable(identity):
            params = {
                "runs": spec.runs,
                "null": spec.null,
                "calibration": spec.calibration,
                "init_scale": spec.init_scale,
                "seed_base": spec.seed_base,
                "top_k": ctx.top_k,
                "rank_multipliers": spec.rank_multipliers,
                "specs": {t.name: c.model_dump(mode="json") for _, t, c in targets},
                "sway_version": __version__,
            }
            key = _null_cache.cache_key(str(identity()), params)
            hit = _null_cache.load(key)
            if hit is not None and _valid_cache(hit):
                return self._result(spec, base_evidence, hit["by_rank"], {}, from_cache=True)

        by_rank: dict[str, dict[str, dict[str, Any]]] = {}
        errors: dict[str, list[str]] = {}
        total = spec.runs * len(spec.rank_multipliers)
        step = 0
        for mult in spec.rank_multipliers:
            samples: dict[str, list[float]] = {t.name: [] for _, t, _ in targets}
            for i in range(spec.runs):
                seed = spec.seed_base + i
                ctx.progress(f"{spec.name}: null {i + 1}/{spec.runs} @ {mult:g}x", step, total)
                proxy = NullCalibrationBackendProxy(
                    backend,
                    seed=seed,
                    init_scale=spec.init_scale,
                    rank_scale=mult,
                    construction=spec.null,
                )
                null_ctx = ctx.evolve(
                    backend=proxy,
                    seed=seed,
                    null_stats={},
                    null_stats_by_rank={},
                    downstream=(),
                    calibrating=True,
                )
                for _probe, target, calib in targets:
                    raw, err = _sample(get_probe_class(calib.kind)(), calib, null_ctx)
                    if raw is not None:
                        samples[target.name].append(raw)
                    elif err:
                        errors.setdefault(target.name, []).append(f"seed {seed}: {err}")
                step += 1
                ctx.progress(f"{spec.name}: null {i + 1}/{spec.runs} @ {mult:g}x", step, total)
            group: dict[str, dict[str, Any]] = {}
            for name, xs in samples.items():
                if xs:
                    group[name] = NullStats.from_samples(
                        xs, construction=spec.null, method=spec.calibration
                    ).to_dict()
            by_rank[rank_key(mult)] = group
        if key is not None and all(by_rank.values()):
            # Never cache a calibration that failed: the next run should retry and
            # show the reasons again.
            _null_cache.save(key, {"by_rank": by_rank, "sway_version": __version__})
        return self._result(spec, base_evidence, by_rank, errors, from_cache=False)

    def _result(
        self,
        spec: NullAdapterSpec,
        evidence: dict[str, Any],
        by_rank: dict[str, dict[str, dict[str, Any]]],
        errors: dict[str, list[str]],
        *,
        from_cache: bool,
    ) -> ProbeResult:
        primary_key = rank_key(1.0) if rank_key(1.0) in by_rank else next(iter(by_rank))
        primary = by_rank[primary_key]
        skipped = list(evidence["skipped_kinds"])
        for name, errs in errors.items():
            if name not in primary:
                skipped.append({"kind": "", "name": name, "reason": f"no finite raw: {errs[0]}"})
        evidence = {
            **evidence,
            "skipped_kinds": skipped,
            "null_stats": primary,
            "null_stats_by_rank": by_rank if len(by_rank) > 1 else {},
            "calibrated": sorted(primary),
            "errors": {k: v[:3] for k, v in errors.items()},
            "from_cache": from_cache,
        }
        ranks = ""
        if len(spec.rank_multipliers) > 1:
            ranks = " × ranks [" + ", ".join(f"{m:g}x" for m in spec.rank_multipliers) + "]"
            if primary_key != rank_key(1.0):
                ranks += f"; verdicts use the {primary_key.removeprefix('rank_')}x null"
        msg = (
            f"calibrated {len(primary)} probe(s){ranks} against {spec.runs} "
            f"{spec.null.replace('_', '-')} null adapter(s)"
        )
        if skipped:
            msg += f" ({len(skipped)} not calibrated)"
        if from_cache:
            msg += " (loaded from cache)"
        if not primary:
            first = next((s["reason"] for s in skipped), "no finite null samples")
            msg = f"calibration failed for every probe; they use fixed thresholds ({first})"
        return ProbeResult(
            name=spec.name,
            kind=self.kind,
            verdict=Verdict.PASS if primary else Verdict.WARN,
            score=1.0 if primary else None,
            message=msg,
            evidence=evidence,
        )


def _sample(probe: Probe, calib: ProbeSpec, ctx: RunContext) -> tuple[float | None, str]:
    """One null draw of a probe's raw. Probe failures are recorded, not raised."""
    try:
        result = probe.run(calib, ctx)
    except SwayError as exc:
        return None, str(exc)
    except Exception as exc:  # noqa: BLE001 — recorded per seed, reported in evidence
        return None, f"{type(exc).__name__}: {exc}"
    if result.raw is None or not math.isfinite(result.raw):
        return None, result.message or f"verdict {result.verdict.value} with no raw"
    return float(result.raw), ""


def _valid_cache(payload: dict[str, Any]) -> bool:
    by_rank = payload.get("by_rank")
    if not isinstance(by_rank, dict) or not by_rank:
        return False
    try:
        for group in by_rank.values():
            for stats in group.values():
                NullStats.from_mapping(stats)
    except (KeyError, TypeError, ValueError, AttributeError):
        return False
    return True


__all__ = ["NullAdapterProbe", "NullAdapterSpec", "rank_key"]
