"""Benchmark a standard calibrated suite on the real SmolLM2-135M-Instruct.

Prints wall time, forward passes, scored tokens/s and the achieved matmul
FLOP/s as a fraction of this machine's own fp32 matmul peak, measured in the
same process so the ratio is robust to a noisy machine.

    python bench/bench_suite.py [--runs 10] [--dtype fp32] [--json bench.json]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any


def matmul_peak(dtype_name: str, seconds: float = 3.0, n: int = 1024) -> float:
    """Best sustained FLOP/s of an n×n matmul on this machine (all threads)."""
    import torch

    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype_name]
    a = torch.randn(n, n, dtype=dtype)
    b = torch.randn(n, n, dtype=dtype)
    for _ in range(3):
        a @ b
    best = 0.0
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        t = time.perf_counter()
        for _ in range(8):
            a @ b
        dt = time.perf_counter() - t
        best = max(best, 8 * 2 * n**3 / dt)
    return best


def linear_params(model: Any) -> tuple[int, int]:
    """(transformer-body Linear params, lm_head params): FLOPs ≈ 2·params per token."""
    import torch

    body = head = 0
    for name, mod in model.named_modules():
        if isinstance(mod, torch.nn.Linear) and "lora_" not in name:
            if name.endswith("lm_head"):
                head += mod.weight.numel()
            else:
                body += mod.weight.numel()
    return body, head


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10, help="null adapters")
    parser.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    parser.add_argument("--adapter", default="strong", choices=["strong", "weak"])
    parser.add_argument("--json", default=None, help="also write the numbers here")
    args = parser.parse_args()
    os.environ["SWAY_DISABLE_NULL_CACHE"] = "1"  # measure the work, not the cache

    import torch

    from dlm_sway.backends.builtin_models import ensure_converted
    from dlm_sway.backends.hf import HFDifferentialBackend
    from dlm_sway.cli.demo import demo_spec
    from dlm_sway.demo.assets import adapter_dir, prompts
    from dlm_sway.suite.loader import from_dict
    from dlm_sway.suite.runner import run

    peak = matmul_peak(args.dtype)
    t = time.perf_counter()
    model_dir = ensure_converted()
    convert_s = time.perf_counter() - t
    t = time.perf_counter()
    backend = HFDifferentialBackend(
        str(model_dir), adapter_dir(args.adapter), dtype=args.dtype, device="cpu"
    )
    load_s = time.perf_counter() - t
    body, head = linear_params(backend.peft_model)
    spec = demo_spec(str(adapter_dir(args.adapter)), prompts(), args.runs)
    spec["models"]["ft"]["dtype"] = args.dtype
    loaded = from_dict(spec, source="bench")
    t = time.perf_counter()
    suite = run(loaded, backend)
    suite_s = time.perf_counter() - t
    stats = backend.stats.to_dict()
    backend.close()

    tokens = int(stats["scored_tokens"])
    fwd_s = float(stats["scoring_wall_s"]) or suite_s
    flops = 2.0 * body * tokens  # body matmuls only: a lower bound (no attention, no lm_head)
    out = {
        "dtype": args.dtype,
        "threads": torch.get_num_threads(),
        "null_runs": args.runs,
        "prompts": len(prompts()),
        "convert_or_cache_s": round(convert_s, 3),
        "model_load_s": round(load_s, 3),
        "suite_wall_s": round(suite_s, 3),
        "forward_passes": stats["forward_passes"],
        "batches_sent": stats.get("batches_sent"),
        "scored_tokens": tokens,
        "tokens_per_s_suite": round(tokens / suite_s, 1),
        "tokens_per_s_in_forwards": round(tokens / fwd_s, 1),
        "forward_share_of_wall": round(fwd_s / suite_s, 3),
        "cache_hit_rate": stats.get("hit_rate"),
        "body_params": body,
        "lm_head_params": head,
        "achieved_flops_per_s": flops / suite_s,
        "matmul_peak_flops_per_s": peak,
        "fraction_of_peak": round(flops / suite_s / peak, 4),
        "verdicts": {p.name: p.verdict.value for p in suite.probes},
    }
    for key, value in out.items():
        if isinstance(value, float) and value > 1e6:
            print(f"{key:28s} {value / 1e9:.2f} GFLOP/s")
        else:
            print(f"{key:28s} {value}")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2), encoding="utf-8")


if __name__ == "__main__":
    main()
