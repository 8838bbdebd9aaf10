"""Swap the trained LoRA adapter of a loaded PEFT model in place (``--adapters``, ``sway diff``).

Loading the base is most of a small suite's cost, and a checkpoint sweep scores
many adapters on one base, so the base loads once and each adapter replaces the
previous one under PEFT's ``default`` name:

- same structure (rank, alpha, targets, DoRA, ``modules_to_save``, patterns —
  every config field but the recorded base name, revision and version): the new
  tensors are copied into the existing LoRA modules (``set_peft_model_state_dict``,
  what ``PeftModel.from_pretrained`` does after building them);
- otherwise the ``default`` adapter is deleted and the new one attached with
  ``load_adapter``, so its modules are built from its own config.

Either way the forward equals a fresh load of that adapter bit for bit (tested).
A swap that fails (shape mismatch, a partial load the spec does not allow)
restores the previous adapter before raising, so the backend never holds half of one.
"""

from __future__ import annotations

import warnings
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from dlm_sway.backends import hf_load
from dlm_sway.core.errors import BackendLoadError

if TYPE_CHECKING:
    from peft import PeftModel

    from dlm_sway.backends.hf_load import AdapterInfo

#: Config fields that never change which modules exist or what they compute.
NON_STRUCTURAL = frozenset(
    {"base_model_name_or_path", "revision", "inference_mode", "peft_version", "auto_mapping"}
)
ADAPTER = "default"


def same_structure(old: dict[str, Any], new: dict[str, Any]) -> bool:
    """Whether ``new``'s tensors fit the modules built for ``old`` (configs equal but
    for :data:`NON_STRUCTURAL` fields)."""
    keys = (set(old) | set(new)) - NON_STRUCTURAL
    return all(old.get(k) == new.get(k) for k in keys)


def base_name(config: dict[str, Any]) -> str | None:
    """The recorded base's last path component (a hub id and its local copy agree on it)."""
    recorded = config.get("base_model_name_or_path")
    if not isinstance(recorded, str) or not recorded.strip():
        return None
    return PurePosixPath(recorded.replace("\\", "/").rstrip("/")).name or None


def check_same_base(old: AdapterInfo, new: AdapterInfo) -> None:
    a, b = base_name(old.config), base_name(new.config)
    if a is not None and b is not None and a != b:
        raise BackendLoadError(
            f"adapter {str(new.path)!r} was trained on {new.config['base_model_name_or_path']!r}, "
            f"but the model loaded for this run is the base of {str(old.path)!r} "
            f"({old.config['base_model_name_or_path']!r}): adapters compared in one run must "
            "share a base — run them separately"
        )


def _in_place(model: PeftModel, info: AdapterInfo) -> None:
    from peft import load_peft_weights, set_peft_model_state_dict

    state = load_peft_weights(str(info.path), device=str(next(model.parameters()).device))
    set_peft_model_state_dict(model, state, adapter_name=ADAPTER)


def _reattach(model: PeftModel, info: AdapterInfo) -> None:
    if ADAPTER in model.peft_config:  # absent when a failed swap is being undone
        model.delete_adapter(ADAPTER)
    model.load_adapter(str(info.path), adapter_name=ADAPTER, is_trainable=False)
    model.set_adapter(ADAPTER)


def _put(model: PeftModel, current: AdapterInfo, info: AdapterInfo) -> None:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")
        warnings.filterwarnings("ignore", message=".*Found missing adapter keys.*")
        warnings.filterwarnings("ignore", message=".*was active which is now deleted.*")
        if same_structure(current.config, info.config):
            _in_place(model, info)
        else:
            _reattach(model, info)
    model.eval()


def swap(
    model: PeftModel, current: AdapterInfo, path: str | Path, *, allow_partial: bool
) -> tuple[AdapterInfo, str | None]:
    """Load the adapter at ``path`` in place of ``current``; ``(its info, partial-load
    problem or None)``. On any failure ``current`` is put back and the error raised."""
    info = hf_load.inspect_adapter(path)  # config, peft's own checks, weights hash
    check_same_base(current, info)
    try:
        _put(model, current, info)
        problem = hf_load.coverage_problem(*hf_load.adapter_coverage(model, info), info)
        if problem is not None and not allow_partial:
            raise BackendLoadError(
                f"{problem} (to score it anyway, with a health error on the result, set "
                "models.ft.options: {allow_partial_adapter: true})"
            )
    except (RuntimeError, ValueError, KeyError, OSError, TypeError, BackendLoadError) as exc:
        _put(model, info, current)
        if isinstance(exc, BackendLoadError):
            raise
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise BackendLoadError(
            f"adapter {str(info.path)!r} does not fit the loaded base model (trained on "
            f"another model or model size?): {detail}"
        ) from exc
    return info, problem


__all__ = ["NON_STRUCTURAL", "base_name", "check_same_base", "same_structure", "swap"]
