"""Null statistics, bootstrap confidence intervals over prompts, and R².

Comparing a raw value with its null lives in :mod:`dlm_sway.core.calibration`; the
verdict and its score in :mod:`dlm_sway.core.judge`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

#: Below this null std a z-score would divide by noise; the probe falls back.
MIN_STD = 1e-6


@dataclass(frozen=True, slots=True)
class NullStats:
    """Distribution of one probe's ``raw`` over K null adapters."""

    mean: float
    std: float
    n: int
    degenerate: bool
    samples: tuple[float, ...] = ()
    #: How the nulls were drawn and how a raw is compared with them.
    construction: str = "init_scale"
    method: str = "t_prediction"

    @classmethod
    def from_samples(
        cls,
        samples: Sequence[float],
        *,
        construction: str = "init_scale",
        method: str = "t_prediction",
    ) -> NullStats:
        """Population std; degenerate when K ≤ 1 or every null gave the same value."""
        xs = [float(x) for x in samples if math.isfinite(float(x))]
        if not xs:
            raise ValueError("no finite null samples")
        arr = np.asarray(xs, dtype=np.float64)
        std = float(arr.std()) if arr.size >= 2 else 0.0
        return cls(
            mean=float(arr.mean()),
            std=max(std, MIN_STD),
            n=int(arr.size),
            degenerate=arr.size <= 1 or float(np.ptp(arr)) == 0.0,
            samples=tuple(xs),
            construction=construction,
            method=method,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "mean": self.mean,
            "std": self.std,
            "n": self.n,
            "degenerate": self.degenerate,
            "samples": list(self.samples),
            "construction": self.construction,
            "method": self.method,
        }

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> NullStats:
        return cls(
            mean=float(data["mean"]),
            std=float(data["std"]),
            n=int(data["n"]),
            degenerate=bool(data.get("degenerate", False)),
            samples=tuple(float(x) for x in data.get("samples", ())),
            construction=str(data.get("construction", "init_scale")),
            method=str(data.get("method", "t_prediction")),
        )

    @property
    def median(self) -> float | None:
        return float(np.median(self.samples)) if self.samples else None


def bootstrap_ci(
    samples: Sequence[float],
    *,
    n_bootstrap: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> tuple[float, float] | None:
    """Percentile bootstrap CI of the mean over units (prompts): resampling whole
    prompts keeps each prompt's paired base/ft measurement together.

    None for fewer than 2 units (one prompt says nothing about spread) or
    non-finite input.
    """
    arr = np.asarray(samples, dtype=np.float64)
    if arr.size < 2 or not np.all(np.isfinite(arr)) or not 0.0 < confidence < 1.0:
        return None
    if np.all(arr == arr[0]):
        return (float(arr[0]), float(arr[0]))
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, arr.size, size=(n_bootstrap, arr.size))
    means = arr[idx].mean(axis=1)
    alpha = (1.0 - confidence) / 2.0
    lo, hi = np.quantile(means, [alpha, 1.0 - alpha])
    return (float(lo), float(hi))


def r_squared(xs: Sequence[float], ys: Sequence[float]) -> float:
    """R² of an OLS line; 0 with <2 points or constant x, 1 when y is constant."""
    x = np.asarray(xs, dtype=np.float64)
    y = np.asarray(ys, dtype=np.float64)
    if x.size < 2 or float(np.var(x)) == 0.0:
        return 0.0
    ss_tot = float(np.sum((y - y.mean()) ** 2))
    if ss_tot == 0.0:
        return 1.0
    slope, intercept = np.polyfit(x, y, 1)
    ss_res = float(np.sum((y - (slope * x + intercept)) ** 2))
    return max(0.0, 1.0 - ss_res / ss_tot)


__all__ = [
    "MIN_STD",
    "NullStats",
    "bootstrap_ci",
    "r_squared",
]
