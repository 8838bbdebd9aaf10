"""Resolve and load a base model, tokenizer and PEFT LoRA adapter for the HF backend.

Every failure a user can cause (wrong path, not an adapter, wrong adapter
type, adapter for another base) becomes a :class:`BackendLoadError` that says
what failed, where, and how to fix it. Imports torch/transformers/peft at
module level: import this module only after :func:`require_hf_stack`.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerBase

from dlm_sway.core.errors import BackendLoadError

_DTYPES: dict[str, torch.dtype] = {
    "fp32": torch.float32,
    "float32": torch.float32,
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
    "fp16": torch.float16,
    "float16": torch.float16,
}
_DTYPE_NAMES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}
_WEIGHT_FILES = ("adapter_model.safetensors", "adapter_model.bin")


@dataclass(frozen=True)
class BaseLocation:
    """Where ``from_pretrained`` should look: a directory or hub id, plus an optional GGUF file."""

    source: str
    gguf_file: str | None
    is_local: bool


@dataclass(frozen=True)
class AdapterInfo:
    path: Path
    config: dict[str, Any]
    weights_file: Path
    weights_sha256: str


def resolve_device(device: str) -> torch.device:
    """``auto`` picks CUDA, then MPS, then CPU."""
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        return torch.device(device)
    except RuntimeError as exc:
        raise BackendLoadError(
            f"unknown device {device!r}: use 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'"
        ) from exc


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """``auto``: bf16 on CUDA when supported, fp16 on MPS, otherwise fp32 (CPU halves are slow)."""
    if dtype == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
        if device.type == "mps":
            return torch.float16
        return torch.float32
    if dtype not in _DTYPES:
        raise BackendLoadError(f"unknown dtype {dtype!r}: use one of auto, fp32, bf16, fp16")
    return _DTYPES[dtype]


def dtype_name(dtype: torch.dtype) -> str:
    return _DTYPE_NAMES.get(dtype, str(dtype).removeprefix("torch."))


def _looks_like_path(base: str) -> bool:
    """Hub ids are ``name`` or ``org/name``; anything else is meant as a filesystem path."""
    return (
        base.startswith(("/", ".", "~"))
        or base.count("/") > 1
        or "\\" in base
        or base.endswith(".gguf")
    )


def resolve_base(base: str, gguf_file: str | None) -> BaseLocation:
    """Turn the user's ``base`` (dir, hub id, ``.gguf`` file) into from_pretrained arguments."""
    path = Path(base).expanduser()
    if path.is_file():
        if path.suffix != ".gguf":
            raise BackendLoadError(
                f"base model {base!r} is a file but not a .gguf file: pass the model "
                "directory (with config.json) or a .gguf file"
            )
        if gguf_file is not None and gguf_file != path.name:
            raise BackendLoadError(
                f"base {base!r} is a .gguf file but gguf_file={gguf_file!r} names another: "
                "pass either the file path or the directory plus gguf_file"
            )
        return BaseLocation(str(path.parent.resolve()), path.name, is_local=True)
    if path.is_dir():
        if gguf_file is not None and not (path / gguf_file).is_file():
            raise BackendLoadError(f"GGUF file {gguf_file!r} not found in base directory {base!r}")
        if gguf_file is None and not (path / "config.json").is_file():
            raise BackendLoadError(
                f"base model directory {base!r} has no config.json: point base at a "
                "transformers model directory, or at a .gguf file"
            )
        return BaseLocation(str(path.resolve()), gguf_file, is_local=True)
    if _looks_like_path(base):
        raise BackendLoadError(
            f"base model path {base!r} does not exist: check the path (in a spec file, "
            "relative paths resolve against the spec's folder)"
        )
    return BaseLocation(base, gguf_file, is_local=False)


def inspect_adapter(adapter: str | Path) -> AdapterInfo:
    """Validate the adapter directory before any weights load; hash the weight file."""
    path = Path(adapter).expanduser()
    if not path.exists():
        raise BackendLoadError(
            f"adapter path {str(adapter)!r} does not exist: pass the directory written by "
            "PEFT's save_pretrained (adapter_config.json + adapter_model.safetensors)"
        )
    if path.is_file():
        raise BackendLoadError(
            f"adapter path {str(adapter)!r} is a file: pass the directory that contains "
            "adapter_config.json, not a weight file"
        )
    config_path = path / "adapter_config.json"
    if not config_path.is_file():
        raise BackendLoadError(
            f"{str(path)!r} is not a PEFT adapter: it has no adapter_config.json. Pass the "
            "directory written by PEFT's save_pretrained"
        )
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise BackendLoadError(f"cannot read {config_path}: {exc}") from exc
    if not isinstance(config, dict):
        raise BackendLoadError(f"{config_path} must hold a JSON object")
    peft_type = str(config.get("peft_type", "")).upper()
    if peft_type != "LORA":
        raise BackendLoadError(
            f"unsupported adapter type {config.get('peft_type')!r} in {config_path}: sway "
            "compares LoRA adapters only (peft_type LORA); re-train with a LoraConfig"
        )
    weights = next((path / n for n in _WEIGHT_FILES if (path / n).is_file()), None)
    if weights is None:
        raise BackendLoadError(
            f"adapter directory {str(path)!r} has no weights ({' or '.join(_WEIGHT_FILES)}); "
            "re-save the adapter with save_pretrained"
        )
    return AdapterInfo(path.resolve(), config, weights, sha256_file(weights))


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_tokenizer(
    base: BaseLocation, adapter: AdapterInfo, *, trust_remote_code: bool
) -> PreTrainedTokenizerBase:
    """Adapter's tokenizer when it ships one (it may add chat tokens), else the base's."""
    kwargs: dict[str, Any] = {"trust_remote_code": trust_remote_code}
    if (adapter.path / "tokenizer_config.json").is_file():
        source = str(adapter.path)
    else:
        source = base.source
        if base.gguf_file is not None:
            kwargs["gguf_file"] = base.gguf_file
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
    except (OSError, ValueError) as exc:
        raise BackendLoadError(_load_hint("tokenizer", source, base, exc)) from exc
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise BackendLoadError(
                f"tokenizer from {source!r} has neither a pad nor an eos token; cannot batch"
            )
        tokenizer.pad_token = tokenizer.eos_token
    # Left padding keeps every sequence's last real token at position -1.
    tokenizer.padding_side = "left"
    return tokenizer


def load_model(
    base: BaseLocation,
    adapter: AdapterInfo,
    *,
    dtype: torch.dtype,
    device: torch.device,
    trust_remote_code: bool,
) -> PeftModel:
    """Load the base weights once and attach the LoRA adapter (inference only)."""
    from transformers.utils import logging as hf_logging

    # sway draws its own progress; transformers' per-load weight bar is noise in reports.
    hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    kwargs: dict[str, Any] = {"dtype": dtype, "trust_remote_code": trust_remote_code}
    if base.gguf_file is not None:
        kwargs["gguf_file"] = base.gguf_file
    try:
        model = AutoModelForCausalLM.from_pretrained(base.source, **kwargs)
    except (OSError, ValueError, ImportError) as exc:
        raise BackendLoadError(_load_hint("base model", base.source, base, exc)) from exc
    torch.nn.Module.to(model, device)
    try:
        with warnings.catch_warnings():
            # peft 0.21 touches a property transformers 5 deprecated; not the user's concern.
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")
            peft_model = PeftModel.from_pretrained(model, str(adapter.path), is_trainable=False)
    except RuntimeError as exc:
        if "size mismatch" in str(exc):
            raise BackendLoadError(
                f"adapter {str(adapter.path)!r} does not fit base model {base.source!r}: its "
                "LoRA tensor shapes differ from the base's layers (it was trained on another "
                "model or model size). Use the base the adapter was trained on "
                f"(adapter_config.json says {adapter.config.get('base_model_name_or_path')!r}). "
                f"Detail: {_first_line(exc, 'size mismatch')}"
            ) from exc
        raise BackendLoadError(f"loading adapter {str(adapter.path)!r} failed: {exc}") from exc
    except (ValueError, KeyError, OSError) as exc:
        raise BackendLoadError(
            f"adapter {str(adapter.path)!r} cannot be attached to base {base.source!r} "
            f"(target modules missing or config invalid): {exc}"
        ) from exc
    peft_model.eval()
    return peft_model


def _first_line(exc: BaseException, needle: str) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if needle in ln]
    return lines[0] if lines else str(exc).splitlines()[0]


def _load_hint(what: str, source: str, base: BaseLocation, exc: BaseException) -> str:
    if not base.is_local:
        return (
            f"could not load {what} {source!r} as a Hugging Face hub id (no network, or not "
            "in the local HF cache). sway runs offline: download the model once and pass "
            f"its local directory as base. Detail: {exc}"
        )
    return f"could not load {what} from {source!r}: {exc}"
