"""The demo's suite: what ``sway autogen`` builds from the bundled document.

The demo runs the very spec a user gets from ``sway autogen document.md``, so it
shows every probe that fits the document, not a hand-picked pair. ``quick``
(the default of ``sway demo``) keeps every probe and the null count but shrinks
their sizes (:data:`QUICK`), because the full sizes cost minutes per adapter on
a laptop CPU: most of the time goes to the generation probes, which decode
under the base, the fine-tune and every null adapter.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

#: Per probe kind: the fields ``quick`` changes and their smaller values. The
#: prompt lists autogen wrote are cut to their first N ("prompts": N).
QUICK: dict[str, dict[str, Any]] = {
    "delta_kl": {"prompts": 8},
    "section_internalization": {"max_prose_chars": 400},
    "calibration_drift": {"items_limit": 30},
    "leakage": {
        "max_windows": 3,
        "max_new_tokens": 24,
        "prefix_chars": 192,
        "continuation_chars": 96,
    },
    "style_fingerprint": {"max_derived_prompts": 4, "max_new_tokens": 48, "min_words": 100},
    "external_perplexity": {"chunks": 3, "chunk_chars": 400},
    "prompt_collapse": {"prompts": 2, "context_lengths": [0, 128, 256]},
    "adapter_ablation": {"prompts": 3},
}


def demo_suite(adapter: str | Path, *, runs: int, quick: bool) -> dict[str, Any]:
    """The autogen spec of the bundled document for ``adapter`` (paths relative to the
    document's folder), with ``runs`` null adapters and, if ``quick``, :data:`QUICK` sizes."""
    from dlm_sway.core.documents import load_document
    from dlm_sway.demo.assets import DEMO_BASE, document_path
    from dlm_sway.suite.autogen import build_spec

    document = load_document(document_path())
    spec, _ = build_spec(
        document, base=DEMO_BASE, adapter=str(adapter), out_dir=document_path().parent
    )
    spec["models"]["ft"]["dtype"] = "fp32"
    for entry in spec["suite"]:
        if entry["kind"] == "null_adapter":
            entry["runs"] = runs
        if quick:
            for key, value in QUICK.get(entry["kind"], {}).items():
                entry[key] = entry[key][:value] if key == "prompts" else value
    return spec


#: The reference's null: Gaussian A and B of a fixed std, whatever the adapter's size.
FIXED_NOISE_STD = 0.02


def contrast_suite(adapter: str | Path, *, runs: int, quick: bool) -> dict[str, Any]:
    """``delta_kl`` of the demo suite judged against fixed-noise nulls (std
    :data:`FIXED_NOISE_STD`) instead of norm-matched ones: the reference's yardstick,
    which any adapter far larger than its noise clears, learned or not."""
    spec = demo_suite(adapter, runs=runs, quick=quick)
    headline = next(e for e in spec["suite"] if e["kind"] == "delta_kl")
    null = {
        "name": "fixed_noise_nulls",
        "kind": "null_adapter",
        "runs": runs,
        "null": "init_scale",
        "init_scale": FIXED_NOISE_STD,
        "calibrate_kinds": ["delta_kl"],
    }
    spec.pop("dlm_source", None)
    spec["models"]["ft"]["adapter"] = str(Path(adapter).resolve())
    spec["suite"] = [null, headline]
    return spec


__all__ = ["FIXED_NOISE_STD", "QUICK", "contrast_suite", "demo_suite"]
