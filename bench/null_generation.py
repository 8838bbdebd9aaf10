"""Generation under K null adapters on the real SmolLM2: one batch for all vs one null at a time.

What a calibrated generation probe costs: the same prompts decoded under each
null. ``prefetch_null_generations`` decodes them together (LoRA factors side by
side, a per-row mask); the reference opens each null view in turn. Separate
backends, so neither reads the other's cache; the order alternates per round.
Checks that every null writes the same texts both ways.

    python bench/null_generation.py [--nulls 9] [--tokens 64] [--rounds 2]
        [--batch-size 16] [--temperature 0.0] [--dtype fp32]
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

PROMPTS = [
    "Write a short note about the lighthouse keepers of",
    "Describe the Guild's founding in",
    "Tell me about the harbour at dawn:",
]


def _backend(args: argparse.Namespace) -> Any:
    from dlm_sway.backends.builtin_models import resolve_base
    from dlm_sway.backends.hf import HFDifferentialBackend
    from dlm_sway.demo.assets import adapter_dir

    return HFDifferentialBackend(
        resolve_base("builtin:smollm2-135m-instruct"),
        adapter_dir("strong"),
        dtype=args.dtype,
        batch_size=args.batch_size,
    )


def _texts(backend: Any, nulls: list[Any], settings: Any) -> dict[int, list[str]]:
    from dlm_sway.core.scoring import open_null

    out = {}
    for d in nulls:
        with open_null(backend, d) as view:
            out[d.seed] = [g.text for g in view.generate_batch(PROMPTS, settings)]
    return out


def main() -> None:
    from dlm_sway.core.scoring import GenerationSettings, NullDraw

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nulls", type=int, default=9)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--temperature", type=float, default=0.0)
    parser.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    args = parser.parse_args()
    if args.nulls < 2:
        parser.error("--nulls must be at least 2 (one null has nothing to share a batch with)")
    if not 1 <= args.tokens <= 4096 or args.rounds < 1 or args.batch_size < 1:
        parser.error("--tokens must be in [1, 4096]; --rounds and --batch-size at least 1")
    if not 0.0 <= args.temperature <= 2.0:
        parser.error("--temperature must be in [0, 2]")
    settings = GenerationSettings(
        args.tokens, temperature=args.temperature, top_p=1.0, seed=0, chat=False
    )
    nulls = [NullDraw(100 + i, 0.02, 1.0, "norm_matched") for i in range(args.nulls)]
    times: dict[str, list[float]] = {"batched": [], "one by one": []}
    for r in range(args.rounds):
        order = ["batched", "one by one"] if r % 2 == 0 else ["one by one", "batched"]
        texts = {}
        for side in order:
            with _backend(args) as backend:
                start = time.perf_counter()
                if side == "batched" and (
                    backend.prefetch_null_generations(nulls, PROMPTS, settings) is None
                ):
                    raise SystemExit("this adapter cannot be batched (DoRA / modules_to_save?)")
                texts[side] = _texts(backend, nulls, settings)
                times[side].append(time.perf_counter() - start)
        if texts["batched"] != texts["one by one"]:
            raise SystemExit(f"round {r}: the two ways wrote different texts")
    b, o = (statistics.median(times[k]) for k in ("batched", "one by one"))
    print(
        f"{args.nulls} nulls × {len(PROMPTS)} prompts × {args.tokens} tokens ({args.dtype}, "
        f"T={args.temperature:g}): batched {b:.1f} s, one by one {o:.1f} s, "
        f"ratio {b / o:.2f}; texts identical in {args.rounds} round(s)"
    )


if __name__ == "__main__":
    main()
