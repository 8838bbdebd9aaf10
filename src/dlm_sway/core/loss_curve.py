"""Findings on a logged loss curve: non-finite values, no learning, divergence,
spikes, over-fitting and late plateaus. Pure numpy; thresholds come from the caller.

Definitions (``n`` finite train points sorted by step):

* **smoothed**: centred running median over ``w = max(3, n // 10)`` points (odd),
  robust to single noisy batches; ``start`` / ``end`` are medians of the first /
  last ``max(1, n // 10)`` raw points, ``best`` the smoothed minimum.
* **no learning**: ``start − best`` ≤ ``min_improvement · |start|``.
* **divergence**: the run gave back more than ``max_rebound`` of its improvement,
  ``(end − best) / (start − best)``; above 1 it ended worse than it began.
* **spike**: an upward step ``d_i = y_{i+1} − y_i`` whose robust z against the
  steps around it (median and 1.4826·MAD of ``d`` within ±max(5, n // 20),
  excluding ``i``) exceeds ``spike_z``. A local scale, because early steps of a
  decaying curve are much larger than late ones; robust, because one spike must
  not hide another.
* **over-fit**: the last eval loss sits more than ``max_eval_rise`` (relative)
  above the best eval loss while train loss kept falling over the same steps.
* **plateau** (a note, never a failure): 95% of the improvement was reached by
  the first ``1 − plateau_frac`` of the steps.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np

Points = tuple[tuple[int, float], ...]
FindingKind = Literal[
    "non_finite", "too_short", "no_learning", "divergence", "spike", "overfit", "plateau"
]


@dataclass(frozen=True, slots=True)
class Finding:
    kind: FindingKind
    text: str
    #: A failure of the run (True) or a note that does not change the verdict (False).
    fails: bool
    step: int | None = None


@dataclass(frozen=True, slots=True)
class Thresholds:
    min_points: int = 5
    min_improvement: float = 0.02
    max_rebound: float = 0.5
    spike_z: float = 6.0
    max_spikes: int = 0
    max_eval_rise: float = 0.05
    plateau_frac: float = 0.5


@dataclass(frozen=True, slots=True)
class CurveReport:
    findings: tuple[Finding, ...]
    n_points: int
    start: float | None = None
    end: float | None = None
    best: float | None = None
    best_step: int | None = None
    spikes: tuple[int, ...] = ()

    @property
    def ratio(self) -> float | None:
        """end / start: how far the loss came down (lower is better)."""
        if self.start is None or self.end is None or self.start == 0.0:
            return None
        return self.end / self.start


def _running_median(y: np.ndarray, width: int) -> np.ndarray:
    half = width // 2
    return np.array([np.median(y[max(0, i - half) : i + half + 1]) for i in range(len(y))])


def _non_finite(points: Points, what: str) -> list[Finding]:
    bad = [s for s, v in points if not math.isfinite(v)]
    if not bad:
        return []
    return [
        Finding(
            "non_finite",
            f"{len(bad)} non-finite {what} value(s) (NaN/inf), first at step {bad[0]}",
            True,
            bad[0],
        )
    ]


def spike_steps(steps: np.ndarray, y: np.ndarray, spike_z: float) -> list[int]:
    """Steps where the loss jumped up far beyond the local step-to-step noise."""
    d = np.diff(y)
    if len(d) < 3:
        return []
    radius = max(5, len(d) // 20)
    out: list[int] = []
    for i in (int(j) for j in np.flatnonzero(d > 0)):
        lo, hi = max(0, i - radius), min(len(d), i + radius + 1)
        local = np.delete(d[lo:hi], i - lo)
        center = float(np.median(local))
        scale = 1.4826 * float(np.median(np.abs(local - center)))
        if scale <= 0.0:
            scale = float(np.mean(np.abs(local - center)))
        jump = float(d[i]) - center
        if (scale > 0.0 and jump / scale > spike_z) or (scale == 0.0 and jump > 0.0):
            out.append(int(steps[i + 1]))
    return out


def analyse(train: Points, evals: Points, t: Thresholds) -> CurveReport:
    """Every finding on one run's curves (see the module docstring for definitions)."""
    findings = _non_finite(train, "train loss") + _non_finite(evals, "eval loss")
    pts = [(s, v) for s, v in train if math.isfinite(v)]
    n = len(pts)
    if n < t.min_points:
        findings.append(
            Finding(
                "too_short",
                f"only {n} finite train loss value(s) logged, fewer than min_points "
                f"{t.min_points} needed to judge the curve's trend",
                False,
            )
        )
        return CurveReport(tuple(findings), n)
    steps = np.array([s for s, _ in pts])
    y = np.array([v for _, v in pts], dtype=np.float64)
    k = max(1, n // 10)
    width = max(3, n // 10) | 1
    smooth = _running_median(y, width)
    start, end = float(np.median(y[:k])), float(np.median(y[-k:]))
    ib = int(np.argmin(smooth))
    best, best_step = float(smooth[ib]), int(steps[ib])
    drop = start - best
    if drop <= t.min_improvement * abs(start):
        findings.append(
            Finding(
                "no_learning",
                f"the loss never fell more than {t.min_improvement:.0%} below its start "
                f"({start:.4g} → best {best:.4g}; min_improvement {t.min_improvement:g})",
                True,
            )
        )
    else:
        rebound = (end - best) / drop
        if rebound > t.max_rebound:
            worse = ", ending above where it started" if rebound > 1 else ""
            findings.append(
                Finding(
                    "divergence",
                    f"the loss rose from its best {best:.4g} (step {best_step}) to {end:.4g}, "
                    f"giving back {rebound:.0%} of its improvement{worse} "
                    f"(max_rebound {t.max_rebound:g})",
                    True,
                    best_step,
                )
            )
        reached = int(np.flatnonzero(smooth <= best + 0.05 * drop)[0])
        tail = (n - 1 - reached) / (n - 1)
        if tail > t.plateau_frac and rebound <= t.max_rebound:
            findings.append(
                Finding(
                    "plateau",
                    f"95% of the improvement came by step {int(steps[reached])}; the last "
                    f"{tail:.0%} of the logged steps added little (plateau_frac "
                    f"{t.plateau_frac:g}): training could have stopped earlier",
                    False,
                    int(steps[reached]),
                )
            )
    spikes = spike_steps(steps, y, t.spike_z)
    if len(spikes) > t.max_spikes:
        shown = ", ".join(str(s) for s in spikes[:5]) + (" …" if len(spikes) > 5 else "")
        findings.append(
            Finding(
                "spike",
                f"{len(spikes)} loss spike(s) (robust z > {t.spike_z:g} against the steps "
                f"around them) at step {shown} (max_spikes {t.max_spikes})",
                True,
                spikes[0],
            )
        )
    findings.extend(_overfit(steps, smooth, evals, t))
    return CurveReport(tuple(findings), n, start, end, best, best_step, tuple(spikes))


def _overfit(steps: np.ndarray, smooth: np.ndarray, evals: Points, t: Thresholds) -> list[Finding]:
    ev = [(s, v) for s, v in evals if math.isfinite(v)]
    if len(ev) < 3:
        return []
    i_best = min(range(len(ev)), key=lambda i: ev[i][1])
    (s_best, e_best), (s_last, e_last) = ev[i_best], ev[-1]
    if e_best <= 0.0 or s_last <= s_best:
        return []
    rise = (e_last - e_best) / e_best
    train_then = float(np.interp(s_best, steps, smooth))
    train_now = float(np.interp(s_last, steps, smooth))
    if rise > t.max_eval_rise and train_now < train_then:
        return [
            Finding(
                "overfit",
                f"eval loss rose {rise:.0%} from its best {e_best:.4g} (step {s_best}) to "
                f"{e_last:.4g} (step {s_last}) while train loss fell {train_then:.4g} → "
                f"{train_now:.4g} (max_eval_rise {t.max_eval_rise:g}): over-fitting",
                True,
                s_best,
            )
        ]
    return []


__all__ = ["CurveReport", "Finding", "Thresholds", "analyse", "spike_steps"]
