"""Weight-space slots for the parts of a PEFT adapter that are not an additive LoRA term.

- **DoRA** modules: W_DoRA = m / ‖W₀ + s·B·A‖_row · (W₀ + s·B·A), computed in
  float64 exactly as peft's DoRA forward and merge define it (the norm per output
  feature, the magnitude vector m, the LoRA scaling s read at load). During a
  weight-space view the DoRA layer is switched off and its base layer runs with
  W(view), so the view is exactly the weight it names.
- **modules_to_save** modules: every parameter of the trained copy that differs
  from the base module; W₀ is the base module's tensor, D = trained − base.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from peft.tuners.lora import LoraLayer
from peft.utils.other import ModulesToSaveWrapper

from dlm_sway.backends.hf_lora import is_dora, iter_lora_slots
from dlm_sway.backends.hf_weights import WeightSlot
from dlm_sway.core.errors import BackendLoadError

_PREFIX = "base_model.model."


def dora_delta(module: LoraLayer, adapter: str, scaling: float) -> torch.Tensor:
    """W_DoRA − W₀ for one DoRA module, float32, in the base weight's layout.

    Works in "output-major" orientation (out × in): Linear as stored, Conv1D-style
    ``fan_in_fan_out`` Linear and Embedding transposed, as peft's DoRA does.
    """
    layer: Any = module  # peft's layer attributes are untyped
    with torch.no_grad():
        w0: torch.Tensor = layer.get_base_layer().weight.detach()
        w64 = w0.to(torch.float64)
        mag = layer.lora_magnitude_vector[adapter].weight.detach().to(torch.float64)
        if adapter in layer.lora_A:
            a = layer.lora_A[adapter].weight.detach().to(torch.float64)
            b = layer.lora_B[adapter].weight.detach().to(torch.float64)
            transposed = bool(getattr(layer, "fan_in_fan_out", False))
        else:
            a = layer.lora_embedding_A[adapter].detach().to(torch.float64)
            b = layer.lora_embedding_B[adapter].detach().to(torch.float64)
            transposed = True
        w_out = w64.T if transposed else w64
        merged = w_out + scaling * (b @ a)
        norm = torch.linalg.vector_norm(merged, dim=1)
        new = (mag.reshape(-1) / norm).unsqueeze(1) * merged
        new = new.T if transposed else new
        change: torch.Tensor = (new - w64).to(device=w0.device, dtype=torch.float32)
        return change


def dora_slots(model: torch.nn.Module) -> list[WeightSlot]:
    """One slot per DoRA module: its base layer's weight, D = W_DoRA − W₀.

    Refused when W(view) cannot be built exactly: DoRA on Conv layers or with
    ``lora_bias`` (a bias change inside the DoRA rescaling).
    """
    slots: list[WeightSlot] = []
    for lora in iter_lora_slots(model):
        if not is_dora(lora):
            continue
        layer, adapter = lora.layer, lora.adapter
        base = layer.get_base_layer()
        weight = base.weight
        if not isinstance(weight, torch.Tensor) or weight.dim() != 2:
            raise BackendLoadError(
                f"DoRA module {lora.name} wraps a {type(base).__name__}: sway builds DoRA views "
                "for Linear and Embedding layers only; re-train without use_dora for this layer"
            )
        if bool(getattr(layer, "lora_bias", {}).get(adapter, False)):
            raise BackendLoadError(
                f"DoRA module {lora.name} also trains a LoRA bias (lora_bias=True): its weight "
                "under DoRA's rescaling is not defined by one matrix; re-train with lora_bias=False"
            )
        scaling = lora.scaling  # read now: scaled views later multiply layer.scaling by λ

        def delta(
            layer: LoraLayer = layer, adapter: str = adapter, s: float = scaling
        ) -> torch.Tensor:
            return dora_delta(layer, adapter, s)

        key = lora.name if adapter == "default" else f"{lora.name}[{adapter}]"
        slots.append(WeightSlot(key, ((base, "weight"),), weight, delta))
    return slots


@contextmanager
def dora_off(model: torch.nn.Module) -> Iterator[None]:
    """Switch DoRA modules' adapter term off (their base layer then gets W(view))."""
    layers = {id(s.layer): s.layer for s in iter_lora_slots(model) if is_dora(s)}
    saved = [(layer, layer._disable_adapters) for layer in layers.values()]
    try:
        for layer, _ in saved:
            layer._disable_adapters = True
        yield
    finally:
        for layer, value in saved:
            layer._disable_adapters = value


def wrappers(model: torch.nn.Module) -> Iterator[tuple[str, ModulesToSaveWrapper]]:
    for name, module in model.named_modules():
        if isinstance(module, ModulesToSaveWrapper):
            yield name.removeprefix(_PREFIX), module


def saved_module_slots(model: torch.nn.Module) -> list[WeightSlot]:
    """Every parameter a ``modules_to_save`` copy changed: W₀ = base module's, D = trained − base."""
    slots: list[WeightSlot] = []
    for short, wrapper in wrappers(model):
        base_params = dict(wrapper.original_module.named_parameters(remove_duplicate=False))
        for adapter in sorted(wrapper.modules_to_save.keys()):
            trained = wrapper.modules_to_save[adapter]
            for sub_name, sub in trained.named_modules(remove_duplicate=False):
                for pname, param in sub._parameters.items():
                    if param is None:
                        continue
                    full = f"{sub_name}.{pname}".lstrip(".")
                    w0 = base_params.get(full)
                    if w0 is None or w0.shape != param.shape:
                        raise BackendLoadError(
                            f"modules_to_save module {short}: trained tensor {full} "
                            f"{tuple(param.shape)} has no base tensor of the same shape, so "
                            "its views cannot interpolate it (was the module resized?)"
                        )
                    if param is w0 or torch.equal(param.detach(), w0.detach()):
                        continue

                    def delta(p: torch.Tensor = param, b: torch.Tensor = w0) -> torch.Tensor:
                        return p.detach().float() - b.detach().float()

                    key = f"{short}.{full}" + ("" if adapter == "default" else f"[{adapter}]")
                    slots.append(WeightSlot(key, ((sub, pname),), w0, delta))
    return slots


def covered_prefixes(model: torch.nn.Module) -> Sequence[str]:
    """Saved-file name fragments of the ``modules_to_save`` modules (nulls cover them)."""
    return [f"{short}." for short, _ in wrappers(model)]


__all__ = ["covered_prefixes", "dora_delta", "dora_off", "dora_slots", "saved_module_slots"]
