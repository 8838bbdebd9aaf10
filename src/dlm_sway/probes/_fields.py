"""Shared, strict field types and bounds for every spec model (``sway.yaml`` and probe entries).

A spec is a promise about what a run will judge, so nothing in it is coerced
(``seed: "7"`` or ``runs: true`` are errors, not 7 and 1), nothing is NaN or
infinite, and every threshold lives in the range where it can mean something:
a bar that no result can clear, or that every result clears, is a typo that
would otherwise surface as a false verdict after the whole run.
"""

from __future__ import annotations

import math
import unicodedata
from typing import Annotated, Any

from pydantic import AfterValidator, BeforeValidator, ConfigDict, Field

#: Every spec model: unknown keys, coercion, NaN and ±inf are all errors.
STRICT = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)

#: Largest seed: numpy's legacy ``RandomState`` and scikit-learn's ``random_state``
#: (k-means in ``cluster_kl``) accept only ``[0, 2**32 - 1]``; torch accepts more.
SEED_MAX = 2**32 - 1
#: ``z ≥ 1.645`` (exactly ``norm.isf(0.05)``) is a one-sided p ≤ 0.05. A lower bar would
#: call p ≈ 0.1 "above noise" and let a probe pass although Holm could never reject its null.
Z_BAR_MIN = 1.6448536269514722
#: Calibrated z-scores are clipped at ``core.calibration.Z_LIMIT`` (40): a higher bar never passes.
Z_BAR_MAX = 40.0
#: Nats: per-token log-prob changes and KL thresholds beyond this are not measurements.
NATS_MAX = 100.0
#: Relative weights (probe ``weight``, ``score_weights``): large enough for any ratio,
#: small enough that a weighted sum can never overflow to inf.
WEIGHT_MAX = 1e6
#: Largest ``top_k`` (above any tokenizer's vocabulary; backends clamp to the vocabulary).
TOP_K_MAX = 2**20
#: Largest LoRA scale λ in ``adapter_ablation``: far past 1 the model leaves anything the
#: adapter was trained for and the curve stops describing it.
LAMBDA_MAX = 4.0
#: JS divergence (natural log) never exceeds ln 2.
JS_MAX = math.log(2.0)

_NAME_MAX = 200


def _list_to_tuple(value: Any) -> Any:
    """YAML has no tuples: accept a list where a fixed-length tuple is declared."""
    return tuple(value) if isinstance(value, list) else value


def _non_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be empty or whitespace")
    return value


def _name(value: str) -> str:
    _non_blank(value)
    if value != value.strip():
        raise ValueError("must not start or end with whitespace")
    if len(value) > _NAME_MAX:
        raise ValueError(f"is {len(value)} characters long; keep names under {_NAME_MAX}")
    if any(unicodedata.category(ch) == "Cc" for ch in value):
        raise ValueError("must not contain control characters (newline, tab, NUL, ...)")
    if any(unicodedata.category(ch) == "Cf" for ch in value):
        # Bidi overrides and zero-width characters make a name read as another one.
        raise ValueError(
            "must not contain invisible formatting characters (bidi overrides, zero-width)"
        )
    return value


def _z_bar(value: float) -> float:
    if not Z_BAR_MIN <= value <= Z_BAR_MAX:
        raise ValueError(
            f"is {value:g}; a z bar must be between 1.645 (one-sided p = 0.05: a lower bar "
            "would call p ≈ 0.1 'above noise' and bypass Holm) and 40 (calibrated z-scores "
            "are capped at 40, so a higher bar never passes); the default is 3"
        )
    return value


def _seed(value: int) -> int:
    if not 0 <= value <= SEED_MAX:
        shown = str(value) if value.bit_length() <= 128 else f"a {value.bit_length()}-bit integer"
        raise ValueError(
            f"is {shown}; a seed must be an integer in [0, {SEED_MAX}] (2**32 - 1: numpy "
            "and scikit-learn accept no more)"
        )
    return value


Seed = Annotated[int, AfterValidator(_seed)]
ZBar = Annotated[float, AfterValidator(_z_bar)]
Fraction = Annotated[float, Field(ge=0.0, le=1.0)]
Weight = Annotated[float, Field(ge=0.0, le=WEIGHT_MAX)]
Nats = Annotated[float, Field(ge=-NATS_MAX, le=NATS_MAX)]
NonNegNats = Annotated[float, Field(ge=0.0, le=NATS_MAX)]
TopK = Annotated[int, Field(ge=1, le=TOP_K_MAX)]
NonBlank = Annotated[str, AfterValidator(_non_blank)]
Name = Annotated[str, AfterValidator(_name)]
FloatPair = Annotated[tuple[float, float], BeforeValidator(_list_to_tuple)]


def reachable_mean_bar(divergence: str, bar: float, *, field: str = "assert_mean_gte") -> None:
    """A JS threshold above ln 2 can never be met: say so instead of failing every run."""
    if divergence == "js" and bar > JS_MAX:
        raise ValueError(
            f"{field} is {bar:g} but JS divergence never exceeds ln 2 ≈ {JS_MAX:.4f}; "
            "lower it (or use divergence: kl)"
        )


def non_blank_items(value: list[str], what: str = "prompts") -> list[str]:
    """Empty strings in a list of prompts/paraphrases are errors naming their positions."""
    blank = [i for i, p in enumerate(value) if not p.strip()]
    if blank:
        raise ValueError(f"{what} at positions {blank} are empty")
    return value


__all__ = [
    "JS_MAX",
    "LAMBDA_MAX",
    "NATS_MAX",
    "SEED_MAX",
    "STRICT",
    "TOP_K_MAX",
    "WEIGHT_MAX",
    "Z_BAR_MAX",
    "Z_BAR_MIN",
    "FloatPair",
    "Fraction",
    "Name",
    "Nats",
    "NonBlank",
    "NonNegNats",
    "Seed",
    "TopK",
    "Weight",
    "ZBar",
    "non_blank_items",
    "reachable_mean_bar",
]
