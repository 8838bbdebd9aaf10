"""Shared calibration lookup for numeric probes: z, effect ratio, rank profile."""

from __future__ import annotations

from dataclasses import dataclass

from dlm_sway.core.stats import NullStats, effect_ratio, score_from_z, z_score
from dlm_sway.probes.base import ProbeSpec, RunContext


def no_calibration_note(kind: str) -> str:
    return f"(no calibration for {kind}: fixed thresholds)"


@dataclass(frozen=True, slots=True)
class Calibration:
    """How one raw value stands against its null distribution."""

    stats: NullStats | None
    z: float | None
    effect_ratio: float | None
    z_by_rank: dict[str, float]

    @property
    def usable(self) -> bool:
        return self.z is not None

    def score(self) -> float | None:
        return None if self.z is None else score_from_z(self.z)


def null_for(ctx: RunContext, spec: ProbeSpec) -> NullStats | None:
    """Stats calibrated for this very entry. Keyed by name: two entries of one kind
    with different prompts have different nulls."""
    return ctx.null_stats.get(spec.name)


def calibrate(raw: float | None, ctx: RunContext, spec: ProbeSpec, *, sign: int = 1) -> Calibration:
    stats = null_for(ctx, spec)
    by_rank: dict[str, float] = {}
    for rank_key, group in ctx.null_stats_by_rank.items():
        rs = group.get(spec.name)
        z = z_score(raw, rs, sign=sign)
        if z is not None:
            by_rank[rank_key] = z
    return Calibration(
        stats=stats,
        z=z_score(raw, stats, sign=sign),
        effect_ratio=effect_ratio(raw, stats),
        z_by_rank=by_rank,
    )


__all__ = ["Calibration", "calibrate", "no_calibration_note", "null_for"]
