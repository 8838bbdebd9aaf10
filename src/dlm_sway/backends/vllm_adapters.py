"""Adapter directories the ``vllm`` backend writes: scaled (B × λ) and null copies.

vLLM 0.32 has no per-request LoRA scale and no way to swap weights in place, so
every view other than base and fine-tuned is a PEFT directory on disk that the
server hot-loads. Null weights come from :mod:`dlm_sway.backends.hf_lora`'s own
construction functions, fed the trained tensors in the order the HF backend
visits its LoRA modules (the base model's module registration order) and one
CPU generator seeded the same way: an HF null and a vLLM null of one seed are
the same tensors.
"""

from __future__ import annotations

import json
import math
import re
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from dlm_sway.core.errors import BackendLoadError

if TYPE_CHECKING:
    import torch

    from dlm_sway.backends.hf_load import AdapterInfo
    from dlm_sway.backends.hf_lora import LoraSlot, NullWeights

_PREFIX = "base_model.model."
_KEY = re.compile(r"^(?P<module>.+)\.(?P<part>lora_A|lora_B)(?:\.weight)?$")
_EMBED_KEY = re.compile(r"^(?P<module>.+)\.(?P<part>lora_embedding_A|lora_embedding_B)$")
_NATURAL = re.compile(r"(\d+)")


@dataclass(frozen=True)
class FileSlot:
    """One module's trained A/B from the weight file, in float32: what ``NullWeights``
    functions read (``a``, ``b``, ``scaling``) without a loaded model."""

    name: str
    a_key: str
    b_key: str
    a: torch.Tensor
    b: torch.Tensor
    scaling: float


def module_scaling(config: dict[str, Any], module: str) -> float:
    """PEFT's scaling for one module: alpha / r (or / √r with rsLoRA), patterns applied."""
    r = _pattern_value(config.get("rank_pattern") or {}, module, config["r"])
    alpha = _pattern_value(config.get("alpha_pattern") or {}, module, config["lora_alpha"])
    root = math.sqrt(r) if config.get("use_rslora") else r
    return float(alpha) / float(root)


def _pattern_value(pattern: dict[str, Any], module: str, default: Any) -> Any:
    """PEFT matches a pattern key against the module path's end (or as a regex)."""
    for key, value in pattern.items():
        if module == key or module.endswith("." + key) or re.fullmatch(f"(.*\\.)?{key}", module):
            return value
    return default


def read_slots(info: AdapterInfo, order: Sequence[str] | None) -> list[FileSlot]:
    """The adapter's LoRA pairs, in ``order`` (module names) or natural name order.

    ``order`` is the base model's module registration order, the order the HF
    backend's null construction draws in; without it the draws still follow one
    fixed order but not the HF backend's.
    """
    tensors = load_tensors(info.weights_file)
    pairs: dict[str, dict[str, str]] = {}
    for key in tensors:
        short = key.removeprefix(_PREFIX)
        match = _KEY.match(short) or _EMBED_KEY.match(short)
        if match is None:
            continue
        part = "a" if match["part"].endswith("A") else "b"
        pairs.setdefault(match["module"], {})[part] = key
    incomplete = sorted(m for m, p in pairs.items() if set(p) != {"a", "b"})
    if incomplete:
        raise BackendLoadError(
            f"adapter weights {info.weights_file}: module(s) {incomplete[:3]} have lora_A "
            "without lora_B (or the reverse); re-save the adapter with save_pretrained"
        )
    if not pairs:
        raise BackendLoadError(f"adapter weights {info.weights_file} hold no LoRA A/B tensors")
    names = _ordered(list(pairs), order, info)
    return [
        FileSlot(
            name,
            pairs[name]["a"],
            pairs[name]["b"],
            tensors[pairs[name]["a"]].float(),
            tensors[pairs[name]["b"]].float(),
            module_scaling(info.config, name),
        )
        for name in names
    ]


def _ordered(names: list[str], order: Sequence[str] | None, info: AdapterInfo) -> list[str]:
    if order is None:
        return sorted(
            names, key=lambda n: [int(t) if t.isdigit() else t for t in _NATURAL.split(n)]
        )
    rank = {name: i for i, name in enumerate(order)}
    unknown = sorted(n for n in names if n not in rank)
    if unknown:
        raise BackendLoadError(
            f"adapter {info.path} targets module(s) the base model does not have, e.g. "
            f"{unknown[:3]}: it was trained on another base; point models.ft.base "
            "(or options.local_base) at the model it was trained on"
        )
    return sorted(names, key=rank.__getitem__)


def load_tensors(path: Path) -> dict[str, torch.Tensor]:
    import torch

    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return dict(load_file(str(path)))
    state = torch.load(str(path), map_location="cpu", weights_only=True)
    return dict(state)


def null_tensors(
    slots: Sequence[FileSlot], seed: int, weights: NullWeights
) -> dict[str, torch.Tensor]:
    """A and B of every slot drawn by ``weights`` from one generator seeded by ``seed``,
    slot by slot in order, exactly as :func:`dlm_sway.backends.hf_lora.null_lora` does."""
    import torch

    generator = torch.Generator(device="cpu")
    generator.manual_seed(seed)
    out: dict[str, torch.Tensor] = {}
    for slot in slots:
        # FileSlot carries every field a NullWeights function reads (a, b, scaling).
        new_a, new_b = weights(cast("LoraSlot", slot), generator)
        out[slot.a_key] = new_a.to(torch.float32).contiguous()
        out[slot.b_key] = new_b.to(torch.float32).contiguous()
    return out


def scaled_tensors(slots: Sequence[FileSlot], lam: float) -> dict[str, torch.Tensor]:
    """The trained adapter with every B × λ: the LoRA term W += s·B·A becomes λ·s·B·A."""
    out: dict[str, torch.Tensor] = {}
    for slot in slots:
        out[slot.a_key] = slot.a.contiguous()
        out[slot.b_key] = (slot.b * lam).contiguous()
    return out


def write_adapter(info: AdapterInfo, dest: Path, tensors: dict[str, torch.Tensor]) -> Path:
    """A PEFT directory at ``dest``: the trained adapter's config (and any non-LoRA tensors
    it carries) with ``tensors`` replacing the LoRA weights."""
    from safetensors.torch import save_file

    merged = {k: v for k, v in load_tensors(info.weights_file).items() if k not in tensors}
    merged.update(tensors)
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    (tmp / "adapter_config.json").write_text(json.dumps(info.config, indent=2), encoding="utf-8")
    save_file(
        {k: v.contiguous() for k, v in merged.items()},
        str(tmp / "adapter_model.safetensors"),
        metadata={"format": "pt"},
    )
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)
    return dest


def copy_adapter(info: AdapterInfo, dest: Path) -> Path:
    """The trained adapter's config and weights, copied (for a server-side adapter root)."""
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    shutil.copy2(info.path / "adapter_config.json", dest / "adapter_config.json")
    shutil.copy2(info.weights_file, dest / info.weights_file.name)
    return dest


def module_order(local_base: str) -> list[str]:
    """Module names of the base model in registration order, built on the meta device
    from its config alone (no weights load)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    try:
        config = AutoConfig.from_pretrained(local_base)
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config)  # type: ignore[no-untyped-call]
    except (OSError, ValueError, KeyError) as exc:
        raise BackendLoadError(
            f"cannot read the model config of {local_base!r}: {exc}; set "
            "models.ft.options.local_base to a local copy of the served model"
        ) from None
    return [name for name, _ in model.named_modules() if name]


def vocab_size_of(local_base: str) -> int | None:
    """``vocab_size`` from a local model directory's config.json, when it has one."""
    path = Path(local_base) / "config.json"
    if not path.is_file():
        return None
    value = json.loads(path.read_text(encoding="utf-8")).get("vocab_size")
    return int(value) if isinstance(value, int) and value > 0 else None


__all__ = [
    "FileSlot",
    "copy_adapter",
    "load_tensors",
    "module_order",
    "module_scaling",
    "null_tensors",
    "read_slots",
    "scaled_tensors",
    "vocab_size_of",
    "write_adapter",
]
