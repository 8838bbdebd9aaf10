"""Weight-space views: every view is defined by the weights W(view) it produces.

For fine-tunes whose change is not a separable LoRA term — DoRA, ``modules_to_save``
modules, full fine-tunes — a view writes nothing. Each touched parameter is a
:class:`WeightSlot` holding its base value W₀ and a way to compute the trained
change D = W_ft − W₀. While a view is open, forward hooks hand each module
W(view) in place of its parameter for the length of that module's call:

- scaled λ: W₀ + λ·D (weight-space interpolation: λ=0 is the base, λ=1 the
  fine-tune, in between a straight line in weight space);
- null, ``norm_matched``: W₀ + c·R, R a seeded Gaussian direction and c such that
  ‖c·R‖_F = ‖D‖_F·√rank_scale, per parameter tensor;
- null, ``permuted``: W₀ + √rank_scale·P·D·Q, D's rows and columns shuffled (same
  norm and spectrum, random placement).

So restoring is trivially bit-exact (the parameters are never modified, also when
a forward raises) and the scratch memory is one module's W(view) at a time, not a
copy of the model. The price is recomputing W(view) on every forward, cheap next
to a scoring forward; adapter views (few touched modules) memoize it instead. Each slot draws its null from its own generator
seeded by (seed, slot key), so a null does not depend on forward order.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch

from dlm_sway.core.scoring import NullConstruction

#: Null constructions a weight-space slot can draw (``init_scale`` is a LoRA-factor
#: std and has no meaning for a full weight matrix).
WEIGHT_NULL_CONSTRUCTIONS: tuple[NullConstruction, ...] = ("norm_matched", "permuted")


@dataclass(frozen=True)
class WeightSlot:
    """One parameter tensor a weight-space view replaces.

    ``sites`` lists every (module, parameter name) that reads it — several for a
    tied weight. ``base`` is the live W₀ (never written); ``delta`` computes
    W_ft − W₀ in float32 on W₀'s device, on demand, so no copy is kept. It must
    return a fresh tensor: views update it in place to save a matrix of scratch.
    """

    key: str
    sites: tuple[tuple[torch.nn.Module, str], ...]
    base: torch.Tensor
    delta: Callable[[], torch.Tensor]


#: Computes W(view) for one slot.
WeightFn = Callable[[WeightSlot], torch.Tensor]


def slot_seed(seed: int, key: str) -> int:
    """A 63-bit child seed for one slot: independent of the order slots are visited."""
    digest = hashlib.sha256(f"{int(seed)}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def _generator(seed: int, key: str) -> torch.Generator:
    gen = torch.Generator(device="cpu")
    gen.manual_seed(slot_seed(seed, key))
    return gen


def frobenius(t: torch.Tensor) -> float:
    """‖t‖_F accumulated in float64, 4M elements at a time (no float64 copy of t)."""
    flat = t.detach().reshape(-1)
    total = 0.0
    for chunk in torch.split(flat, 1 << 22):
        c = chunk.to(torch.float64)
        total += float(torch.dot(c, c))
    return math.sqrt(total)


def interpolated(lam: float) -> WeightFn:
    """W₀ + λ·D, rounded once to W₀'s dtype (one matrix of scratch: D, updated in place)."""

    def weight(slot: WeightSlot) -> torch.Tensor:
        w0 = slot.base.detach()
        return slot.delta().mul_(lam).add_(w0).to(w0.dtype)

    return weight


def _check(construction: str, rank_scale: float) -> None:
    if construction not in WEIGHT_NULL_CONSTRUCTIONS:
        raise ValueError(
            f"null construction {construction!r} is not defined for weight-space slots; "
            f"use one of {', '.join(WEIGHT_NULL_CONSTRUCTIONS)}"
        )
    if not math.isfinite(rank_scale) or rank_scale <= 0:
        raise ValueError(f"rank_scale must be a finite number > 0, got {rank_scale!r}")


def null_delta(
    slot: WeightSlot,
    seed: int,
    construction: str,
    rank_scale: float,
    *,
    norm: float | None = None,
) -> torch.Tensor:
    """The null's change for one slot, float32 on CPU (public: tests and engines reuse it).

    ``norm`` is ‖D‖_F when the caller already knows it (saves computing D at all for
    ``norm_matched``: the scratch is then the random direction alone).
    """
    _check(construction, rank_scale)
    gen = _generator(seed, slot.key)
    shape = tuple(slot.base.shape)
    if construction == "permuted":
        delta = slot.delta().to("cpu", torch.float32)
        flat = delta.reshape(shape[0], -1) if delta.dim() > 1 else delta.reshape(-1, 1)
        rows = torch.randperm(flat.shape[0], generator=gen)
        cols = torch.randperm(flat.shape[1], generator=gen)
        return flat[rows.unsqueeze(1), cols.unsqueeze(0)].mul_(math.sqrt(rank_scale)).reshape(shape)
    direction = torch.randn(shape, generator=gen, dtype=torch.float32)
    target = (frobenius(slot.delta()) if norm is None else norm) * math.sqrt(rank_scale)
    current = frobenius(direction)
    if target == 0.0 or current == 0.0:
        return direction.zero_()
    return direction.mul_(target / current)


def null_weight(
    seed: int, construction: str, rank_scale: float, norms: Mapping[str, float] | None = None
) -> WeightFn:
    """W₀ + the slot's null change (see :func:`null_delta`); ``norms``: ‖D‖_F by slot key."""
    _check(construction, rank_scale)

    def weight(slot: WeightSlot) -> torch.Tensor:
        w0 = slot.base.detach()
        norm = None if norms is None else norms.get(slot.key)
        change = null_delta(slot, seed, construction, rank_scale, norm=norm).to(w0.device)
        return change.add_(w0).to(w0.dtype)

    return weight


@contextmanager
def weight_view(
    slots: Sequence[WeightSlot], weight: WeightFn, *, memoize: bool = False
) -> Iterator[None]:
    """While open, each site module runs with W(view) in place of its parameter.

    A pre-hook computes W(view) and swaps it into the module's parameter table; a
    post-hook swaps the original Parameter object back. The ``finally`` puts every
    original back too, so a forward that raises leaves the model untouched.
    ``memoize`` keeps each W(view) for the life of the view (memory: the touched
    tensors — right for an adapter's few modules, not for a full fine-tune).
    """
    memo: dict[str, torch.Tensor] = {}

    def compute(slot: WeightSlot) -> torch.Tensor:
        if not memoize:
            return weight(slot)
        if slot.key not in memo:
            memo[slot.key] = weight(slot)
        return memo[slot.key]

    originals: list[tuple[torch.nn.Module, str, Any]] = []
    handles: list[Any] = []
    by_module: dict[int, list[tuple[str, WeightSlot]]] = {}
    modules: dict[int, torch.nn.Module] = {}
    for slot in slots:
        for module, name in slot.sites:
            by_module.setdefault(id(module), []).append((name, slot))
            modules[id(module)] = module
            originals.append((module, name, module._parameters[name]))

    def make_hooks(module: torch.nn.Module, entries: list[tuple[str, WeightSlot]]) -> None:
        saved: dict[str, Any] = {name: module._parameters[name] for name, _ in entries}

        def pre(mod: torch.nn.Module, args: Any) -> None:
            with torch.no_grad():
                for name, slot in entries:
                    mod._parameters[name] = compute(slot)  # type: ignore[assignment]

        def post(mod: torch.nn.Module, args: Any, output: Any) -> None:
            for name, _ in entries:
                mod._parameters[name] = saved[name]

        handles.append(module.register_forward_pre_hook(pre))
        handles.append(module.register_forward_hook(post))

    try:
        for key, entries in by_module.items():
            make_hooks(modules[key], entries)
        yield
    finally:
        for handle in handles:
            handle.remove()
        for module, name, param in originals:
            module._parameters[name] = param
        memo.clear()


def slot_norms(slots: Sequence[WeightSlot]) -> dict[str, float]:
    """‖W_ft − W₀‖_F per slot (the size a norm-matched null matches)."""
    with torch.no_grad():
        return {slot.key: frobenius(slot.delta()) for slot in slots}


def parameter_sites(
    root: torch.nn.Module,
) -> dict[str, tuple[torch.Tensor, tuple[tuple[torch.nn.Module, str], ...]]]:
    """Canonical parameter name → (tensor, every (module, name) that holds it).

    A tied weight (e.g. embeddings shared with the LM head) is one entry with two
    sites, so a view gives both the same W(view).
    """
    by_tensor: dict[int, str] = {}
    out: dict[str, tuple[torch.Tensor, tuple[tuple[torch.nn.Module, str], ...]]] = {}
    for mod_name, module in root.named_modules(remove_duplicate=False):
        for pname, param in module._parameters.items():
            if param is None:
                continue
            canonical = by_tensor.setdefault(id(param), f"{mod_name}.{pname}".lstrip("."))
            tensor, sites = out.get(canonical, (param, ()))
            if any(m is module and n == pname for m, n in sites):
                continue
            out[canonical] = (tensor, (*sites, (module, pname)))
    return out


__all__ = [
    "WEIGHT_NULL_CONSTRUCTIONS",
    "WeightFn",
    "WeightSlot",
    "frobenius",
    "interpolated",
    "null_delta",
    "null_weight",
    "parameter_sites",
    "slot_norms",
    "slot_seed",
    "weight_view",
]
