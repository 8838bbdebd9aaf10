"""The ``sway.yaml`` schema. Unknown keys are rejected at every level.

Strict throughout (see :mod:`dlm_sway.probes._fields`): no value is coerced
(``seed: "7"``, ``batch_size: true`` are errors), no float is NaN or infinite,
and every number has the range in which it means something.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, Field, StrictBool, StrictStr, field_validator

from dlm_sway.probes._fields import STRICT, NonBlank, Seed, TopK

#: ``cuda:N`` may name any index; whether that device exists is checked when the backend loads.
_DEVICE = re.compile(r"auto|cpu|mps|cuda(:\d{1,3})?")


class _Strict(BaseModel):
    model_config = STRICT


class ModelSpec(_Strict):
    """Where the base model and the adapter come from and how to load them."""

    kind: NonBlank = "hf"
    base: NonBlank
    adapter: NonBlank | None = None
    #: ``kind: two_model`` only: the fully fine-tuned (or merged) checkpoint compared
    #: with ``base`` (an HF directory, a ``.gguf`` file, a cached hub id or ``builtin:``).
    finetuned: NonBlank | None = None
    dtype: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    #: ``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps``.
    device: str = "auto"
    gguf_file: NonBlank | None = None
    trust_remote_code: bool = False
    batch_size: int = Field(default=16, ge=1, le=1024)
    #: Backend-specific knobs, validated by the backend itself (e.g. dummy ``strength``).
    options: dict[str, Any] = Field(default_factory=dict)

    @field_validator("device")
    @classmethod
    def _device(cls, value: str) -> str:
        if _DEVICE.fullmatch(value) is None:
            raise ValueError(
                f"unknown device {value!r}; use auto, cpu, cuda, cuda:N (e.g. cuda:0) or mps"
            )
        return value


class ModelsSpec(_Strict):
    ft: ModelSpec
    #: Optional and informational: differential mode loads one model (``ft.base``).
    base: ModelSpec | None = None


class SuiteDefaults(_Strict):
    #: The one run seed, in [0, 2**32 - 1]; every child seed derives from it.
    seed: Seed = 0
    #: Next-token distributions keep this many tokens (backends clamp to the vocabulary).
    top_k: TopK = 256
    coverage_threshold: float = Field(default=0.6, ge=0.0, le=1.0)
    #: Category → relative weight (finite, ≥ 0); checked by ``suite.score.validate_weights``.
    score_weights: dict[str, float] | None = None


class SwaySpec(_Strict):
    version: Literal[1] = 1
    models: ModelsSpec
    defaults: SuiteDefaults = SuiteDefaults()
    suite: list[dict[str, Any]] = Field(default_factory=list)
    #: The training document (markdown or ``.dlm``), relative to this spec file. It gives
    #: section-based probes their sections; a ``.dlm``'s store can also give the adapter.
    dlm_source: NonBlank | None = None
    gate: GateSpec = Field(default_factory=lambda: GateSpec())

    @field_validator("version", mode="before")
    @classmethod
    def _integer_version(cls, value: Any) -> Any:
        # ``true == 1`` and ``1.0 == 1`` in Python: the Literal alone would accept both.
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"must be the integer 1 (got {type(value).__name__} {value!r})")
        return value

    @field_validator("suite")
    @classmethod
    def _entries_are_mappings(cls, value: list[Any]) -> list[dict[str, Any]]:
        for i, entry in enumerate(value):
            if not isinstance(entry, dict):
                raise ValueError(f"entry {i} must be a mapping with at least name and kind")
        return value


class GateSpec(_Strict):
    """What ``sway gate`` lets through: SKIP / WARN results, by probe name or all (``true``).

    Without an entry here (or ``--allow-skip`` / ``--allow-warn``), a probe that SKIPs at
    run time or WARNs fails the gate; an entry with ``enabled: false`` never does.
    """

    allow_skip: list[StrictStr] | StrictBool = False
    allow_warn: list[StrictStr] | StrictBool = False


SwaySpec.model_rebuild()

__all__ = ["GateSpec", "ModelSpec", "ModelsSpec", "SuiteDefaults", "SwaySpec"]
