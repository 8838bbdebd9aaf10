"""Read and temporarily rewrite the LoRA weights of a loaded PEFT model.

The scaled and null views change the live module in place and must restore it
bit-exactly, so everything here works by (clone originals → mutate → copy
back). Norms are computed from the r×r Gram matrices so no out×in delta is
ever materialised.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from typing import Any, Protocol

import torch
from peft.tuners.lora import LoraLayer

_PREFIX = "base_model.model."


@dataclass(frozen=True)
class LoraSlot:
    """One adapter's A/B pair inside one LoRA-wrapped module."""

    name: str
    layer: LoraLayer
    adapter: str
    a: torch.Tensor
    b: torch.Tensor

    @property
    def scaling(self) -> float:
        return float(self.layer.scaling[self.adapter])


def iter_lora_slots(model: torch.nn.Module) -> Iterator[LoraSlot]:
    """Every (module, adapter) A/B pair in a stable order (module registration order)."""
    for name, module in model.named_modules():
        if not isinstance(module, LoraLayer):
            continue
        short = name.removeprefix(_PREFIX)
        for adapter in sorted(module.lora_A.keys()):
            yield LoraSlot(
                short,
                module,
                adapter,
                _weight(module.lora_A[adapter]),
                _weight(module.lora_B[adapter]),
            )
        for adapter in sorted(module.lora_embedding_A.keys()):
            yield LoraSlot(
                short,
                module,
                adapter,
                module.lora_embedding_A[adapter],
                module.lora_embedding_B[adapter],
            )


def _weight(layer: torch.nn.Module) -> torch.Tensor:
    weight = layer.weight
    if not isinstance(weight, torch.Tensor):
        raise TypeError(f"LoRA sub-layer {type(layer).__name__} has no weight tensor")
    return weight


def uses_dora(model: torch.nn.Module) -> bool:
    """DoRA rescales by a weight norm, so its views are weight-space views (hf_dora)."""
    return any(
        isinstance(m, LoraLayer) and len(m.lora_magnitude_vector) > 0 for m in model.modules()
    )


def is_dora(slot: LoraSlot) -> bool:
    """True for a slot whose module applies DoRA (its views are built in weight space)."""
    return slot.adapter in slot.layer.lora_magnitude_vector


def plain_lora_slots(model: torch.nn.Module) -> list[LoraSlot]:
    """The slots whose change is the additive LoRA term scaling·B·A (not DoRA)."""
    return [s for s in iter_lora_slots(model) if not is_dora(s)]


def _as_matrices(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Flatten to A (r × fan_in) and B (fan_out × r): covers Linear, Embedding and Conv LoRA."""
    a64 = a.detach().to(device="cpu", dtype=torch.float64)
    b64 = b.detach().to(device="cpu", dtype=torch.float64)
    return a64.reshape(a64.shape[0], -1), b64.reshape(b64.shape[0], -1)


def delta_norm(a: torch.Tensor, b: torch.Tensor, scaling: float) -> float:
    """‖scaling·B·A‖_F via trace((BᵀB)(AAᵀ)), exact in float64."""
    a2, b2 = _as_matrices(a, b)
    gram = (b2.T @ b2) * (a2 @ a2.T)
    return abs(scaling) * math.sqrt(max(float(gram.sum()), 0.0))


def adapter_norms(model: torch.nn.Module) -> dict[str, float]:
    """Per plain LoRA module, the Frobenius norm of the weight change the adapter applies.

    DoRA modules and ``modules_to_save`` tensors are weight-space slots: their norms
    come from :func:`dlm_sway.backends.hf_weights.slot_norms`.
    """
    norms: dict[str, float] = {}
    with torch.no_grad():
        for slot in plain_lora_slots(model):
            key = slot.name if slot.adapter == "default" else f"{slot.name}[{slot.adapter}]"
            norms[key] = delta_norm(slot.a, slot.b, slot.scaling)
    return norms


def adapter_summary(model: torch.nn.Module) -> dict[str, Any]:
    slots = list(iter_lora_slots(model))
    ranks = sorted({int(s.layer.r[s.adapter]) for s in slots})
    alphas = sorted({float(s.layer.lora_alpha[s.adapter]) for s in slots})
    return {
        "num_modules": len(slots),
        "ranks": ranks,
        "alphas": alphas,
        "target_modules": sorted({s.name.rsplit(".", 1)[-1] for s in slots}),
        "total_params": sum(s.a.numel() + s.b.numel() for s in slots),
    }


@contextmanager
def scaled_lora(model: torch.nn.Module, lam: float) -> Iterator[None]:
    """Multiply every LoRA ``scaling`` by λ; the original floats are put back on exit."""
    saved: list[tuple[LoraLayer, str, float]] = []
    try:
        for module in model.modules():
            if isinstance(module, LoraLayer):
                for adapter, value in list(module.scaling.items()):
                    saved.append((module, adapter, value))
                    module.scaling[adapter] = value * lam
        yield
    finally:
        for layer, adapter, value in saved:
            layer.scaling[adapter] = value


class NullWeights(Protocol):
    """Produce replacement (A, B) for one LoRA slot, in float32 on CPU.

    This is the plug-in point for null constructions: the default draws
    fixed-std Gaussian noise; a norm-matched variant can rescale its draw so
    ‖scaling·B·A‖_F hits the trained one. When called, ``slot.a``/``slot.b``
    still hold the trained weights (each slot is swapped only after its call).
    Draw only from ``generator`` so a seed fixes the whole null adapter.
    """

    def __call__(
        self, slot: LoraSlot, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]: ...


def gaussian_null_weights(
    slot: LoraSlot, generator: torch.Generator, *, std: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Standard normal noise times ``std`` for A then B, same shapes as the originals."""
    a = torch.randn(tuple(slot.a.shape), generator=generator, dtype=torch.float32) * std
    b = torch.randn(tuple(slot.b.shape), generator=generator, dtype=torch.float32) * std
    return a, b


def gaussian_null(init_scale: float, rank_scale: float) -> NullWeights:
    """The reference null: std = init_scale·√rank_scale (rank_scale mimics another rank)."""
    _check_rank_scale(rank_scale)
    if not math.isfinite(init_scale) or init_scale < 0:
        raise ValueError(f"init_scale must be a finite number >= 0, got {init_scale!r}")
    return partial(gaussian_null_weights, std=init_scale * math.sqrt(rank_scale))


def _check_rank_scale(rank_scale: float) -> None:
    if not math.isfinite(rank_scale) or rank_scale <= 0:
        raise ValueError(f"rank_scale must be a finite number > 0, got {rank_scale!r}")


def norm_matched_weights(
    slot: LoraSlot, generator: torch.Generator, *, rank_scale: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random A, B rescaled so ‖scaling·B·A‖_F equals the trained module's (× √rank_scale).

    The null then asks "is this adapter's effect beyond a random change of the same
    size?" instead of comparing against arbitrary fixed-std noise.
    """
    a = torch.randn(tuple(slot.a.shape), generator=generator, dtype=torch.float32)
    b = torch.randn(tuple(slot.b.shape), generator=generator, dtype=torch.float32)
    target = delta_norm(slot.a, slot.b, slot.scaling) * math.sqrt(rank_scale)
    current = delta_norm(a, b, slot.scaling)
    if target == 0.0 or current == 0.0:
        return a * 0.0, b * 0.0
    c = math.sqrt(target / current)
    return a * c, b * c


def permuted_weights(
    slot: LoraSlot, generator: torch.Generator, *, rank_scale: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """The trained B rows and A columns shuffled: same spectrum and norm, random placement."""
    a = slot.a.detach().to(device="cpu", dtype=torch.float32)
    b = slot.b.detach().to(device="cpu", dtype=torch.float32)
    a2 = a.reshape(a.shape[0], -1)
    b2 = b.reshape(b.shape[0], -1)
    perm_in = torch.randperm(a2.shape[1], generator=generator)
    perm_out = torch.randperm(b2.shape[0], generator=generator)
    c = rank_scale**0.25
    return (a2[:, perm_in] * c).reshape(a.shape), (b2[perm_out, :] * c).reshape(b.shape)


NULL_CONSTRUCTIONS = ("norm_matched", "init_scale", "permuted")


def null_weights(construction: str, *, init_scale: float, rank_scale: float) -> NullWeights:
    """The per-module weight construction for a named null."""
    _check_rank_scale(rank_scale)
    if construction == "init_scale":
        return gaussian_null(init_scale, rank_scale)
    if construction == "norm_matched":
        return partial(norm_matched_weights, rank_scale=rank_scale)
    if construction == "permuted":
        return partial(permuted_weights, rank_scale=rank_scale)
    raise ValueError(
        f"unknown null construction {construction!r}; use one of {', '.join(NULL_CONSTRUCTIONS)}"
    )


def draw_null(
    slots: Sequence[LoraSlot], seed: int, weights: NullWeights
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Every slot's replacement (A, B), drawn in order from one CPU generator seeded by ``seed``.

    Drawn before any slot is swapped, so ``weights`` always sees the trained A and B.
    """
    generator = torch.Generator(device="cpu")
    generator.manual_seed(seed)
    out: list[tuple[torch.Tensor, torch.Tensor]] = []
    with torch.no_grad():
        for slot in slots:
            new_a, new_b = weights(slot, generator)
            out.append(
                (
                    new_a.to(dtype=slot.a.dtype, device=slot.a.device),
                    new_b.to(dtype=slot.b.dtype, device=slot.b.device),
                )
            )
    return out


@contextmanager
def swapped_lora(
    slots: Sequence[LoraSlot], draws: Sequence[tuple[torch.Tensor, torch.Tensor]]
) -> Iterator[None]:
    """Every slot's A/B replaced by ``draws`` while open.

    Originals are cloned first and copied back in ``finally`` (same dtype, so
    the restore is bit-exact), also when the body or the swap itself raises.
    """
    saved: list[tuple[torch.Tensor, torch.Tensor]] = []
    try:
        with torch.no_grad():
            for slot, (new_a, new_b) in zip(slots, draws, strict=True):
                saved.append((slot.a.detach().clone(), slot.b.detach().clone()))
                slot.a.copy_(new_a)
                slot.b.copy_(new_b)
        yield
    finally:
        with torch.no_grad():
            for slot, (orig_a, orig_b) in zip(slots, saved, strict=False):
                slot.a.copy_(orig_a)
                slot.b.copy_(orig_b)


@contextmanager
def null_lora(
    model: torch.nn.Module,
    seed: int,
    weights: NullWeights,
    *,
    slots: Sequence[LoraSlot] | None = None,
) -> Iterator[None]:
    """Swap every LoRA A/B for ``weights(...)`` drawn from one CPU generator seeded by ``seed``.

    ``slots`` (default: every LoRA slot, in registration order) limits the swap, e.g.
    to :func:`plain_lora_slots` when DoRA modules get weight-space nulls instead.
    """
    slots = list(iter_lora_slots(model)) if slots is None else list(slots)
    with swapped_lora(slots, draw_null(slots, seed, weights)):
        yield


def adapter_switches(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The modules whose ``_disable_adapters`` flag turns the adapter off (every PEFT
    tuner layer and ``modules_to_save``-style wrapper), found once per loaded adapter."""
    from peft.tuners.tuners_utils import BaseTunerLayer
    from peft.utils.other import AuxiliaryTrainingWrapper

    return [m for m in model.modules() if isinstance(m, (BaseTunerLayer, AuxiliaryTrainingWrapper))]


@contextmanager
def adapters_off(switches: Sequence[torch.nn.Module]) -> Iterator[None]:
    """The base model's forward: every switch off while open, each put back on exit.

    PEFT's ``disable_adapter()`` flips the same flags but first walks the whole model
    for its status (about 30 ms per entry on SmolLM2, paid on every base view)."""
    saved = [bool(m._disable_adapters) for m in switches]
    try:
        for m in switches:
            setattr(m, "_disable_adapters", True)  # noqa: B010 (a plain flag, not a submodule)
        yield
    finally:
        for m, was in zip(switches, saved, strict=False):
            setattr(m, "_disable_adapters", was)  # noqa: B010
