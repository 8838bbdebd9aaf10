"""Turn a validated :class:`ModelSpec` into a backend through the backend registry."""

from __future__ import annotations

from typing import Any

from dlm_sway.backends.registry import build_backend
from dlm_sway.core.errors import SpecValidationError
from dlm_sway.core.scoring import DifferentialBackend
from dlm_sway.suite.spec import ModelSpec


def backend_options(model: ModelSpec) -> dict[str, Any]:
    """Keyword options for the backend factory of ``model.kind``."""
    if model.kind == "two_model":
        return _two_model_options(model)
    if model.finetuned is not None:
        raise SpecValidationError(
            f"finetuned is for kind: two_model (two full checkpoints); kind {model.kind!r} "
            "compares an adapter: remove finetuned or set kind: two_model",
            source="models.ft.finetuned",
        )
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
        opts.update(_hf_options(model.options))
        return opts
    if model.kind == "dummy":
        _check_dummy_options(model.options)
    if model.kind == "vllm":  # checked at spec load, before any request is sent
        from dlm_sway.backends.vllm_options import parse_options

        parse_options(model.options)
    return {"base": model.base, "adapter": model.adapter, **model.options}


def _two_model_options(model: ModelSpec) -> dict[str, Any]:
    """two_model: base + finetuned checkpoints, no adapter, no options."""
    if not model.finetuned:
        raise SpecValidationError(
            "kind: two_model needs finetuned: the fine-tuned checkpoint (an HF directory or a "
            ".gguf file) to compare with base",
            source="models.ft.finetuned",
        )
    for field, value in (("adapter", model.adapter), ("gguf_file", model.gguf_file)):
        if value is not None:
            raise SpecValidationError(
                f"kind: two_model takes no {field}: give base and finetuned as HF directories "
                "or .gguf file paths (for a LoRA adapter use kind: hf)",
                source=f"models.ft.{field}",
            )
    if model.options:
        raise SpecValidationError(
            f"kind: two_model takes no options, got {sorted(model.options)}",
            source="models.ft.options",
        )
    return {
        "base": model.base,
        "finetuned": model.finetuned,
        "dtype": model.dtype,
        "device": model.device,
        "trust_remote_code": model.trust_remote_code,
        "batch_size": model.batch_size,
    }


def _check_dummy_options(options: dict[str, Any]) -> None:
    from dlm_sway.backends.dummy import option_problems

    for key, problem in option_problems(options):
        raise SpecValidationError(problem, source=f"models.ft.options.{key}")


#: Options the hf backend takes under ``models.ft.options``, each a strict bool.
HF_OPTIONS: dict[str, str] = {
    "allow_partial_adapter": "score an adapter that only partly loads (a health error)",
}


def _hf_options(options: dict[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(options) - set(HF_OPTIONS))
    if unknown:
        known = "; ".join(f"{k}: {why}" for k, why in HF_OPTIONS.items())
        raise SpecValidationError(
            f"unknown hf backend option(s) {unknown}; known: {known}",
            source="models.ft.options",
        )
    for key, value in options.items():
        if not isinstance(value, bool):
            raise SpecValidationError(
                f"must be true or false, got {value!r}", source=f"models.ft.options.{key}"
            )
    return dict(options)


def backend_from_spec(model: ModelSpec) -> DifferentialBackend:
    options = backend_options(model)
    try:
        return build_backend(model.kind, **options)
    except (TypeError, ValueError) as exc:
        raise SpecValidationError(
            f"backend {model.kind!r} rejected its options: {exc}", source="models.ft"
        ) from None


__all__ = ["backend_from_spec", "backend_options"]
