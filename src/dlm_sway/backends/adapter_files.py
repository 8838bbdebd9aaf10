"""Validate a PEFT LoRA adapter's files before any model loads.

A truncated or corrupt weight file, or an ``adapter_config.json`` that is valid
JSON but not a usable LoRA config, would otherwise surface as a traceback from
deep inside peft/safetensors — after the base model had already loaded. Here
each problem becomes a :class:`BackendLoadError` naming the file, what is
wrong and the fix. No torch import unless the adapter ships a pickled
``adapter_model.bin``.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any

from dlm_sway.core.errors import BackendLoadError

RESAVE = "re-save the adapter with PEFT's save_pretrained"
#: LoRA weights are floating point; anything else is not a trained adapter tensor.
_FLOAT_DTYPES = frozenset({"F16", "BF16", "F32", "F64"})
_BOOL_FIELDS = ("use_dora", "use_rslora", "fan_in_fan_out", "lora_bias", "inference_mode")
_BIAS_VALUES = ("none", "all", "lora_only")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _bad(config_path: Path, field: str, need: str, value: Any) -> BackendLoadError:
    return BackendLoadError(
        f"adapter config {config_path}: field {field!r} must be {need}, got {value!r}; "
        f"fix the field or {RESAVE}"
    )


def validate_config(config: dict[str, Any], config_path: Path) -> None:
    """Type- and range-check the LoRA fields peft reads (peft itself crashes on many)."""
    for field in ("r", "lora_alpha", "target_modules"):
        if field not in config:
            raise BackendLoadError(
                f"adapter config {config_path} lacks the required field {field!r} "
                f"(save_pretrained always writes it); {RESAVE}"
            )
    r = config["r"]
    if not _is_int(r) or r < 1:
        raise _bad(config_path, "r", "a positive integer (the LoRA rank)", r)
    alpha = config["lora_alpha"]
    if not _is_number(alpha) or not math.isfinite(alpha) or alpha == 0:
        raise _bad(config_path, "lora_alpha", "a finite, non-zero number", alpha)
    targets = config["target_modules"]
    if (
        targets is not None
        and not (isinstance(targets, str) and targets)
        and not _str_list(targets)
    ):
        raise _bad(config_path, "target_modules", "a module name, a list of names or null", targets)
    dropout = config.get("lora_dropout", 0.0)
    if not _is_number(dropout) or not 0.0 <= dropout < 1.0:
        raise _bad(config_path, "lora_dropout", "a number in [0, 1)", dropout)
    bias = config.get("bias", "none")
    if bias not in _BIAS_VALUES:
        raise _bad(config_path, "bias", f"one of {', '.join(_BIAS_VALUES)}", bias)
    for field in _BOOL_FIELDS:
        if field in config and not isinstance(config[field], bool):
            raise _bad(config_path, field, "true or false", config[field])
    init = config.get("init_lora_weights", True)
    if not isinstance(init, bool | str):
        raise _bad(config_path, "init_lora_weights", "true, false or a method name", init)
    _check_patterns(config, config_path)
    modules = config.get("modules_to_save")
    if modules is not None and not _str_list(modules):
        raise _bad(config_path, "modules_to_save", "a list of module names or null", modules)
    layers = config.get("layers_to_transform")
    if layers is not None and not _index_or_indices(layers):
        raise _bad(
            config_path, "layers_to_transform", "a layer index, a list of them or null", layers
        )
    for field in ("base_model_name_or_path", "task_type"):
        value = config.get(field)
        if value is not None and not isinstance(value, str):
            raise _bad(config_path, field, "a string or null", value)
    pattern = config.get("layers_pattern")
    if pattern is not None and not isinstance(pattern, str) and not _str_list(pattern):
        raise _bad(config_path, "layers_pattern", "a string, a list of strings or null", pattern)


def _str_list(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, str) and v for v in value)


def _index_or_indices(value: Any) -> bool:
    if _is_int(value):
        return bool(value >= 0)
    return isinstance(value, list) and bool(value) and all(_is_int(v) and v >= 0 for v in value)


def _check_patterns(config: dict[str, Any], config_path: Path) -> None:
    for field, positive_int in (("rank_pattern", True), ("alpha_pattern", False)):
        pattern = config.get(field)
        if pattern is None:
            continue
        value_need = "an integer rank ≥ 1" if positive_int else "a finite, non-zero number"
        need = f"a mapping of module name to {value_need}"
        if not isinstance(pattern, dict):
            raise _bad(config_path, field, need, pattern)
        for key, value in pattern.items():
            ok = (
                _is_int(value) and value >= 1
                if positive_int
                else _is_number(value) and math.isfinite(value) and value != 0
            )
            if not ok:
                raise _bad(config_path, f"{field}.{key}", value_need, value)


def weight_names(weights: Path) -> tuple[str, ...]:
    """Tensor names in the adapter's weight file, after checking the file is whole.

    safetensors: the header is parsed and checked against the file size by
    safetensors itself (truncation, padding, garbage); dtypes are read from the
    header. ``.bin``: unpickled with ``weights_only=True``.
    """
    if weights.suffix == ".safetensors":
        names, dtypes = _safetensors_header(weights)
    else:
        names, dtypes = _bin_contents(weights)
    if not names:
        raise BackendLoadError(f"adapter weights {weights} hold no tensors; {RESAVE}")
    odd = [(n, d) for n, d in zip(names, dtypes, strict=True) if d not in _FLOAT_DTYPES]
    if odd:
        name, dtype = odd[0]
        raise BackendLoadError(
            f"adapter weights {weights}: tensor {name!r} has dtype {dtype} ({len(odd)} "
            "non-floating-point tensor(s)); LoRA weights are floating point, so this is not "
            f"a trained adapter file; {RESAVE}"
        )
    return tuple(names)


def _corrupt(weights: Path, what: str) -> BackendLoadError:
    size = weights.stat().st_size if weights.exists() else 0
    return BackendLoadError(
        f"adapter weights {weights} ({size} bytes) are corrupt: {what}. The file is "
        f"truncated, empty or not a weight file; {RESAVE}"
    )


def _safetensors_header(weights: Path) -> tuple[list[str], list[str]]:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(weights), framework="numpy") as fh:
            names = list(fh.keys())
            dtypes = [str(fh.get_slice(n).get_dtype()) for n in names]
    except SafetensorError as exc:
        raise _corrupt(weights, f"not a valid safetensors file ({exc})") from None
    except OSError as exc:
        raise BackendLoadError(f"cannot read adapter weights {weights}: {exc}") from None
    return names, dtypes


def _bin_contents(weights: Path) -> tuple[list[str], list[str]]:
    import torch

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the unpickler warns about odd protocols
            state = torch.load(str(weights), map_location="cpu", weights_only=True)
    except OSError as exc:
        raise BackendLoadError(f"cannot read adapter weights {weights}: {exc}") from None
    except Exception as exc:  # noqa: BLE001 — any unpickling failure means a corrupt file
        raise _corrupt(
            weights, f"not a loadable torch file ({type(exc).__name__}: {exc})"
        ) from None
    if not isinstance(state, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise _corrupt(weights, "it does not hold a mapping of tensor names to tensors")
    names = list(state)
    dtypes = [_TORCH_DTYPES.get(str(state[n].dtype), str(state[n].dtype)) for n in names]
    return names, dtypes


WEIGHT_FILES = ("adapter_model.safetensors", "adapter_model.bin")
_NP_DTYPES = {"F16": "<f2", "F32": "<f4", "F64": "<f8"}


def read_adapter_dir(adapter: Path) -> tuple[dict[str, Any], Path]:
    """``adapter_config.json`` (validated) and the weight file of a PEFT adapter folder."""
    import json

    config_path = adapter / "adapter_config.json"
    if not adapter.is_dir() or not config_path.is_file():
        raise BackendLoadError(
            f"{adapter} is not a PEFT adapter folder (no adapter_config.json); pass the "
            "directory written by save_pretrained"
        )
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise BackendLoadError(
            f"cannot read adapter config {config_path}: {exc}; {RESAVE}"
        ) from None
    if not isinstance(config, dict):
        raise BackendLoadError(f"{config_path} must hold a JSON object; {RESAVE}")
    validate_config(config, config_path)
    weights = next((adapter / n for n in WEIGHT_FILES if (adapter / n).is_file()), None)
    if weights is None:
        raise BackendLoadError(
            f"adapter folder {adapter} has no weights ({' or '.join(WEIGHT_FILES)}); {RESAVE}"
        )
    return config, weights


def read_weights(weights: Path) -> dict[str, Any]:
    """Every tensor of an adapter weight file as a float32 numpy array, without torch
    for safetensors (bf16 is widened by hand: numpy has no bfloat16)."""
    import numpy as np

    names = weight_names(weights)  # validates the file first
    if weights.suffix != ".safetensors":
        import torch

        state = torch.load(str(weights), map_location="cpu", weights_only=True)
        return {n: state[n].detach().float().numpy() for n in names}
    import json
    import struct

    raw = weights.read_bytes()
    (size,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + size])
    body = memoryview(raw)[8 + size :]
    out: dict[str, Any] = {}
    for name in names:
        info = header[name]
        begin, end = info["data_offsets"]
        chunk = body[begin:end]
        if info["dtype"] == "BF16":
            bits = np.frombuffer(chunk, dtype="<u2").astype(np.uint32) << 16
            arr = bits.view(np.float32)
        else:
            arr = np.frombuffer(chunk, dtype=_NP_DTYPES[info["dtype"]]).astype(np.float32)
        out[name] = arr.reshape(info["shape"])
    return out


_TORCH_DTYPES = {
    "torch.float16": "F16",
    "torch.bfloat16": "BF16",
    "torch.float32": "F32",
    "torch.float64": "F64",
}


__all__ = [
    "RESAVE",
    "WEIGHT_FILES",
    "read_adapter_dir",
    "read_weights",
    "validate_config",
    "weight_names",
]
