"""Rows of different views of one LoRA model in one forward.

The HF backend's views differ only in each LoRA module's term: none (the base),
the trained scaling·B·A (the fine-tune), λ times it (a scaled view) or a seeded
null's. While a stack is installed, PEFT's own LoRA term is off and a forward hook
on each LoRA module adds every row's term to the base layer's output, so the base
layers run once over all rows: n views cost one forward over n times the rows, on
CPU far less than n forwards (a matmul's rate grows with its rows). PEFT's own
mixed-adapter batches loop over the adapters in Python in every module, which
costs more than it saves here.

The term is computed one of two ways per module call, by how many tokens each run
of same-view rows holds (the scorer puts a chunk's rows one view after another):

- runs of at least ``GROUPED_MIN_TOKENS``: each run's own r-wide factors over its
  rows alone, the same ops as the view's own forward, so a row's numbers are its
  view's own, bit for bit up to the batch layout;
- shorter runs (decode steps): the n blocks' factors side by side (A stacked to n·r
  rows, B to n·r columns) over every row, each row's n·r-wide A·x weighted block by
  block (1 on its own view's block, λ for a scaled row, 0 elsewhere), one matmul
  pair instead of a few tiny ones per run; this adds n times the LoRA FLOPs (about
  10% of a 12-view forward of SmolLM2) and its rows agree with their views' own
  within float jitter, the jitter the noise floor measures.

Plain linear LoRA only: DoRA and ``modules_to_save`` views are built in weight space.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
from peft.tuners.lora import Linear as LoraLinear

from dlm_sway.backends.hf_lora import LoraSlot

Factors = Sequence[tuple[torch.Tensor, torch.Tensor]]

#: Bytes the stacked factors may take (n blocks × the adapter): more views than fit
#: are not mixed (each then runs its own forwards, as without a sweep).
MAX_STACK_BYTES = 256 * 2**20
#: Tokens per run of same-view rows from which each run gets its own term: below it
#: (a decode step's few tokens per row) a run's tiny matmuls cost more than the n-wide
#: masked pair's extra FLOPs (break-even near 8 tokens on SmolLM2).
GROUPED_MIN_TOKENS = 16


@dataclass(frozen=True)
class Group:
    """What one view adds in every LoRA module: ``weight`` × block ``block``'s term
    (``block`` None: nothing, the base)."""

    block: int | None
    weight: float = 1.0


def mixable(slots: Sequence[LoraSlot]) -> bool:
    """Whether every LoRA slot is a plain linear LoRA (no DoRA or other PEFT variant,
    no trained bias: the terms here are B·A·x alone), the module's only adapter."""
    return bool(slots) and all(
        isinstance(s.layer, LoraLinear)
        and not s.layer.use_dora.get(s.adapter, False)
        and s.adapter not in getattr(s.layer, "lora_variant", {})
        and len(s.layer.lora_A) == 1
        and isinstance(s.layer.lora_A[s.adapter], torch.nn.Linear)
        and isinstance(s.layer.lora_B[s.adapter], torch.nn.Linear)
        and s.layer.lora_A[s.adapter].bias is None
        and s.layer.lora_B[s.adapter].bias is None
        for s in slots
    )


def stack_bytes(slots: Sequence[LoraSlot], blocks: int) -> int:
    """What ``blocks`` factor sets of this adapter take when stacked."""
    return blocks * sum(s.a.nbytes + s.b.nbytes for s in slots)


class Stack:
    """The blocks' factors, each row's group, and the hook that adds their LoRA terms."""

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
        #: The live (trained) factors while installed, put back after :meth:`own`.
        self.live: list[tuple[Any, Any]] = []
        #: A NaN or inf in any block would reach every row (0 × inf is NaN): never mixed.
        self.finite = all(bool(torch.isfinite(t).all()) for f in self.blocks for p in f for t in p)
        self.rows: tuple[int, ...] | None = None
        self._runs: list[tuple[int, int, Group]] = []
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
        self._runs = []
        start = 0
        for g, run in itertools.groupby(self.rows):
            end = start + sum(1 for _ in run)
            self._runs.append((start, end, self.groups[g]))
            start = end

    def add_terms(self, slot: int, module: Any, args: tuple[Any, ...], out: Any) -> Any:
        """Forward hook of slot ``slot``'s LoRA module: every row's LoRA term added to the
        base layer's output ``out``. Its input is [rows, tokens, in] in every decoder LoRA."""
        if self.rows is None:
            return None
        x = args[0]
        if x.dim() != 3 or x.shape[0] != len(self.rows):
            raise RuntimeError(
                f"a LoRA module got input of shape {tuple(x.shape)} for {len(self.rows)} "
                "rows: its rows cannot be told apart, so views cannot share a batch here"
            )
        out = out.contiguous()
        flat = out.view(-1, out.shape[-1])
        if x.shape[0] * x.shape[1] >= GROUPED_MIN_TOKENS * len(self._runs):
            self._own_terms(slot, x, flat)
        else:
            self._masked_terms(slot, x, flat)
        return out

    def _own_terms(self, slot: int, x: torch.Tensor, out: torch.Tensor) -> None:
        """Each run's view's own term, with the ops of PEFT's ``result + B(A(x)) * s``."""
        tokens, scaling = x.shape[1], self.scalings[slot]
        for start, end, group in self._runs:
            if group.block is None:
                continue
            a, b = self.blocks[group.block][slot]
            term = (x[start:end].reshape(-1, x.shape[-1]) @ a.T) @ b.T
            term.mul_(scaling * group.weight)
            out[start * tokens : end * tokens].add_(term)

    def _masked_terms(self, slot: int, x: torch.Tensor, out: torch.Tensor) -> None:
        """Every block's term over every row, each row keeping its view's block of A·x
        (the other blocks exactly 0 even where they overflowed)."""
        a, b = self._stacked[slot]
        h = (x.reshape(-1, x.shape[-1]) @ a.T).view(*x.shape[:2], -1)
        weights = self._mask(h)
        kept = torch.where(weights != 0, h * weights, torch.zeros_like(h))
        term = kept.view(-1, kept.shape[-1]) @ b.T
        term.mul_(self.scalings[slot])
        out.add_(term)

    def _mask(self, h: torch.Tensor) -> torch.Tensor:
        """[rows, 1, n·r]: each row's weight on each block of its A·x."""
        rows, n = self.rows or (), len(self.blocks)
        sig = (h.shape[-1] // n, h.dtype, h.device)
        if sig not in self._masks:
            rank = sig[0]
            mask = torch.zeros((len(rows), 1, h.shape[-1]), dtype=h.dtype, device=h.device)
            for row, g in enumerate(rows):
                group = self.groups[g]
                if group.block is not None:
                    mask[row, 0, group.block * rank : (group.block + 1) * rank] = group.weight
            self._masks[sig] = mask
        return self._masks[sig]

    @contextmanager
    def own(self, group: int) -> Iterator[None]:
        """Group ``group``'s own view while open, through PEFT's own LoRA path: bit for
        bit that view's forward (its factors at scaling × weight, or no LoRA term for
        the base)."""
        spec = self.groups[group]
        if spec.block is not None:
            for j, slot in enumerate(self.slots):
                a, b = self.blocks[spec.block][j]
                _set(slot.layer.lora_A[slot.adapter], a)
                _set(slot.layer.lora_B[slot.adapter], b)
                # As the scaled view computes it: the trained scaling times λ.
                slot.layer.scaling[slot.adapter] = self.scalings[j] * spec.weight
                slot.layer._disable_adapters = False
        rows, self.rows = self.rows, None
        try:
            yield
        finally:
            for j, slot in enumerate(self.slots):
                slot.layer._disable_adapters = True
                slot.layer.scaling[slot.adapter] = self.scalings[j]
                slot.layer.lora_A[slot.adapter].weight = self.live[j][0]
                slot.layer.lora_B[slot.adapter].weight = self.live[j][1]
            self.rows = rows


def _set(linear: Any, weight: torch.Tensor) -> None:
    linear.weight = torch.nn.Parameter(weight, requires_grad=False)


@contextmanager
def installed(stack: Stack, scalings: Sequence[float]) -> Iterator[Stack]:
    """``stack``'s terms in place of PEFT's while open, at the trained ``scalings``,
    whatever view is open (a scaled view changes the scalings, the base view turns
    the terms off). The live Parameters, scalings and switches are put back whatever
    happens."""
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
    stack.live = [(a, b) for a, b, _, _ in saved]
    try:
        for j, (slot, scaling) in enumerate(zip(slots, scalings, strict=True)):
            slot.layer.scaling[slot.adapter] = scaling
            slot.layer._disable_adapters = True  # the hook adds the terms instead
            module: Any = slot.layer  # a LoraLayer is a torch Module
            hooks.append(module.register_forward_hook(partial(stack.add_terms, j)))
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


__all__ = [
    "GROUPED_MIN_TOKENS",
    "MAX_STACK_BYTES",
    "Factors",
    "Group",
    "Stack",
    "installed",
    "mixable",
    "stack_bytes",
]
