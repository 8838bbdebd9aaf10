"""Does a wider batch score faster per token? The test of issue 13's "mixed-view batches".

Mixing base | fine-tuned | K nulls in one forward (PEFT ``adapter_names``) only pays
if rows get cheaper as a batch widens. This scores the same items (the general-
knowledge pack's first ``--items``) on SmolLM2 + the ``strong`` adapter at each batch
size, in alternation, and prints the median seconds per 1000 real tokens. On the
2-core machine of issue 13 it is best at 16–32 rows and slower at 64: sway's batches are already 16
wide, so mixing views would fill forwards that are already full.

    python bench/batch_width.py [--items 64] [--rounds 3] [--sizes 4 8 16 32 64]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACK = ROOT / "src" / "dlm_sway" / "data" / "general_pack.jsonl"
ADAPTER = ROOT / "src" / "dlm_sway" / "demo" / "adapters" / "strong"


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--items", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--sizes", type=int, nargs="+", default=[4, 8, 16, 32, 64])
    args = parser.parse_args()
    if args.items < 1 or args.rounds < 1 or min(args.sizes) < 1:
        parser.error("--items, --rounds and every --sizes value must be >= 1")

    from dlm_sway.backends.builtin_models import resolve_base
    from dlm_sway.backends.hf import HFDifferentialBackend

    lines = PACK.read_text("utf-8").splitlines()[: args.items]
    pairs = [(item["prompt"], item["gold"]) for item in map(json.loads, lines)]
    backend = HFDifferentialBackend(
        resolve_base("builtin:smollm2-135m-instruct"), ADAPTER, dtype="fp32", device="cpu"
    )
    scorer = backend._live_scorer()
    tokens = sum(len(scorer.encode(p + c)) for p, c in pairs)
    times: dict[int, list[float]] = {b: [] for b in args.sizes}
    with backend, backend.as_finetuned():
        scorer.logprobs_of(pairs[:4], batched=True)  # warm-up
        for r in range(args.rounds):
            for size in args.sizes if r % 2 == 0 else args.sizes[::-1]:
                scorer.batch_size = size
                start = time.perf_counter()
                scorer.logprobs_of(pairs, batched=True)
                times[size].append(time.perf_counter() - start)
    print(f"{len(pairs)} items, {tokens} real tokens, {args.rounds} rounds (median)")
    print(f"{'batch':>6s} {'s/1k tokens':>12s}")
    for size, values in times.items():
        print(f"{size:6d} {statistics.median(values) / tokens * 1000:12.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
