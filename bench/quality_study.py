"""Measure sway's false-positive rate and power; write every table to JSON and markdown.

    python bench/quality_study.py --backend dummy   --trials 1000 --out docs/quality/dummy.json
    python bench/quality_study.py --backend tiny    --trials 100  --out docs/quality/tiny.json
    python bench/quality_study.py --backend smollm2 --trials 200 --pool 900 --ref-pool 120 \\
        --out docs/quality/smollm2.json

FPR: a null adapter of the trained norm poses as the fine-tune ("impostor", the
norm-matched construction) and is judged against K nulls of each construction
with each calibration method; for init_scale and permuted nulls an
"exchangeable" row also uses an impostor of the null's own construction, which
isolates the calibration method from the choice of null. Power (dummy only):
the dummy backend's adapter with a planted signal of growing strength.
smollm2: the shipped ``strong``/``weak`` adapters' z and p at each K too.

On HF backends the studies share one memoising backend and one seed layout
(trial t at K uses seeds ``t·(K+1) …``), so each null adapter is scored once and
reused across K and methods; ``--pool N`` caps the seeds per construction, which
gives ``min(trials, N // (K+1))`` independent trials at each K.
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
from scipy import stats

from dlm_sway.core.calibration import Method
from dlm_sway.core.scoring import NullCalibratedBackend, NullConstruction
from dlm_sway.suite.quality import (
    DEFAULT_THRESHOLDS,
    StudyResult,
    TrialRecord,
    fpr_study,
    power_study,
    run_trial,
)

ROOT = Path(__file__).resolve().parents[1]
CELLS: tuple[tuple[NullConstruction, NullConstruction, Method], ...] = (
    # (null construction, impostor construction, method)
    ("norm_matched", "norm_matched", "t_prediction"),
    ("norm_matched", "norm_matched", "reference_z"),
    ("init_scale", "norm_matched", "reference_z"),
    ("init_scale", "norm_matched", "t_prediction"),
    ("init_scale", "init_scale", "reference_z"),
    ("init_scale", "init_scale", "t_prediction"),
    ("permuted", "norm_matched", "t_prediction"),
    ("permuted", "permuted", "t_prediction"),
)
STRENGTHS = (0.0, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.5)


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- backends


class _MemoView:
    """A dummy base view that remembers its dists: the base never changes, and the dummy
    backend (unlike the HF one) recomputes it for every null. Same numbers, less time."""

    def __init__(self, inner: Any, cache: dict[tuple[str, int], Any]) -> None:
        self._inner = inner
        self._cache = cache

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def next_token_dist(self, prompt: str, top_k: int = 256) -> Any:
        key = (prompt, top_k)
        if key not in self._cache:
            self._cache[key] = self._inner.next_token_dist(prompt, top_k)
        return self._cache[key]

    def next_token_dist_batch(self, prompts: Sequence[str], top_k: int = 256) -> list[Any]:
        return [self.next_token_dist(p, top_k) for p in prompts]


#: The dummy base depends only on the prompt text, so one cache serves every instance.
_DUMMY_BASE: dict[tuple[str, int], Any] = {}


def memo_dummy(**options: Any) -> Any:
    from contextlib import contextmanager

    from dlm_sway.backends.dummy import DummyDifferentialBackend

    class MemoDummy(DummyDifferentialBackend):
        @contextmanager
        def _memo_base(self) -> Any:
            with self._view("base", lambda seed: 0.0) as view:
                yield _MemoView(view, _DUMMY_BASE)

        def as_base(self) -> Any:
            return self._memo_base()

    return MemoDummy(**options)


def dummy_setup() -> tuple[Callable[[], NullCalibratedBackend], list[str], dict[str, Any]]:
    from dlm_sway.demo.assets import prompts

    # planted=0: the inner adapter is itself a random direction (matters for permuted nulls).
    return (
        lambda: memo_dummy(planted=0.0),
        prompts()[:8],
        {"model": "dummy (torch-free, vocab 256)", "strength": 0.5},
    )


def hf_setup(kind: str) -> tuple[NullCalibratedBackend, list[str], dict[str, Any]]:
    from dlm_sway.backends.hf import HFDifferentialBackend

    if kind == "tiny":
        import tempfile

        sys.path.insert(0, str(ROOT / "tests" / "integration"))
        from tiny_model import CORPUS, build_tiny_assets

        assets = build_tiny_assets(Path(tempfile.mkdtemp(prefix="sway_quality_")))
        backend = HFDifferentialBackend(
            str(assets.base), assets.adapter, batch_size=16, cache_size=200_000
        )
        return backend, list(CORPUS[:6]), {"model": "tiny Llama (2 layers, hidden 64)"}
    from dlm_sway.backends.builtin_models import ensure_converted
    from dlm_sway.demo.assets import adapter_dir, prompts

    backend = HFDifferentialBackend(
        str(ensure_converted()),
        adapter_dir("strong"),
        dtype="fp32",
        device="cpu",
        cache_size=200_000,
    )
    return backend, prompts(), {"model": "SmolLM2-135M-Instruct fp32 CPU", "adapter": "strong"}


# --------------------------------------------------------------------------- studies


def fpr_cell(res: StudyResult) -> dict[str, Any]:
    out = res.to_dict()
    emp = [r.p_empirical for r in res.records if r.p_empirical is not None]
    if emp:
        out["empirical_p_le_05"] = {"passes": sum(p <= 0.05 for p in emp), "trials": len(emp)}
    return out


def run_fpr(
    make: Callable[[], NullCalibratedBackend],
    prompts: Sequence[str],
    ks: Sequence[int],
    trials_for: Callable[[int, NullConstruction], int],
    cells: Sequence[tuple[NullConstruction, NullConstruction, Method]],
) -> tuple[list[dict[str, Any]], dict[int, StudyResult]]:
    out: list[dict[str, Any]] = []
    keep: dict[int, StudyResult] = {}
    memo: dict[Any, Any] = {}
    for k in ks:
        for null, ft, method in cells:
            n = trials_for(k, null)
            if n < 1:
                continue
            res = fpr_study(
                make,
                trials=n,
                runs=k,
                construction=null,
                method=method,
                prompts=prompts,
                ft_construction=ft,
                layout_memo=memo,
            )
            if (null, ft, method) == ("norm_matched", "norm_matched", "t_prediction"):
                keep[k] = res
            a, b = res.rates
            log(
                f"  K={k:2d} null={null:12s} impostor={ft:12s} {method:12s} n={n:4d} "
                f"FPR@1.645={a.rate:.3f} FPR@3={b.rate:.4f} ({res.wall_s:.1f}s)"
            )
            out.append(fpr_cell(res))
    return out, keep


def run_power(
    prompts: Sequence[str], ks: Sequence[int], trials: int, strengths: Sequence[float]
) -> list[dict[str, Any]]:
    def make(strength: float, trial: int) -> Any:
        # adapter_seed salts never meet the null salts (1_000_003 + seed).
        return memo_dummy(planted=strength, adapter_seed=100 + trial)

    out: list[dict[str, Any]] = []
    for k in ks:
        res = power_study(make, strengths=strengths, trials=trials, runs=k, prompts=prompts)
        for r in res:
            a, b = r.rates
            log(
                f"  K={k:2d} planted={r.config['strength']:<5g} power@1.645={a.rate:.3f} @3={b.rate:.3f}"
            )
            out.append(r.to_dict())
    return out


def normality(records: Sequence[TrialRecord]) -> dict[str, Any]:
    """Shape of the pooled null samples (i.i.d. draws of one null distribution)."""
    raw = np.concatenate([np.asarray(r.null_samples) for r in records])
    out: dict[str, Any] = {"n": int(raw.size)}
    for scale, xs in (("raw", raw), ("log", np.log(np.maximum(raw, 1e-12)))):
        sample = xs[:5000]
        out[scale] = {
            "mean": float(xs.mean()),
            "sd": float(xs.std(ddof=1)),
            "cv": float(xs.std(ddof=1) / abs(xs.mean())) if xs.mean() else None,
            "skew": float(stats.skew(xs)),
            "excess_kurtosis": float(stats.kurtosis(xs)),
            "shapiro_p": float(stats.shapiro(sample).pvalue) if sample.size >= 3 else None,
        }
    return out


def run_adapters(prompts: Sequence[str], ks: Sequence[int]) -> list[dict[str, Any]]:
    from dlm_sway.backends.builtin_models import ensure_converted
    from dlm_sway.backends.hf import HFDifferentialBackend
    from dlm_sway.demo.assets import adapter_dir

    out: list[dict[str, Any]] = []
    for name in ("strong", "weak"):
        backend = HFDifferentialBackend(
            str(ensure_converted()), adapter_dir(name), dtype="fp32", device="cpu"
        )
        modes: list[tuple[NullConstruction, Method, Sequence[int]]] = [
            ("norm_matched", "t_prediction", ks),
            ("init_scale", "reference_z", [3]),
        ]
        for null, method, kk in modes:
            for k in kk:
                r = run_trial(
                    backend,
                    prompts,
                    runs=k,
                    construction=null,
                    method=method,
                    thresholds=DEFAULT_THRESHOLDS,
                    seed_base=1000,
                )
                row = {
                    "adapter": name,
                    "construction": null,
                    "method": method,
                    "k": k,
                    "raw_js": r.raw,
                    "z": r.z,
                    "p": r.p_value,
                    "p_empirical": r.p_empirical,
                    "effect_ratio": r.effect_ratio,
                    "null_median": float(np.median(r.null_samples)),
                    "pass_z_1.645": r.passed[0],
                    "pass_z_3": r.passed[1],
                    "pass_default": r.passed[1] and r.raw >= 0.02,
                }
                log(f"  {name} {null} {method} K={k}: JS={r.raw:.4g} z={r.z:.2f} p={r.p_value:.3g}")
                out.append(row)
        backend.close()
    return out


# --------------------------------------------------------------------------- markdown


def pct(x: float) -> str:
    return f"{100 * x:.2f}%" if x < 0.1 else f"{100 * x:.1f}%"


def fpr_table(cells: list[dict[str, Any]]) -> str:
    lines = [
        "| null | impostor | method | K | trials | FPR z≥1.645 (α=5%) [Wilson 95%] "
        "| FPR z≥3 (α=0.135%) [Wilson 95%] |",
        "|---|---|---|---|---|---|---|",
    ]
    for c in cells:
        a, b = c["rates"]
        lines.append(
            f"| {c['construction']} | {c['ft_construction']} | {c['method']} | {c['k']} "
            f"| {c['trials']} | {a['passes']} = {pct(a['rate'])} [{pct(a['wilson95'][0])}, "
            f"{pct(a['wilson95'][1])}] | {b['passes']} = {pct(b['rate'])} "
            f"[{pct(b['wilson95'][0])}, {pct(b['wilson95'][1])}] |"
        )
    return "\n".join(lines)


def power_table(cells: list[dict[str, Any]], ks: Sequence[int]) -> str:
    strengths = sorted({c["strength"] for c in cells})
    head = "| planted | " + " | ".join(f"K={k} z≥1.645 / z≥3" for k in ks) + " |"
    lines = [head, "|---|" + "---|" * len(ks)]
    for s in strengths:
        row = [f"| {s:g} "]
        for k in ks:
            c = next(c for c in cells if c["strength"] == s and c["k"] == k)
            a, b = c["rates"]
            row.append(f"| {a['rate']:.3f} / {b['rate']:.3f} ")
        lines.append("".join(row) + "|")
    return "\n".join(lines)


def adapter_table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| adapter | null | method | K | mean JS | null median | ×null | z | p | p_emp |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        emp = "—" if r["p_empirical"] is None else f"{r['p_empirical']:.3g}"
        ratio = "—" if r["effect_ratio"] is None else f"{r['effect_ratio']:.3g}"
        lines.append(
            f"| {r['adapter']} | {r['construction']} | {r['method']} | {r['k']} "
            f"| {r['raw_js']:.4g} | {r['null_median']:.4g} | {ratio} | {r['z']:+.2f} "
            f"| {r['p']:.3g} | {emp} |"
        )
    return "\n".join(lines)


# --------------------------------------------------------------------------- main


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backend", choices=["dummy", "tiny", "smollm2"], default="dummy")
    ap.add_argument("--trials", type=int, default=1000, help="trials per FPR/power cell")
    ap.add_argument("--ks", default="3,5,10,20", help="numbers of null adapters")
    ap.add_argument("--out", required=True, help="JSON file to write")
    ap.add_argument("--pool", type=int, default=0, help="HF: seeds per construction (0: no cap)")
    ap.add_argument("--ref-pool", type=int, default=0, help="HF: seeds for init_scale/permuted")
    ap.add_argument("--power-trials", type=int, default=500, help="dummy: trials per power cell")
    ap.add_argument("--no-permuted", action="store_true", help="skip permuted-null cells")
    ap.add_argument(
        "--threads", type=int, default=0, help="torch threads (0: 1 for tiny, else torch's default)"
    )
    args = ap.parse_args()
    threads = args.threads or (1 if args.backend == "tiny" else 0)
    if threads and args.backend != "dummy":
        import torch

        torch.set_num_threads(threads)
    os.environ["SWAY_DISABLE_NULL_CACHE"] = "1"
    ks = [int(k) for k in args.ks.split(",")]
    t0 = time.perf_counter()
    cells = [c for c in CELLS if not (args.no_permuted and c[0] == "permuted")]

    def trials_for(k: int, null: NullConstruction) -> int:
        pool = args.pool if null == "norm_matched" else (args.ref_pool or args.pool)
        return args.trials if not pool else min(args.trials, pool // (k + 1))

    result: dict[str, Any] = {
        "backend": args.backend,
        "command": "python " + " ".join(sys.argv),
        "ks": ks,
        "trials": args.trials,
        "thresholds": list(DEFAULT_THRESHOLDS),
        "settings": "delta_kl, assert_mean_gte 0 (null comparison decides), null cache off",
        "platform": {
            "python": platform.python_version(),
            "machine": platform.machine(),
            "cpus": os.cpu_count(),
            "torch_threads": threads or None,
        },
    }
    if args.backend == "dummy":
        make, prompts, meta = dummy_setup()
    else:
        backend, prompts, meta = hf_setup(args.backend)
        make = lambda: backend  # noqa: E731 — one shared, memoising backend
        meta["adapter_norm_total"] = float(
            np.sqrt(sum(v * v for v in backend.adapter_norms().values()))  # type: ignore[attr-defined]
        )
    result.update(meta, prompts=len(prompts))
    log(f"[{args.backend}] FPR studies on {len(prompts)} prompts")
    result["fpr"], keep = run_fpr(make, prompts, ks, trials_for, cells)
    if keep:
        biggest = keep[max(keep)]
        result["null_shape"] = {"k": max(keep), **normality(biggest.records)}
    if args.backend == "dummy":
        log("[dummy] power")
        result["power"] = run_power(prompts, ks, args.power_trials, STRENGTHS)
    if args.backend == "smollm2":
        log("[smollm2] shipped adapters")
        result["adapters"] = run_adapters(prompts, ks)
    result["wall_s"] = time.perf_counter() - t0

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1, default=float) + "\n", encoding="utf-8")
    print(f"## {args.backend}: FPR (impostor = null adapter presented as the fine-tune)\n")
    print(fpr_table(result["fpr"]))
    if "power" in result:
        print("\n## dummy: power vs planted strength (norm_matched + t_prediction)\n")
        print(power_table(result["power"], ks))
    if "adapters" in result:
        print("\n## smollm2: shipped adapters\n")
        print(adapter_table(result["adapters"]))
    if "null_shape" in result:
        print(f"\nnull shape: {json.dumps(result['null_shape'])}")
    print(f"\nwall {result['wall_s']:.0f}s -> {out}")


if __name__ == "__main__":
    main()
