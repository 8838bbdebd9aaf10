"""Turn a validated :class:`ModelSpec` into a backend through the backend registry."""

from __future__ import annotations

from typing import Any

from dlm_sway.backends.registry import build_backend
from dlm_sway.core.errors import SpecValidationError
from dlm_sway.core.scoring import DifferentialBackend
from dlm_sway.suite.spec import ModelSpec


def backend_options(model: ModelSpec) -> dict[str, Any]:
    """Keyword options for the backend factory of ``model.kind``."""
    if model.kind == "hf":
        if not model.adapter:
            raise SpecValidationError(
                "the hf backend needs an adapter directory (adapter_config.json + weights)",
                source="models.ft.adapter",
            )
        opts: dict[str, Any] = {
            "base": model.base,
            "adapter": model.adapter,
            "dtype": model.dtype,
            "device": model.device,
            "gguf_file": model.gguf_file,
            "trust_remote_code": model.trust_remote_code,
            "batch_size": model.batch_size,
        }
        if model.options:
            raise SpecValidationError(
                f"the hf backend takes no options, got {sorted(model.options)}",
                source="models.ft.options",
            )
        return opts
    return {"base": model.base, "adapter": model.adapter, **model.options}


def backend_from_spec(model: ModelSpec) -> DifferentialBackend:
    options = backend_options(model)
    try:
        return build_backend(model.kind, **options)
    except TypeError as exc:
        raise SpecValidationError(
            f"backend {model.kind!r} rejected its options: {exc}", source="models.ft"
        ) from None


__all__ = ["backend_from_spec", "backend_options"]
