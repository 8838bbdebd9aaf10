"""Built-in probes. Importing this package registers every probe kind."""

from dlm_sway.probes import (
    adapter_ablation,
    calibration_drift,
    cluster_kl,
    delta_kl,
    external_perplexity,
    null_adapter,
    paraphrase_invariance,
    preference_flip,
    prompt_collapse,
    section_internalization,
)

__all__ = [
    "adapter_ablation",
    "calibration_drift",
    "cluster_kl",
    "delta_kl",
    "external_perplexity",
    "null_adapter",
    "paraphrase_invariance",
    "preference_flip",
    "prompt_collapse",
    "section_internalization",
]
