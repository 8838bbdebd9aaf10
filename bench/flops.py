"""Achieved FLOP/s of a sway run, per phase, as a fraction of this machine's matmul peak.

The peak is measured in the same process with torch matmuls at the model's own
shapes (batch 8 × 32 tokens against the attention and MLP weights), briefly at
every phase boundary, outside the phases' timings. Each phase is judged against
the higher of the samples taken just before and just after it: a machine that
speeds up or slows down during the run (a shared VM's single peak measurement
read 121 and 73.5 GFLOP/s in two runs an hour apart) moves the peak and the
phase together, and a slow sample never flatters the fraction. A forward's
useful FLOPs are counted from its real (non-pad) tokens: 2 × body-Linear params
per token, plus attention (2 × 2 × position × hidden per layer and token), plus
the lm_head for every position whose logits are kept. LoRA's extra work is not
counted (a lower bound).

    python bench/flops.py bench/specs/race.yaml [--dtype bf16]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PEAK_BATCH = 8
PEAK_SEQ = 32


@dataclass(frozen=True)
class Dims:
    hidden: int
    intermediate: int
    layers: int
    kv_dim: int
    vocab: int

    @classmethod
    def from_config(cls, config: Any) -> Dims:
        heads = int(config.num_attention_heads)
        kv_heads = int(getattr(config, "num_key_value_heads", None) or heads)
        hidden = int(config.hidden_size)
        return cls(
            hidden=hidden,
            intermediate=int(config.intermediate_size),
            layers=int(config.num_hidden_layers),
            kv_dim=hidden // heads * kv_heads,
            vocab=int(config.vocab_size),
        )

    @property
    def body_params_per_layer(self) -> int:
        h = self.hidden
        return 2 * h * h + 2 * h * self.kv_dim + 3 * h * self.intermediate


def forward_flops(lengths: Sequence[int], *, kept_positions: int, dims: Dims) -> float:
    """Useful FLOPs of one forward over sequences of these real lengths."""
    tokens = sum(lengths)
    body = 2.0 * dims.layers * dims.body_params_per_layer * tokens
    # Causal attention: token at position t reads t keys (QKᵀ) and t values (AV).
    attn = sum(2.0 * 2.0 * dims.layers * dims.hidden * (n * (n + 1) / 2) for n in lengths)
    head = 2.0 * dims.hidden * dims.vocab * kept_positions
    return body + attn + head


#: Seconds per peak sample at a phase boundary (three shapes share it).
SAMPLE_SECONDS = 0.3


def matmul_peak(dims: Dims, dtype: Any, *, seconds: float = 2.0) -> float:
    """Best FLOP/s of batch-8 matmuls at the model's Linear shapes (all torch threads)."""
    import torch

    rows = PEAK_BATCH * PEAK_SEQ
    shapes = [
        (dims.hidden, dims.intermediate),
        (dims.intermediate, dims.hidden),
        (dims.hidden, dims.hidden),
    ]
    best = 0.0
    per_shape = seconds / len(shapes)
    with torch.inference_mode():
        for k, n in shapes:
            a = torch.randn(rows, k, dtype=dtype)
            b = torch.randn(k, n, dtype=dtype)
            for _ in range(3):
                a @ b
            end = time.perf_counter() + per_shape
            while time.perf_counter() < end:
                t = time.perf_counter()
                for _ in range(8):
                    a @ b
                best = max(best, 8 * 2.0 * rows * k * n / (time.perf_counter() - t))
    return best


@dataclass
class Phase:
    name: str
    wall_s: float = 0.0
    forward_s: float = 0.0
    forwards: int = 0
    real_tokens: int = 0
    padded_tokens: int = 0
    flops: float = 0.0
    #: Matmul peak samples taken at this phase's boundaries (FLOP/s).
    peaks: list[float] = field(default_factory=list)

    def peak(self, fallback: float) -> float:
        """The higher boundary sample: a fraction against it is never flattered."""
        return max(self.peaks) if self.peaks else fallback


@dataclass
class PhaseMeter:
    """Wraps a scorer's forward and follows the runner's progress to split by phase.

    With ``sample`` (a short matmul peak measurement), every phase boundary takes
    one sample, outside every phase's wall time, for the phases on both sides of it.
    """

    dims: Dims
    phases: list[Phase] = field(default_factory=list)
    sample: Callable[[], float] | None = None
    #: Every boundary sample, in order.
    samples: list[float] = field(default_factory=list)
    _started: float = 0.0
    _at_end: float | None = None

    def begin(self, name: str, *, close_previous: bool = True) -> None:
        """Start ``name``; the running phase ends now unless it was timed apart (load)."""
        now = time.perf_counter()
        if self.phases and close_previous:
            self.phases[-1].wall_s += now - self._started
        # A phase that ended by end() was sampled there: its sample opens this one too.
        peak = self._at_end
        if peak is None:
            peak = self._sample(self.phases[-1] if self.phases and close_previous else None)
        self._at_end = None
        self.phases.append(Phase(name, peaks=[] if peak is None else [peak]))
        self._started = time.perf_counter()

    def end(self) -> None:
        if self.phases:
            self.phases[-1].wall_s += time.perf_counter() - self._started
            self._at_end = self._sample(self.phases[-1])
            self._started = time.perf_counter()

    def _sample(self, ended: Phase | None) -> float | None:
        """One peak sample, recorded on the phase that just ended (if any)."""
        if self.sample is None:
            return None
        peak = self.sample()
        self.samples.append(peak)
        if ended is not None:
            ended.peaks.append(peak)
        return peak

    # RunProgress protocol
    def probe_started(self, name: str, index: int, total: int) -> None:
        self.begin(name)

    def probe_finished(self, result: Any) -> None:
        self.end()

    def step(self, label: str, done: int, total: int) -> None:
        return None

    def wrap(self, scorer: Any) -> None:
        """Meter every forward path: last-position dists, logits at chosen positions, and
        the log-probs of the tokens after chosen positions."""
        forward, logits_at = scorer.forward, scorer.logits_at
        target_logprobs_at = scorer.target_logprobs_at

        def metered_forward(seqs: Sequence[Sequence[int]], **kwargs: Any) -> Any:
            kept = len(seqs) if kwargs.get("last_only") else sum(len(s) for s in seqs)
            return self._meter(seqs, kept, lambda: forward(seqs, **kwargs))

        def metered_logits_at(
            seqs: Sequence[Sequence[int]], positions: Sequence[range], **kwargs: Any
        ) -> Any:
            kept = sum(len(ps) for ps in positions)
            return self._meter(seqs, kept, lambda: logits_at(seqs, positions, **kwargs))

        def metered_targets(
            seqs: Sequence[Sequence[int]], positions: Sequence[range], **kwargs: Any
        ) -> Any:
            kept = sum(len(ps) for ps in positions)
            return self._meter(seqs, kept, lambda: target_logprobs_at(seqs, positions, **kwargs))

        scorer.forward = metered_forward
        scorer.logits_at = metered_logits_at
        scorer.target_logprobs_at = metered_targets

    def _meter(self, seqs: Sequence[Sequence[int]], kept: int, call: Callable[[], Any]) -> Any:
        t = time.perf_counter()
        out = call()
        phase = self.phases[-1]
        phase.forward_s += time.perf_counter() - t
        lengths = [len(s) for s in seqs]
        phase.forwards += 1
        phase.real_tokens += sum(lengths)
        phase.padded_tokens += max(lengths) * len(lengths)
        phase.flops += forward_flops(lengths, kept_positions=kept, dims=self.dims)
        return out


def measure(spec_path: Path, *, dtype: str | None = None) -> tuple[list[Phase], list[float], str]:
    """Run the spec in this process; return its phases, the peak samples and the dtype."""
    os.environ.setdefault("SWAY_DISABLE_NULL_CACHE", "1")
    os.environ.setdefault("SWAY_DISABLE_BASE_CACHE", "1")
    from dlm_sway.suite.build import backend_from_spec
    from dlm_sway.suite.loader import load_spec
    from dlm_sway.suite.runner import run

    loaded = load_spec(spec_path)
    model = loaded.spec.models.ft
    if dtype is not None:
        model = model.model_copy(update={"dtype": dtype})
    t = time.perf_counter()
    backend: Any = backend_from_spec(model)
    load_s = time.perf_counter() - t
    base = backend.peft_model.get_base_model()
    dims = Dims.from_config(base.config)
    torch_dtype = next(base.parameters()).dtype
    meter = PhaseMeter(dims, sample=lambda: matmul_peak(dims, torch_dtype, seconds=SAMPLE_SECONDS))
    meter.wrap(backend._live_scorer())
    meter.phases.append(Phase("load", wall_s=load_s))
    meter.begin("preflight + noise floor", close_previous=False)
    try:
        run(loaded, backend, progress=meter)
    finally:
        meter.end()
        backend.close()
    return meter.phases, meter.samples, str(torch_dtype).removeprefix("torch.")


def report(phases: Sequence[Phase], samples: Sequence[float], dtype: str) -> str:
    """Per phase: time, forwards, tokens, padding, FLOPs and the fraction of the peak
    sampled at its boundaries (the whole run: of the highest sample)."""
    top = max(samples) if samples else 0.0
    low = min(samples) if samples else 0.0
    lines = [
        f"matmul peak ({dtype}, batch {PEAK_BATCH}x{PEAK_SEQ} at the model's shapes): "
        f"{len(samples)} samples at phase boundaries, {low / 1e9:.1f}-{top / 1e9:.1f} GFLOP/s "
        "(each phase against the higher sample at its ends)",
        f"{'phase':32s} {'wall s':>7s} {'fwd s':>7s} {'fwds':>5s} {'tokens':>7s} "
        f"{'pad%':>5s} {'GFLOP':>7s} {'peak':>6s} {'%peak':>6s} {'%peak in fwd':>12s}",
    ]
    totals = Phase("total")
    for p in phases:
        for attr in ("wall_s", "forward_s", "forwards", "real_tokens", "padded_tokens", "flops"):
            setattr(totals, attr, getattr(totals, attr) + getattr(p, attr))
    for p in [*phases, totals]:
        peak = p.peak(top)
        pad = 100.0 * (1 - p.real_tokens / p.padded_tokens) if p.padded_tokens else 0.0
        frac = p.flops / p.wall_s / peak if p.wall_s > 0 and peak > 0 else 0.0
        frac_fwd = p.flops / p.forward_s / peak if p.forward_s > 0 and peak > 0 else 0.0
        shown = f"{peak / 1e9:6.1f}" if p.peaks or p is totals else f"{'-':>6s}"
        lines.append(
            f"{p.name[:32]:32s} {p.wall_s:7.2f} {p.forward_s:7.2f} {p.forwards:5d} "
            f"{p.real_tokens:7d} {pad:5.1f} {p.flops / 1e9:7.1f} {shown} "
            f"{100 * frac:5.1f}% {100 * frac_fwd:11.1f}%"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("spec", type=Path)
    parser.add_argument("--dtype", choices=["fp32", "bf16"], default=None)
    args = parser.parse_args(argv)
    from dlm_sway.core.errors import SwayError

    try:
        phases, samples, dtype = measure(args.spec, dtype=args.dtype)
    except SwayError as exc:  # a bad spec or model: its message, not a traceback
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(report(phases, samples, dtype))
    return 0


if __name__ == "__main__":
    sys.exit(main())
