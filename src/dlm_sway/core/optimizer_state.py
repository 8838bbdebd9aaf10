"""What a saved Adam state says about how far training got (torch only inside functions).

Adam keeps per parameter ``m`` (EMA of gradients, β1) and ``v`` (EMA of squared
gradients, β2). After bias correction, for gradients ``g = μ + noise``,
``E[m̂²] ≈ μ² + σ²·Σw²`` and ``v̂ ≈ μ² + σ²``, where ``Σw²`` (the EMA's weights
squared, known from β1 and the step count) is what pure noise leaves in ``m̂²``.
So per tensor ::

    coherence = (Σm̂² / Σv̂ − Σw²) / (1 − Σw²)        clipped to [0, 1]

is the share of gradient energy that is a consistent push. Near 0: the gradient
is batch noise (the run reached the floor it can reach); near 1: every step
still pushed the same way, so more steps would have moved the adapter further.
``v̂`` averages over ~1/(1−β2) steps, longer than ``m̂``: when gradients shrank
during training, coherence reads low, which errs toward "converged" (never a
false alarm). A tensor whose ``v`` is all zero never received a gradient.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dlm_sway.core.errors import SwayError


class OptimizerStateError(SwayError):
    """An optimizer state file exists but cannot be read (the message names it)."""


@dataclass(frozen=True, slots=True)
class TensorMoments:
    index: int
    shape: tuple[int, ...]
    step: int
    coherence: float | None  # None: no gradient ever, or too few steps to tell
    no_gradient: bool
    non_finite: bool


@dataclass(frozen=True, slots=True)
class OptimizerSummary:
    source: str
    steps: int
    tensors: tuple[TensorMoments, ...]
    has_moments: bool


def noise_share(beta1: float, steps: int) -> float:
    """Σw²: what pure noise leaves in m̂²/v̂ after ``steps`` bias-corrected EMA steps."""
    if steps < 1:
        return 1.0
    num = (1.0 - beta1) ** 2 * (1.0 - beta1 ** (2 * steps))
    den = (1.0 - beta1**2) * (1.0 - beta1**steps) ** 2
    return num / den


def coherence(m2: float, v: float, *, beta1: float, beta2: float, steps: int) -> float | None:
    """Share of gradient energy that is a consistent direction (module docstring)."""
    if v <= 0.0 or steps < 2:
        return None
    m2_hat = m2 / (1.0 - beta1**steps) ** 2
    v_hat = v / (1.0 - beta2**steps)
    base = noise_share(beta1, steps)
    if base >= 1.0:
        return None
    return max(0.0, min(1.0, (m2_hat / v_hat - base) / (1.0 - base)))


def _unwrap(state: Any, path: Path) -> tuple[dict[Any, Any], list[Any]]:
    """``optimizer.state_dict()`` as HF saves it, or inside a ``.dlm`` training_state.pt."""
    if isinstance(state, dict) and "optimizer_state_dict" in state:
        state = state["optimizer_state_dict"]
    if not isinstance(state, dict) or not isinstance(state.get("state"), dict):
        raise OptimizerStateError(
            f"{path}: not an optimizer state (expected optimizer.state_dict() with 'state' and "
            "'param_groups', as Trainer saves in optimizer.pt)"
        )
    groups = state.get("param_groups")
    return state["state"], groups if isinstance(groups, list) else []


def read_optimizer_state(path: str | Path) -> OptimizerSummary:
    """Per-tensor moments of an ``optimizer.pt`` / ``training_state.pt`` (weights_only)."""
    import torch

    path = Path(path)
    try:
        loaded = torch.load(str(path), map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise OptimizerStateError(f"{path}: optimizer state not found") from None
    except Exception as exc:  # noqa: BLE001 — any unpickling failure means an unusable file
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise OptimizerStateError(
            f"{path}: cannot load the optimizer state ({type(exc).__name__}: {first}); it is "
            "truncated, not a torch file saved by the trainer, or holds objects other than "
            "tensors and numbers (it is read with weights_only=True)"
        ) from None
    state, groups = _unwrap(loaded, path)
    betas: dict[Any, tuple[float, float]] = {}
    order: list[Any] = []
    for group in groups:
        if not isinstance(group, dict):
            continue
        b = group.get("betas", (0.9, 0.999))
        pair = (
            (float(b[0]), float(b[1]))
            if isinstance(b, list | tuple) and len(b) == 2
            else (0.9, 0.999)
        )
        for pid in group.get("params", []):
            betas[pid] = pair
            order.append(pid)
    order += [pid for pid in state if pid not in betas]
    tensors: list[TensorMoments] = []
    has_moments = False
    for i, pid in enumerate(order):
        entry = state.get(pid)
        if not isinstance(entry, dict):
            continue
        m, v = entry.get("exp_avg"), entry.get("exp_avg_sq")
        if not isinstance(m, torch.Tensor) or not isinstance(v, torch.Tensor):
            continue
        has_moments = True
        raw_step = entry.get("step", 0)
        step = int(raw_step.item() if isinstance(raw_step, torch.Tensor) else raw_step)
        m64, v64 = m.double(), v.double()
        non_finite = not bool(torch.isfinite(m64).all() and torch.isfinite(v64).all())
        v_sum = float(v64.sum()) if not non_finite else math.nan
        b1, b2 = betas.get(pid, (0.9, 0.999))
        coh = None
        if not non_finite:
            coh = coherence(float((m64**2).sum()), v_sum, beta1=b1, beta2=b2, steps=step)
        tensors.append(
            TensorMoments(
                index=i,
                shape=tuple(int(d) for d in v.shape),
                step=step,
                coherence=coh,
                no_gradient=not non_finite and v_sum == 0.0,
                non_finite=non_finite,
            )
        )
    steps = max((t.step for t in tensors), default=0)
    return OptimizerSummary(str(path), steps, tuple(tensors), has_moments)


__all__ = [
    "OptimizerStateError",
    "OptimizerSummary",
    "TensorMoments",
    "coherence",
    "noise_share",
    "read_optimizer_state",
]
