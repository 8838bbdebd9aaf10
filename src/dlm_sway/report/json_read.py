"""Reading a saved run back: the JSON file's shape as pydantic models.

``sway report`` renders whatever this accepts as if it came from a live run,
so the models are strict: numbers are real numbers (no strings, booleans,
NaN or Infinity), bounded where the quantity is (a score or a p-value within
[0, 1], a duration not negative), verdicts and health levels come from their
enums, probe names are unique, the band is a known band, and a
recorded gate decision agrees with itself and the score. Every problem is a
:class:`SpecValidationError` naming the JSON path (``score.overall``,
``probes[2].verdict``) and what is wrong with it.

Optional fields may be missing (files from before they existed); ``null`` in
an optional number is a non-finite value the writer cleared.

The models are also the published contract: :func:`run_json_schema` is their
JSON Schema (``sway schema``). Version 1 files (before the typed verdict
fields) are read by :func:`upgrade_v1`, which lifts what v1 kept in
``evidence`` (``null``, ``weight``, ``z_by_rank``, ``null_stats``) into the
typed fields and takes each category from a frozen table of v1's built-in
kinds, so re-reading never depends on which probes are installed.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictInt,
    ValidationError,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from dlm_sway.core.errors import SpecValidationError
from dlm_sway.core.gate import GateDecision, GateReason, ReasonCode
from dlm_sway.core.result import BAND_NAMES, SCHEMA_VERSION, Direction, Verdict
from dlm_sway.report.json_v1 import upgrade_v1, v1_loc

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
SOURCE = "JSON report"
#: Every version ``sway report`` reads; the writer writes :data:`SCHEMA_VERSION`.
READABLE_VERSIONS = (1, SCHEMA_VERSION)
MAX_LISTED = 8
_VERDICTS = ", ".join(v.value for v in Verdict)
_SURROGATE = re.compile("[\ud800-\udfff]")


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else f"{text[:57]}..."


def _number(
    *, null: Literal["error", "none", "nan"], lo: float | None = None, hi: float | None = None
) -> Callable[[object], float | None]:
    """A before-validator: a finite JSON number within [lo, hi]; what ``null`` means."""

    def check(value: object) -> float | None:
        if value is None:
            if null == "none":
                return None
            if null == "nan":
                return math.nan
            raise ValueError("is null, expected a number")
        if isinstance(value, bool) or not isinstance(value, int | float):
            expected = "a number" if null == "error" else "a number or null"
            raise ValueError(f"expected {expected}, got {_show(value)}")
        try:
            number = float(value)
        except OverflowError:
            raise ValueError(f"{_show(value)} is too large for a number") from None
        if not math.isfinite(number):
            raise ValueError(
                f"{value!r} is not a finite number (sway writes non-finite values as null)"
            )
        if lo is not None and number < lo or hi is not None and number > hi:
            bounds = f"in [{lo:g}, {hi:g}]" if lo is not None and hi is not None else f">= {lo:g}"
            raise ValueError(f"{value!r} is out of range, expected a number {bounds}")
        return number

    return check


def _none_as(default: Callable[[], object]) -> Callable[[object], object]:
    return lambda value: default() if value is None else value


_NUM: dict[str, Any] = {"type": "number"}
_UNIT: dict[str, Any] = {"type": "number", "minimum": 0, "maximum": 1}
_NONNEG: dict[str, Any] = {"type": "number", "minimum": 0}


def _or_null(schema: dict[str, Any]) -> WithJsonSchema:
    return WithJsonSchema({"anyOf": [schema, {"type": "null"}]})


Number = Annotated[float, BeforeValidator(_number(null="error")), WithJsonSchema(_NUM)]
Unit = Annotated[
    float, BeforeValidator(_number(null="error", lo=0.0, hi=1.0)), WithJsonSchema(_UNIT)
]
OptUnit = Annotated[
    float | None, BeforeValidator(_number(null="none", lo=0.0, hi=1.0)), _or_null(_UNIT)
]
OptNumber = Annotated[float | None, BeforeValidator(_number(null="none")), _or_null(_NUM)]
#: Non-critical numbers the writer may have cleared: ``null`` reads back as NaN.
NanNumber = Annotated[float, BeforeValidator(_number(null="nan")), _or_null(_NUM)]
NanUnit = Annotated[float, BeforeValidator(_number(null="nan", lo=0.0, hi=1.0)), _or_null(_UNIT)]
NanSeconds = Annotated[float, BeforeValidator(_number(null="nan", lo=0.0)), _or_null(_NONNEG)]
Weight = Annotated[float, BeforeValidator(_number(null="error", lo=0.0)), WithJsonSchema(_NONNEG)]
Count = Annotated[int, Field(strict=True, ge=0)]
Name = Annotated[str, Field(min_length=1)]
Obj = Annotated[dict[str, Any], BeforeValidator(_none_as(dict)), WithJsonSchema({"type": "object"})]


class _In(BaseModel):
    model_config = ConfigDict(strict=True, frozen=True, extra="ignore")


def _verdict(value: object) -> Verdict:
    if not isinstance(value, str):
        raise ValueError(f"expected a string, got {_show(value)}")
    try:
        return Verdict(value.lower())
    except ValueError:
        raise ValueError(f"{value!r} is not one of {_VERDICTS}") from None


def _direction(value: object) -> Direction:
    if isinstance(value, str):
        try:
            return Direction(value)
        except ValueError:
            pass
    known = ", ".join(d.value for d in Direction)
    raise ValueError(f"{_show(value)} is not one of {known}")


def _timestamp(value: object) -> datetime:
    if value is None:
        return EPOCH
    if not isinstance(value, str):
        raise ValueError(f"expected an ISO-8601 timestamp, got {_show(value)}")
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(f"expected an ISO-8601 timestamp, got {_show(value)}") from None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _interval(value: object) -> tuple[float, float] | None:
    if value is None:
        return None
    if not isinstance(value, list) or len(value) != 2:
        raise ValueError(f"expected [lo, hi] or null, got {_show(value)}")
    check = _number(null="none")
    lo, hi = check(value[0]), check(value[1])
    if lo is None or hi is None:
        return None  # a half-known interval is no interval (what the writer does too)
    if lo > hi:
        raise ValueError(f"lower bound {lo:g} is above upper bound {hi:g}")
    return (lo, hi)


class NullStatsIn(_In):
    """One entry's null distribution at one rank multiplier (``core.stats.NullStats``)."""

    mean: Number
    std: Weight
    n: Count
    degenerate: bool = False
    samples: list[Number] = Field(default_factory=list)
    construction: str = "init_scale"
    method: str = "t_prediction"


class NullSummaryIn(_In):
    """How one result stands against its nulls (``core.result.NullSummary``)."""

    construction: str
    method: str = "t_prediction"
    k: Count
    samples: list[Number] = Field(default_factory=list)
    z_threshold: Number
    log_scale: bool = False
    non_negative: bool = True
    statistic: OptNumber = None
    p_empirical: OptUnit = None
    degenerate: str | None = None
    z_by_rank: Annotated[dict[str, NanNumber], BeforeValidator(_none_as(dict))] = Field(
        default_factory=dict
    )


class NullCalibrationIn(_In):
    """What a ``null_adapter`` measured (``core.result.NullCalibration``)."""

    by_rank: dict[str, dict[str, NullStatsIn]]
    primary: str
    failures: dict[str, str] = Field(default_factory=dict)
    from_cache: bool = False
    cache_file: str | None = None

    @model_validator(mode="after")
    def _primary_known(self) -> NullCalibrationIn:
        if self.by_rank and self.primary not in self.by_rank:
            known = ", ".join(sorted(self.by_rank))
            raise ValueError(f"primary {self.primary!r} is not a key of by_rank ({known})")
        return self


class OverfitIn(_In):
    """A named memorisation signal (``core.result.OverfitSignal``)."""

    name: Name
    message: str = ""


class TokenTraceIn(_In):
    """Per-token movement over one scored text (``core.result.TokenTrace``)."""

    label: str = ""
    pieces: list[str]
    values: list[OptNumber]
    unit: str = ""

    @model_validator(mode="after")
    def _aligned(self) -> TokenTraceIn:
        if len(self.values) != len(self.pieces):
            raise ValueError(
                f"has {len(self.pieces)} pieces but {len(self.values)} values; "
                "there must be one value (or null) per piece"
            )
        return self


class GeneratedSampleIn(_In):
    """One prompt's base and fine-tuned generations (``core.result.GeneratedSample``)."""

    prompt: str
    base: str
    finetuned: str


class ProbeIn(_In):
    name: Name
    kind: Name
    verdict: Annotated[Verdict, BeforeValidator(_verdict)]
    score: OptUnit = None
    raw: OptNumber = None
    z_score: OptNumber = None
    p_value: OptUnit = None
    p_adjusted: OptUnit = None
    effect_ratio: OptNumber = None
    base_value: OptNumber = None
    ft_value: OptNumber = None
    ci_95: Annotated[tuple[float, float] | None, BeforeValidator(_interval)] = None
    evidence: Obj = Field(default_factory=dict)
    message: str = ""
    duration_s: NanSeconds = 0.0
    category: str = ""
    weight: Weight = 1.0
    direction: Annotated[Direction, BeforeValidator(_direction)] = Direction.EFFECT
    headline: str = ""
    measured: str = ""
    null: NullSummaryIn | None = None
    calibration: NullCalibrationIn | None = None
    config: Obj = Field(default_factory=dict)
    overfit: OverfitIn | None = None
    tokens: Annotated[list[TokenTraceIn], BeforeValidator(_none_as(list))] = Field(
        default_factory=list
    )
    generations: Annotated[list[GeneratedSampleIn], BeforeValidator(_none_as(list))] = Field(
        default_factory=list
    )


class HealthIn(_In):
    level: Literal["info", "warn", "error"] = "info"
    code: str = ""
    message: str = ""
    fix: Annotated[str, BeforeValidator(_none_as(str))] = ""


class DeterminismIn(_In):
    class_: str = Field(default="best_effort", alias="class")
    seed: StrictInt = 0
    notes: Annotated[list[str], BeforeValidator(_none_as(list))] = Field(default_factory=list)


class ScoreIn(_In):
    overall: Unit
    band: str | None = None
    #: Why the band is what it is (the band rules weigh verdicts, not only ``overall``).
    band_reason: str = ""
    components: Annotated[dict[str, NanUnit], BeforeValidator(_none_as(dict))] = Field(
        default_factory=dict
    )
    weights: Annotated[dict[str, Weight], BeforeValidator(_none_as(dict))] = Field(
        default_factory=dict
    )
    findings: Annotated[list[str], BeforeValidator(_none_as(list))] = Field(default_factory=list)

    @field_validator("band")
    @classmethod
    def _band_known(cls, band: str | None) -> str | None:
        # Only membership: a band also weighs verdicts (a FAILing forgetting probe
        # caps it), so it is no function of ``overall`` alone.
        if band is not None and band not in BAND_NAMES:
            raise ValueError(f"band {band!r} is not one of {', '.join(BAND_NAMES)}")
        return band


class ReasonIn(_In):
    code: ReasonCode
    message: Name
    probes: list[str] = Field(default_factory=list)


class GateIn(_In):
    exit_code: Literal[0, 1, 2]
    passed: bool
    threshold: Unit
    overall: Unit
    reasons: list[ReasonIn] = Field(default_factory=list)
    allowed_skips: list[str] = Field(default_factory=list)
    allowed_warns: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _consistent(self) -> GateIn:
        if self.passed != (self.exit_code == 0):
            raise ValueError(f"passed={self.passed} contradicts exit_code {self.exit_code}")
        if self.passed == bool(self.reasons):
            raise ValueError("a passing gate lists no reasons, a failing one at least one")
        return self


class RunIn(_In):
    """A run file as ``sway run --json`` writes it (version 1 files are upgraded first)."""

    model_config = ConfigDict(title="sway run")

    schema_version: Literal[2]
    sway_version: str = ""
    spec_path: str = ""
    base_model_id: str = ""
    adapter_id: str = ""
    started_at: Annotated[datetime, BeforeValidator(_timestamp)] = EPOCH
    finished_at: Annotated[datetime, BeforeValidator(_timestamp)] = EPOCH
    determinism: DeterminismIn | None = None
    backend_stats: Obj = Field(default_factory=dict)
    timings: Annotated[dict[str, NanSeconds], BeforeValidator(_none_as(dict))] = Field(
        default_factory=dict
    )
    versions: Annotated[dict[str, str], BeforeValidator(_none_as(dict))] = Field(
        default_factory=dict
    )
    null_stats: Annotated[dict[str, dict[str, Any]], BeforeValidator(_none_as(dict))] = Field(
        default_factory=dict
    )
    noise_floor: Obj = Field(default_factory=dict)
    health: Annotated[list[HealthIn], BeforeValidator(_none_as(list))] = Field(default_factory=list)
    score: ScoreIn
    probes: list[ProbeIn]
    gate: GateIn | None = None

    @field_validator("probes")
    @classmethod
    def _unique_names(cls, probes: list[ProbeIn]) -> list[ProbeIn]:
        seen: set[str] = set()
        for i, probe in enumerate(probes):
            if probe.name in seen:
                raise ValueError(f"probes[{i}].name {probe.name!r} appears twice")
            seen.add(probe.name)
        return probes

    @model_validator(mode="after")
    def _coherent(self) -> RunIn:
        if self.finished_at < self.started_at:
            raise ValueError("finished_at is before started_at")
        if self.gate is not None:
            if not math.isclose(self.gate.overall, self.score.overall, abs_tol=1e-12):
                raise ValueError(
                    f"gate.overall {self.gate.overall:g} differs from score.overall "
                    f"{self.score.overall:g}"
                )
            names = {p.name for p in self.probes}
            for i, reason in enumerate(self.gate.reasons):
                unknown = [n for n in reason.probes if n not in names]
                if unknown:
                    raise ValueError(f"gate.reasons[{i}] names unknown probe(s) {unknown}")
        return self


def parse_run(data: object) -> RunIn:
    """Validate a parsed JSON document; raise a SpecValidationError naming each bad path."""
    if not isinstance(data, Mapping) or "schema_version" not in data:
        top = "an object" if isinstance(data, Mapping) else f"a JSON {type(data).__name__}"
        raise SpecValidationError(
            f"not a sway JSON report (the top level is {top} without 'schema_version'); "
            "pass a file written by "
            "`sway run --json` or `sway report --format json`",
            source=SOURCE,
        )
    version = data["schema_version"]
    if type(version) is not int or version not in READABLE_VERSIONS:
        readable = " and ".join(str(v) for v in READABLE_VERSIONS)
        raise SpecValidationError(
            f"schema_version {version!r} is not supported by this sway (it reads "
            f"versions {readable}); re-run the suite or use the sway that wrote it",
            source=SOURCE,
        )
    bad = _surrogate(data, "")
    if bad is not None:
        raise SpecValidationError(
            f"{bad or '(top level)'}: text holds an unpaired UTF-16 surrogate, which no "
            "UTF-8 file can carry; this file was not written by sway — re-run the suite",
            source=SOURCE,
        )
    v1 = version == 1
    try:
        return RunIn.model_validate(upgrade_v1(data) if v1 else dict(data))
    except ValidationError as exc:
        raise SpecValidationError(describe(exc, v1=v1), source=SOURCE) from None


def run_json_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of a run file this sway writes."""
    schema = RunIn.model_json_schema()
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$comment": (
            f"sway run file, schema_version {SCHEMA_VERSION}; `sway report` also reads "
            "version 1 files"
        ),
        **schema,
    }


def _surrogate(value: object, where: str) -> str | None:
    """The JSON path of the first string (key or value) holding a lone surrogate."""
    if isinstance(value, str):
        return where if _SURROGATE.search(value) else None
    if isinstance(value, Mapping):
        for key, item in value.items():
            path = f"{where}.{key}" if where else str(key)
            if isinstance(key, str) and _SURROGATE.search(key):
                return path
            found = _surrogate(item, path)
            if found is not None:
                return found
    elif isinstance(value, list):
        for i, item in enumerate(value):
            found = _surrogate(item, f"{where}[{i}]")
            if found is not None:
                return found
    return None


def gate_of(run: RunIn) -> GateDecision | None:
    """The recorded gate decision, typed, or None for a ``run --json`` file."""
    if run.gate is None:
        return None
    g = run.gate
    return GateDecision(
        exit_code=g.exit_code,
        threshold=g.threshold,
        overall=g.overall,
        reasons=tuple(GateReason(r.code, r.message, tuple(r.probes)) for r in g.reasons),
        allowed_skips=tuple(g.allowed_skips),
        allowed_warns=tuple(g.allowed_warns),
    )


_MESSAGES = {
    "missing": "is missing (a required field)",
    "string_type": "expected a string",
    "int_type": "expected an integer",
    "bool_type": "expected true or false",
    "dict_type": "expected an object",
    "model_type": "expected an object",
    "list_type": "expected a list",
    "tuple_type": "expected a list",
    "string_too_short": "is empty",
}


def describe(exc: ValidationError, *, v1: bool = False) -> str:
    """``path: problem`` for each error (at most :data:`MAX_LISTED`), one per line.

    ``v1``: the document was upgraded from version 1, so a typed field's path is
    shown as the ``evidence`` path the file really holds.
    """
    lines = []
    for err in exc.errors(include_url=False):
        path = _path(v1_loc(err["loc"]) if v1 else err["loc"])
        kind = err["type"]
        if kind in ("value_error", "assertion_error"):
            problem = str(err["msg"]).removeprefix("Value error, ")
        elif kind in _MESSAGES:
            problem = _MESSAGES[kind]
            if kind != "missing":
                problem = f"{problem}, got {_show(err.get('input'))}"
        else:
            message = str(err["msg"]).replace("Input should be", "should be")
            problem = f"{message}, got {_show(err.get('input'))}"
        lines.append(f"{path} {problem}" if kind == "missing" else f"{path}: {problem}")
    shown = lines[:MAX_LISTED]
    more = len(lines) - len(shown)
    if more:
        shown.append(f"... and {more} more")
    if len(shown) == 1:
        return shown[0]
    return f"{len(lines)} problems:\n  - " + "\n  - ".join(shown)


def _path(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "(top level)"


__all__ = [
    "EPOCH",
    "READABLE_VERSIONS",
    "NullCalibrationIn",
    "OverfitIn",
    "NullStatsIn",
    "NullSummaryIn",
    "GeneratedSampleIn",
    "ProbeIn",
    "RunIn",
    "TokenTraceIn",
    "describe",
    "gate_of",
    "parse_run",
    "run_json_schema",
]
