"""Rows of different views of one LoRA model in one forward.

The HF backend's views differ only in each LoRA module's term: none (the base),
the trained scaling·B·A (the fine-tune), λ times it (a scaled view) or a seeded
null's. Here the distinct factor sets ("blocks") sit side by side in every LoRA
module, A stacked to n·r rows and B to n·r columns, and a pre-hook on each B
weights each row's A·x block by block: 1 on its own view's block (λ for a scaled
row), 0 elsewhere, all zeros for a base row. The base layers run once over all
rows and the LoRA terms as one small matmul pair, so n views cost one forward
over n times the rows: on CPU far less than n forwards (a matmul's rate grows
with its rows). PEFT's own mixed-adapter batches loop over the adapters in
Python in every module, which costs more than it saves here.

A row's numbers equal its view's own forward within float jitter (the wider
matmuls and the batch layout), the jitter the noise floor measures. Plain linear
LoRA only: DoRA and ``modules_to_save`` views are built in weight space.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from peft.tuners.lora import Linear as LoraLinear

from dlm_sway.backends.hf_lora import LoraSlot

Factors = Sequence[tuple[torch.Tensor, torch.Tensor]]

#: Bytes the stacked factors may take (n blocks × the adapter): more views than fit
#: are not mixed (each then runs its own forwards, as without a sweep).
MAX_STACK_BYTES = 256 * 2**20


@dataclass(frozen=True)
class Group:
    """What one view adds in every LoRA module: ``weight`` × block ``block``'s term
    (``block`` None: nothing, the base)."""

    block: int | None
    weight: float = 1.0


def mixable(slots: Sequence[LoraSlot]) -> bool:
    """Whether every LoRA slot is a plain linear LoRA (no DoRA or other PEFT variant),
    the module's only adapter."""
    return bool(slots) and all(
        isinstance(s.layer, LoraLinear)
        and not s.layer.use_dora.get(s.adapter, False)
        and s.adapter not in getattr(s.layer, "lora_variant", {})
        and len(s.layer.lora_A) == 1
        and isinstance(s.layer.lora_A[s.adapter], torch.nn.Linear)
        and isinstance(s.layer.lora_B[s.adapter], torch.nn.Linear)
        for s in slots
    )


def stack_bytes(slots: Sequence[LoraSlot], blocks: int) -> int:
    """What ``blocks`` factor sets of this adapter take when stacked."""
    return blocks * sum(s.a.nbytes + s.b.nbytes for s in slots)


class Stack:
    """The blocks' factors side by side in every slot, and the per-row masks."""

    def __init__(
        self, slots: Sequence[LoraSlot], blocks: Sequence[Factors], groups: Sequence[Group]
    ) -> None:
        self.slots = list(slots)
        # Contiguous like the trained Parameters, so a one-block forward runs their kernels.
        self.blocks = [
            [
                (a.to(s.a).contiguous(), b.to(s.b).contiguous())
                for s, (a, b) in zip(slots, f, strict=True)
            ]
            for f in blocks
        ]
        self.groups = list(groups)
        #: The trained scalings while installed (:func:`installed`).
        self.scalings: list[float] = []
        #: A NaN or inf in any block would reach every row (0 × inf is NaN): never mixed.
        self.finite = all(bool(torch.isfinite(t).all()) for f in self.blocks for p in f for t in p)
        self.rows: tuple[int, ...] | None = None
        self._masks: dict[tuple[int, torch.dtype, torch.device], torch.Tensor] = {}
        self._stacked = [
            (
                torch.cat([f[j][0] for f in self.blocks], dim=0).contiguous(),
                torch.cat([f[j][1] for f in self.blocks], dim=1).contiguous(),
            )
            for j in range(len(self.slots))
        ]

    def select(self, rows: Sequence[int]) -> None:
        """The group (index into ``groups``) of each row of the next forwards, in batch order."""
        self.rows = tuple(rows)
        self._masks.clear()

    def stack_in(self) -> None:
        """The stacked factors in every slot."""
        for j, slot in enumerate(self.slots):
            a, b = self._stacked[j]
            _set(slot.layer.lora_A[slot.adapter], a)
            _set(slot.layer.lora_B[slot.adapter], b)

    def masked(self, module: Any, args: tuple[Any, ...]) -> tuple[Any, ...] | None:
        """Forward pre-hook of each B: each row keeps its view's share of A·x, the other
        blocks exactly 0 even where they overflowed. Its input is [rows, tokens, n·r] in
        every decoder LoRA."""
        if self.rows is None:
            return None
        h, n = args[0], len(self.blocks)
        if h.dim() != 3 or h.shape[0] != len(self.rows) or h.shape[-1] % n:
            raise RuntimeError(
                f"a LoRA module got input of shape {tuple(h.shape)} for {len(self.rows)} "
                "rows: its rows cannot be told apart, so views cannot share a batch here"
            )
        sig = (h.shape[-1] // n, h.dtype, h.device)
        if sig not in self._masks:
            rank = sig[0]
            mask = torch.zeros((len(self.rows), 1, h.shape[-1]), dtype=h.dtype, device=h.device)
            for row, g in enumerate(self.rows):
                group = self.groups[g]
                if group.block is not None:
                    mask[row, 0, group.block * rank : (group.block + 1) * rank] = group.weight
            self._masks[sig] = mask
        weights = self._masks[sig]
        return (torch.where(weights != 0, h * weights, torch.zeros_like(h)), *args[1:])

    @contextmanager
    def own(self, group: int) -> Iterator[None]:
        """Group ``group``'s own view while open, unmasked: bit for bit that view's
        forward (its factors at scaling × weight, or the LoRA terms off for the base)."""
        spec = self.groups[group]
        off = spec.block is None
        for j, slot in enumerate(self.slots):
            if off:
                slot.layer._disable_adapters = True
            else:
                a, b = self.blocks[spec.block][j]  # type: ignore[index]
                _set(slot.layer.lora_A[slot.adapter], a)
                _set(slot.layer.lora_B[slot.adapter], b)
                # As the scaled view computes it: the trained scaling times λ.
                slot.layer.scaling[slot.adapter] = self.scalings[j] * spec.weight
        rows, self.rows = self.rows, None
        try:
            yield
        finally:
            for j, slot in enumerate(self.slots):
                slot.layer._disable_adapters = False
                slot.layer.scaling[slot.adapter] = self.scalings[j]
            self.stack_in()
            self.rows = rows


def _set(linear: Any, weight: torch.Tensor) -> None:
    linear.weight = torch.nn.Parameter(weight, requires_grad=False)


@contextmanager
def installed(stack: Stack, scalings: Sequence[float]) -> Iterator[Stack]:
    """``stack``'s factors in place of the live ones while open, at the trained
    ``scalings`` and with the LoRA terms on, whatever view is open (a scaled view
    changes the scalings, the base view turns the terms off). The live Parameters
    themselves, scalings and switches are put back whatever happens."""
    slots = stack.slots
    saved = [
        (
            slot.layer.lora_A[slot.adapter].weight,
            slot.layer.lora_B[slot.adapter].weight,
            slot.layer.scaling[slot.adapter],
            slot.layer._disable_adapters,
        )
        for slot in slots
    ]
    hooks: list[Any] = []
    stack.scalings = list(scalings)
    try:
        for slot, scaling in zip(slots, scalings, strict=True):
            slot.layer.scaling[slot.adapter] = scaling
            slot.layer._disable_adapters = False
            hooks.append(slot.layer.lora_B[slot.adapter].register_forward_pre_hook(stack.masked))
        stack.stack_in()
        yield stack
    finally:
        stack.rows = None
        for hook in hooks:
            hook.remove()
        for slot, (a, b, scaling, off) in zip(slots, saved, strict=False):
            slot.layer.lora_A[slot.adapter].weight = a
            slot.layer.lora_B[slot.adapter].weight = b
            slot.layer.scaling[slot.adapter] = scaling
            slot.layer._disable_adapters = off


__all__ = ["MAX_STACK_BYTES", "Factors", "Group", "Stack", "installed", "mixable", "stack_bytes"]
