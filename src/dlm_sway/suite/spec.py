"""The ``sway.yaml`` schema. Unknown keys are rejected at every level."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelSpec(_Strict):
    """Where the base model and the adapter come from and how to load them."""

    kind: str = "hf"
    base: str = Field(min_length=1)
    adapter: str | None = None
    dtype: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    device: str = "auto"
    gguf_file: str | None = None
    trust_remote_code: bool = False
    batch_size: int = Field(default=16, ge=1, le=1024)
    #: Backend-specific knobs, validated by the backend itself (e.g. dummy ``strength``).
    options: dict[str, Any] = Field(default_factory=dict)


class ModelsSpec(_Strict):
    ft: ModelSpec
    #: Optional and informational: differential mode loads one model (``ft.base``).
    base: ModelSpec | None = None


class SuiteDefaults(_Strict):
    seed: int = 0
    top_k: int = Field(default=256, ge=1)
    coverage_threshold: float = Field(default=0.6, ge=0.0, le=1.0)
    score_weights: dict[str, float] | None = None


class SwaySpec(_Strict):
    version: Literal[1] = 1
    models: ModelsSpec
    defaults: SuiteDefaults = SuiteDefaults()
    suite: list[dict[str, Any]] = Field(default_factory=list)
    #: The training document (markdown or ``.dlm``), relative to this spec file. It gives
    #: section-based probes their sections; a ``.dlm``'s store can also give the adapter.
    dlm_source: str | None = None

    @field_validator("suite")
    @classmethod
    def _entries_are_mappings(cls, value: list[Any]) -> list[dict[str, Any]]:
        for i, entry in enumerate(value):
            if not isinstance(entry, dict):
                raise ValueError(f"entry {i} must be a mapping with at least name and kind")
        return value


__all__ = ["ModelSpec", "ModelsSpec", "SuiteDefaults", "SwaySpec"]
