"""Power and false-positive rate of the paired (per-prompt) null comparisons.

    python bench/power_study.py --backend dummy --trials 2000 --ratios 1.05,1.1,1.5,2,3,5 \\
        --out docs/quality/power_dummy.json
    python bench/power_study.py --backend tiny  --trials 1000 --tune-draws 32 \\
        --out docs/quality/power_tiny.json
    python bench/power_study.py --backend smollm2 --trials 40 --ks 10 --out power_smollm2.json

Every method of :mod:`dlm_sway.core.paired` (``mean_t`` is what the probes do
today) judges the same trials. A pool of norm-matched null adapters is scored
once, one row of per-prompt JS divergences each (exactly delta_kl's per-prompt
values); FPR trials take K + 1 disjoint rows (the last one poses as the
adapter), power trials take K disjoint rows and one planted adapter. Pools are
shared across K, so trials are independent within a cell, not across K.

Planted adapters hit a target *effect ratio* r (adapter mean JS ÷ median null
mean JS, the number reports print) by scaling, found by bisection:

* ``random``: a fresh random direction (a norm-matched null at an unused seed)
  whose norm is scaled by c — the effect is spread evenly over the prompts;
* ``trained``: the trained adapter scaled by λ (``as_scaled_adapter``) — its
  own per-prompt profile. On the dummy each trial uses another trained adapter
  (``adapter_seed``); the tiny model and SmolLM2 have one trained adapter, so
  there the trials vary only the nulls.

The nulls stay at the trained adapter's norm throughout: "an adapter whose
effect is r× that of random adapters of the trained size".
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from dlm_sway.core.paired import EXCHANGEABLE_METHODS, PAIRED_METHODS
from dlm_sway.suite.power import (
    ORACLE,
    PairedStudy,
    base_dists,
    null_table,
    paired_study,
    prompt_divergences,
    scale_for_ratio,
)
from dlm_sway.suite.quality import DEFAULT_THRESHOLDS, nominal_alpha

ROOT = Path(__file__).resolve().parents[1]
RATIOS = (1.5, 2.0, 3.0, 5.0)
#: Seeds of planted random directions start here, far from the null pool's seeds.
ADAPTER_SEED0 = 10_000_000
#: Adapters averaged when tuning a scale to a ratio.
TUNE_DRAWS = 8
#: The tiny model's random base saturates: its JS hardly grows with a LoRA's size beyond
#: ~0.2× the trained norm (a 20× random LoRA has 1.15× the JS of a 1× one), so no scaling
#: reaches 1.5×. Its nulls sit at 0.05× the trained norm, in the small-change regime
#: (JS ∝ size²) where real adapters and their nulls live.
TINY_NULL_SCALE = 0.05


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- backends


def setup(kind: str) -> tuple[Any, list[str], dict[str, Any]]:
    if kind == "dummy":
        from dlm_sway.backends.dummy import DummyDifferentialBackend
        from dlm_sway.demo.assets import prompts

        return (
            DummyDifferentialBackend(planted=1.0),
            prompts()[:8],
            {"model": "dummy (torch-free, vocab 256)"},
        )
    from dlm_sway.backends.hf import HFDifferentialBackend

    if kind == "tiny":
        import tempfile

        sys.path.insert(0, str(ROOT / "tests" / "integration"))
        from tiny_model import CORPUS, build_tiny_assets

        assets = build_tiny_assets(Path(tempfile.mkdtemp(prefix="sway_power_")))
        backend = HFDifferentialBackend(str(assets.base), assets.adapter, cache_size=1)
        meta = {"model": "tiny Llama (2 layers, hidden 64)", "null_scale": TINY_NULL_SCALE}
        return backend, list(CORPUS[:6]), meta
    from dlm_sway.backends.builtin_models import ensure_converted
    from dlm_sway.demo.assets import adapter_dir, prompts

    backend = HFDifferentialBackend(
        str(ensure_converted()), adapter_dir("strong"), dtype="fp32", device="cpu", cache_size=1
    )
    return backend, prompts(), {"model": "SmolLM2-135M-Instruct fp32 CPU", "adapter": "strong"}


def planters(
    kind: str, backend: Any, prompts: list[str], base: Any, null_scale: float
) -> dict[str, Callable[[float, int], np.ndarray]]:
    """Per planting mode, ``plant(scale, draw)`` → the per-prompt JS of one planted adapter
    (``scale`` multiplies the norm: of a random direction of the nulls' norm, or of the
    trained adapter itself)."""

    def random_dir(scale: float, draw: int) -> np.ndarray:
        size = null_scale * scale
        with backend.as_null_adapter(
            ADAPTER_SEED0 + draw, rank_scale=size * size, construction="norm_matched"
        ) as view:
            return prompt_divergences(view, base, prompts)

    def trained(scale: float, draw: int) -> np.ndarray:
        if kind == "dummy":
            from dlm_sway.backends.dummy import DummyDifferentialBackend

            own = DummyDifferentialBackend(planted=1.0, adapter_seed=100 + draw)
            with own.as_scaled_adapter(scale) as view:
                return prompt_divergences(view, base, prompts)
        with backend.as_scaled_adapter(scale) as view:
            return prompt_divergences(view, base, prompts)

    return {"random": random_dir, "trained": trained}


# --------------------------------------------------------------------------- studies


def pool_shape(pool: np.ndarray) -> dict[str, Any]:
    """What the prompt dimension offers: per-prompt spread and cross-prompt correlation."""
    logs = np.log(pool)
    corr = np.corrcoef(logs.T)
    off = corr[~np.eye(corr.shape[0], dtype=bool)]
    means = pool.mean(axis=1)
    sd = logs.std(axis=0, ddof=1)
    return {
        "nulls": int(pool.shape[0]),
        "prompts": int(pool.shape[1]),
        "null_median_mean_js": float(np.median(means)),
        "per_prompt_log_sd": [float(sd.min()), float(np.median(sd)), float(sd.max())],
        "cross_prompt_corr_mean": float(off.mean()) if off.size else None,
        "log_mean_sd": float(np.log(means).std(ddof=1)),
    }


def plant(
    make: Callable[[float, int], np.ndarray],
    ratio: float,
    median: float,
    trials: int,
    *,
    hi: float,
    draws: int = TUNE_DRAWS,
) -> tuple[float, np.ndarray]:
    def measured(scale: float) -> float:
        rows = [make(scale, d) for d in range(draws)]
        return float(np.mean([r.mean() for r in rows]) / median)

    guess = ratio**0.5  # JS ∝ size² for small changes
    try:
        scale = scale_for_ratio(measured, ratio, lo=guess / 2, hi=guess * 2, rtol=0.01)
    except ValueError:
        scale = scale_for_ratio(measured, ratio, lo=1e-3, hi=hi, rtol=0.01)
    return scale, np.array([make(scale, d) for d in range(trials)])


def run_backend(args: argparse.Namespace) -> dict[str, Any]:
    ks = sorted(int(k) for k in args.ks.split(","))
    ratios = [float(r) for r in args.ratios.split(",")]
    backend, prompts, meta = setup(args.backend)
    base = base_dists(backend, prompts)
    t0 = time.perf_counter()
    n_pool = args.trials * (max(ks) + 1)
    log(f"[{args.backend}] scoring {n_pool} null adapters on {len(prompts)} prompts")
    null_scale = float(meta.get("null_scale", 1.0))
    pool = null_table(backend, prompts, range(n_pool), base=base, rank_scale=null_scale**2)
    meta["pool_s"] = time.perf_counter() - t0
    shape = pool_shape(pool)
    median = shape["null_median_mean_js"]
    log(f"  pool {meta['pool_s']:.0f}s {json.dumps(shape)}")
    out: dict[str, Any] = {**meta, "prompts": len(prompts), "pool": shape, "fpr": [], "power": []}
    for k in ks:
        res = paired_study(pool, k=k, config={"backend": args.backend})
        out["fpr"].append(res.to_dict())
        log(f"  FPR K={k}: " + summary(res))
    for mode, make in planters(args.backend, backend, prompts, base, null_scale).items():
        # one trained adapter on HF backends: the same row for every trial
        trials = 1 if mode == "trained" and args.backend != "dummy" else args.trials
        for ratio in ratios:
            t1 = time.perf_counter()
            # the trained adapter's scale is relative to its own norm, not the nulls'
            hi = args.max_scale * (null_scale if mode == "trained" else 1.0)
            scale, adapters = plant(make, ratio, median, trials, hi=hi, draws=args.tune_draws)
            if adapters.shape[0] == 1:
                adapters = np.repeat(adapters, args.trials, axis=0)
            for k in ks:
                res = paired_study(
                    pool,
                    k=k,
                    adapters=adapters,
                    config={"backend": args.backend, "mode": mode, "ratio": ratio, "scale": scale},
                )
                out["power"].append(res.to_dict())
                log(
                    f"  {mode} {ratio}x (scale {scale:.3g}) K={k}: "
                    + summary(res)
                    + f" ({time.perf_counter() - t1:.0f}s)"
                )
    if hasattr(backend, "close"):
        backend.close()
    return out


def summary(res: PairedStudy) -> str:
    return " ".join(
        f"{m}={res.at(m, DEFAULT_THRESHOLDS[0]).rate:.3f}/{res.at(m, DEFAULT_THRESHOLDS[1]).rate:.3f}"
        for m in res.rates
    )


# --------------------------------------------------------------------------- markdown


def pct(x: float) -> str:
    return f"{100 * x:.1f}%" if x >= 0.1 or x == 0 else f"{100 * x:.2f}%"


def _rates(cell: dict[str, Any], method: str) -> tuple[dict[str, Any], dict[str, Any]]:
    a, b = cell["rates"][method]
    return a, b


def fpr_table(cells: list[dict[str, Any]]) -> str:
    ks = [c["k"] for c in cells]
    head = "| method | " + " | ".join(
        f"K={k} ({c['trials']} trials)" for k, c in zip(ks, cells, strict=True)
    )
    lines = [head + " |", "|---|" + "---|" * len(ks)]
    for m in (*PAIRED_METHODS, ORACLE):
        row = [f"| {label(m)} "]
        for c in cells:
            a, b = _rates(c, m)
            flag = lambda r: "**" if r["passes"] > r["binomial_99_allowance"] else ""  # noqa: E731
            row.append(
                f"| {flag(a)}{pct(a['rate'])}{flag(a)} · {flag(b)}{pct(b['rate'])}{flag(b)} "
            )
        lines.append("".join(row) + "|")
    c0 = cells[0]
    a, b = _rates(c0, PAIRED_METHODS[0])
    lines.append(
        f"\nAllowance (binomial 99%) at K={c0['k']}: {a['binomial_99_allowance']}/{c0['trials']} "
        f"at z≥1.645, {b['binomial_99_allowance']}/{c0['trials']} at z≥3; **bold** exceeds it."
    )
    return "\n".join(lines)


def power_table(cells: list[dict[str, Any]], mode: str, ks: Sequence[int]) -> str:
    ratios = sorted({c["ratio"] for c in cells if c["mode"] == mode})
    head = "| method | " + " | ".join(f"K={k} {r:g}×" for k in ks for r in ratios) + " |"
    lines = [head, "|---|" + "---|" * (len(ks) * len(ratios))]
    pick = {(c["k"], c["ratio"]): c for c in cells if c["mode"] == mode}
    for m in (*PAIRED_METHODS, ORACLE):
        row = [f"| {label(m)} "]
        for k in ks:
            for r in ratios:
                a, b = _rates(pick[(k, r)], m)
                row.append(f"| {a['rate']:.2f} · {b['rate']:.2f} ")
        lines.append("".join(row) + "|")
    realised = " ".join(f"{r:g}×→{pick[(ks[0], r)]['ratio_median']:.2f}" for r in ratios)
    lines.append(
        f"\nRealised median ratio per cell: {realised}; trials per cell: "
        f"{pick[(ks[0], ratios[0])]['trials']}."
    )
    return "\n".join(lines)


def label(method: str) -> str:
    if method == ORACLE:
        return f"`{ORACLE}` (knows the null: K → ∞, not a test)"
    tag = "" if method in EXCHANGEABLE_METHODS else " (assumes independent prompts)"
    return f"`{method}`{' (today)' if method == 'mean_t' else ''}{tag}"


def markdown(result: dict[str, Any]) -> str:
    ks = sorted({c["k"] for c in result["fpr"]})
    parts = [
        f"### {result['backend']}: {result['model']}, {result['prompts']} prompts",
        f"\nNull pool: {json.dumps(result['pool'])}\n",
        "FPR (impostor = a null of the same construction), z≥1.645 · z≥3:\n",
        fpr_table(result["fpr"]),
    ]
    for mode in ("random", "trained"):
        parts += [
            f"\nPower, planted `{mode}`, z≥1.645 · z≥3:\n",
            power_table(result["power"], mode, ks),
        ]
    return "\n".join(parts)


# --------------------------------------------------------------------------- main


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backend", choices=["dummy", "tiny", "smollm2"], default="dummy")
    ap.add_argument("--trials", type=int, default=1000, help="trials per cell")
    ap.add_argument("--ks", default="10,20", help="numbers of null adapters")
    ap.add_argument("--ratios", default=",".join(f"{r:g}" for r in RATIOS), help="planted ratios")
    ap.add_argument(
        "--max-scale", type=float, default=20.0, help="largest scale tried when planting"
    )
    ap.add_argument("--tune-draws", type=int, default=TUNE_DRAWS, help="adapters per tuning step")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: 1 for tiny)")
    ap.add_argument("--out", required=True, help="JSON file to write")
    args = ap.parse_args()
    threads = args.threads or (1 if args.backend == "tiny" else 0)
    if threads and args.backend != "dummy":
        import torch

        torch.set_num_threads(threads)
    t0 = time.perf_counter()
    result = {
        "backend": args.backend,
        "command": "python " + " ".join(sys.argv),
        "thresholds": list(DEFAULT_THRESHOLDS),
        "nominal": [nominal_alpha(z) for z in DEFAULT_THRESHOLDS],
        "platform": {
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "torch_threads": threads or None,
        },
    }
    result.update(run_backend(args))
    result["wall_s"] = time.perf_counter() - t0
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1, default=float) + "\n", encoding="utf-8")
    print(markdown(result))
    print(f"\nwall {result['wall_s']:.0f}s -> {out}")


if __name__ == "__main__":
    main()
