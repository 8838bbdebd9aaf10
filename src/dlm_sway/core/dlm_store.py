"""Where a ``.dlm`` document's model and trained adapter live (no ``dlm`` import).

Base-model registry keys map to model ids; the store under ``$DLM_HOME`` holds
adapter versions behind a ``current.txt`` pointer relative to the store root.
"""

from __future__ import annotations

import os
from pathlib import Path

from dlm_sway.core.errors import SpecValidationError
from dlm_sway.core.sections import Document

# Registry keys → HF ids (dlm 0.10 registry, text bases). SmolLM2-135M ships with sway.
_BUILTIN_SMOLLM2 = "builtin:smollm2-135m-instruct"
_REGISTRY: dict[str, str] = {
    "smollm2-135m": _BUILTIN_SMOLLM2,
    "smollm2-135m-instruct": _BUILTIN_SMOLLM2,
    "smollm2-360m": "HuggingFaceTB/SmolLM2-360M-Instruct",
    "smollm2-1.7b": "HuggingFaceTB/SmolLM2-1.7B-Instruct",
    "smollm3-3b": "HuggingFaceTB/SmolLM3-3B",
    "qwen2.5-0.5b": "Qwen/Qwen2.5-0.5B-Instruct",
    "qwen2.5-1.5b": "Qwen/Qwen2.5-1.5B-Instruct",
    "qwen2.5-3b": "Qwen/Qwen2.5-3B-Instruct",
    "qwen2.5-coder-1.5b": "Qwen/Qwen2.5-Coder-1.5B-Instruct",
    "qwen3-1.7b": "Qwen/Qwen3-1.7B",
    "qwen3-1.7b-thinking": "Qwen/Qwen3-1.7B",
    "qwen3-4b": "Qwen/Qwen3-4B",
    "qwen3-8b": "Qwen/Qwen3-8B",
    "llama-3.2-1b": "meta-llama/Llama-3.2-1B-Instruct",
    "llama-3.2-3b": "meta-llama/Llama-3.2-3B-Instruct",
    "llama-3.3-8b-instruct": "allura-forge/Llama-3.3-8B-Instruct",
    "olmo-2-7b-instruct": "allenai/OLMo-2-1124-7B-Instruct",
    "gemma-2-2b-it": "google/gemma-2-2b-it",
    "gemma-2-9b-it": "google/gemma-2-9b-it",
    "phi-3.5-mini": "microsoft/Phi-3.5-mini-instruct",
    "phi-4-mini-reasoning": "microsoft/Phi-4-mini-reasoning",
    "mixtral-8x7b-instruct": "mistralai/Mixtral-8x7B-Instruct-v0.1",
}


def resolve_base_model(key: str) -> tuple[str | None, str | None]:
    """Map a ``base_model`` value to something sway loads: (model, note-if-unmapped)."""
    if key.startswith("hf:"):
        hf_id = key[3:]
        if "/" in hf_id and not hf_id.startswith("/") and not hf_id.endswith("/"):
            return hf_id, None
        return None, f"base_model {key!r}: an 'hf:' value needs the form hf:<org>/<name>"
    if key in _REGISTRY:
        return _REGISTRY[key], None
    return None, (
        f"base_model {key!r} is not a registry key sway knows; set models.base in the spec "
        "(or use 'hf:<org>/<name>' in the .dlm)"
    )


# --- adapter discovery ----------------------------------------------------------------------


def dlm_home(home: str | Path | None = None) -> Path:
    """The dlm home: ``home`` if given, else ``$DLM_HOME``, else ``~/.dlm``."""
    if home is not None:
        return Path(home).expanduser().resolve()
    env = os.environ.get("DLM_HOME")
    if env:
        return Path(env).expanduser().resolve()
    return Path("~/.dlm").expanduser()


def dlm_store(doc: Document, *, home: str | Path | None = None) -> Path:
    """``<home>/store/<dlm_id>`` for a document parsed from a ``.dlm`` file."""
    dlm_id = doc.metadata.get("dlm_id")
    if not isinstance(dlm_id, str):
        raise SpecValidationError(
            "document has no dlm_id (only .dlm documents have a store)", source=doc.source
        )
    return dlm_home(home) / "store" / dlm_id


def find_dlm_adapter(
    doc: Document, *, home: str | Path | None = None, adapter_name: str | None = None
) -> Path | None:
    """The active adapter version directory of a ``.dlm`` document, or None.

    Reads ``<store>/adapter/current.txt`` (or ``adapter/<name>/current.txt`` for a
    named adapter; with no name and no flat pointer, the first adapter declared
    in ``training.adapters``). The pointer is relative to the **store root**. The
    directory is returned only when it holds ``adapter_config.json``.
    """
    if not isinstance(doc.metadata.get("dlm_id"), str):
        return None
    store = dlm_store(doc, home=home)
    pointer = store / "adapter" / "current.txt"
    declared = doc.metadata.get("declared_adapters")
    if adapter_name is not None:
        pointer = store / "adapter" / adapter_name / "current.txt"
    elif not pointer.is_file() and isinstance(declared, list) and declared:
        pointer = store / "adapter" / str(declared[0]) / "current.txt"
    if not pointer.is_file():
        return None
    try:
        rel = pointer.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecValidationError(
            f"cannot read the adapter pointer: {exc}", source=str(pointer)
        ) from exc
    if not rel:
        return None
    root = store.resolve()
    version_dir = (root / rel).resolve()
    if not version_dir.is_relative_to(root):
        raise SpecValidationError(
            f"pointer {rel!r} leads outside the store {root}; it must be relative to the store "
            "root, e.g. adapter/versions/v0001",
            source=str(pointer),
        )
    return version_dir if (version_dir / "adapter_config.json").is_file() else None


__all__ = ["dlm_home", "dlm_store", "find_dlm_adapter", "resolve_base_model"]
