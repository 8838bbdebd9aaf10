"""Generated tokens/s on the real SmolLM2-135M-Instruct: batched vs one prompt at a time.

Runs the fine-tuned view of a shipped demo adapter on the demo prompts, greedy
(and optionally seeded sampling), once as one batched call and once prompt by
prompt, on separate backends so neither is served from the other's cache. Checks
that both produce the same texts and reports how many decisions were near-ties
re-decided on the canonical forward.

    python bench/generation.py [--prompts 16] [--tokens 32] [--batch-size 16] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any


def _run(
    backend: Any, prompts: list[str], settings: Any, *, batched: bool
) -> tuple[list[Any], float, int]:
    """(generations, seconds, near-ties re-decided) on the fine-tuned view."""
    from dlm_sway.backends import hf_generate

    recomputed = 0
    real = hf_generate.HFGenerator.generate

    def counting(self: Any, batch: Any, settings: Any) -> Any:
        nonlocal recomputed
        out = real(self, batch, settings)
        recomputed += self.recomputed
        return out

    hf_generate.HFGenerator.generate = counting  # type: ignore[method-assign]
    try:
        with backend.as_finetuned() as view:
            start = time.perf_counter()
            if batched:
                out = view.generate_batch(prompts, settings)
            else:
                out = [view.generate_batch([p], settings)[0] for p in prompts]
            seconds = time.perf_counter() - start
    finally:
        hf_generate.HFGenerator.generate = real  # type: ignore[method-assign]
    return out, seconds, recomputed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--tokens", type=int, default=32, help="max_new_tokens")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--temperature", type=float, default=0.0)
    parser.add_argument("--adapter", default="strong", choices=["strong", "weak"])
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--json", default=None, help="also write the numbers here")
    args = parser.parse_args()

    from dlm_sway.backends.builtin_models import resolve_base
    from dlm_sway.backends.hf import HFDifferentialBackend
    from dlm_sway.core.scoring import GenerationSettings
    from dlm_sway.demo.assets import adapter_dir, prompts

    texts = (prompts() * 4)[: args.prompts]
    settings = GenerationSettings(
        max_new_tokens=args.tokens, temperature=args.temperature, seed=0, chat=False
    )
    base = resolve_base("builtin:smollm2-135m-instruct")
    numbers: dict[str, Any] = {
        "prompts": len(texts),
        "max_new_tokens": args.tokens,
        "temperature": args.temperature,
        "dtype": args.dtype,
        "batch_size": args.batch_size,
    }
    results = {}
    for mode in ("batched", "one_prompt"):
        backend = HFDifferentialBackend(
            base,
            adapter_dir(args.adapter),
            dtype=args.dtype,
            device="cpu",
            batch_size=args.batch_size,
        )
        try:
            out, seconds, recomputed = _run(backend, texts, settings, batched=mode == "batched")
        finally:
            backend.close()
        tokens = sum(g.new_tokens for g in out)
        results[mode] = out
        numbers[mode] = {
            "seconds": round(seconds, 3),
            "new_tokens": tokens,
            "tokens_per_s": round(tokens / seconds, 1),
            "near_ties_redecided": recomputed,
        }
        print(
            f"{mode:>10}: {tokens} tokens in {seconds:.2f} s = {tokens / seconds:.1f} tokens/s "
            f"({recomputed} near-tie(s) re-decided)"
        )
    same = results["batched"] == results["one_prompt"]
    numbers["batched_equals_one_prompt"] = same
    numbers["speedup"] = round(
        numbers["batched"]["tokens_per_s"] / numbers["one_prompt"]["tokens_per_s"], 2
    )
    print(f"speed-up {numbers['speedup']}x; batched == one prompt: {same}")
    if args.json:
        Path(args.json).write_text(json.dumps(numbers, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
