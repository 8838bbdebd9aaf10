"""The demo's *impostor*: a random adapter exactly the size of the trained one.

Every LoRA module keeps the trained adapter's rank, targets, config and the
Frobenius norm of its weight change ‖scaling·B·A‖, but its directions are drawn
at random from a fixed seed. It learned nothing. Fixed-noise nulls (the
reference's std-0.02 Gaussian A and B, smaller than a trained adapter's change)
put it well above themselves by a plain z (+8.9 on the demo's prompts), so a
plain "z ≥ 3" rule passes it; sway's norm-matched nulls are random adapters of
this very size and must call it noise. That contrast is what the demo shows.

No new maths: the tensors are :func:`dlm_sway.backends.hf_lora.norm_matched_weights`
(the norm-matched null construction, ``rank_scale`` 1) drawn by
:func:`dlm_sway.backends.vllm_adapters.null_tensors` from the adapter file and
written as a PEFT directory by :func:`~dlm_sway.backends.vllm_adapters.write_adapter`.
The directory is cached per (trained weights' SHA-256, seed), so the null-stats
cache recognises it on the next run.
"""

from __future__ import annotations

import os
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

from dlm_sway.core.errors import SwayError

if TYPE_CHECKING:
    import torch

#: The demo's impostor seed. Null adapters draw from seeds derived from the suite's
#: seed and visit modules in the model's registration order; the impostor draws in
#: the weight file's natural name order, so it is never one of its own nulls.
IMPOSTOR_SEED = 1612


def impostor_cache_root() -> Path:
    """``$SWAY_IMPOSTOR_CACHE_DIR``, else ``$XDG_CACHE_HOME/dlm-sway/impostors``, else ~/.cache."""
    explicit = os.environ.get("SWAY_IMPOSTOR_CACHE_DIR")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "dlm-sway" / "impostors"


def impostor_tensors(trained: str | Path, seed: int) -> dict[str, torch.Tensor]:
    """Random A/B for every LoRA module of ``trained``, each pair scaled so that
    ‖scaling·B·A‖_F equals the trained module's (float32, keyed as in the weight file)."""
    from dlm_sway.backends.hf_load import inspect_adapter
    from dlm_sway.backends.hf_lora import norm_matched_weights
    from dlm_sway.backends.vllm_adapters import null_tensors, read_slots

    info = inspect_adapter(trained)
    slots = read_slots(info, None)
    return null_tensors(slots, seed, partial(norm_matched_weights, rank_scale=1.0))


def impostor_dir(
    trained: str | Path, seed: int = IMPOSTOR_SEED, *, root: Path | None = None
) -> Path:
    """The impostor of ``trained`` as a PEFT adapter directory, built once and cached.

    The folder is named by the trained weights' hash and the seed, and written
    atomically (a half-written one is never reused).
    """
    from dlm_sway.backends.hf_load import inspect_adapter
    from dlm_sway.backends.vllm_adapters import write_adapter

    info = inspect_adapter(trained)
    dest = (root or impostor_cache_root()) / f"{info.weights_sha256[:16]}-seed{seed}"
    if (dest / "adapter_config.json").is_file() and (dest / "adapter_model.safetensors").is_file():
        return dest
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        return write_adapter(info, dest, impostor_tensors(trained, seed))
    except OSError as exc:
        raise SwayError(
            f"cannot write the impostor adapter to {dest}: {exc.strerror or exc}; point "
            "SWAY_IMPOSTOR_CACHE_DIR at a writable folder"
        ) from None


__all__ = ["IMPOSTOR_SEED", "impostor_cache_root", "impostor_dir", "impostor_tensors"]
