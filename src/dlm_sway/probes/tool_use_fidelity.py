"""``tool_use_fidelity``: did the LoRA break tool-call JSON?

Each case is a prompt (optionally with a system turn) and the JSON Schema a
correct tool call satisfies. The base and the fine-tuned view answer every case
greedily (through the chat template when the model has one); from each answer
the first JSON value is extracted (the whole answer, else the first fenced
block, else the first ``{...}`` that parses as an object) and validated with the
``jsonschema`` library (the schema's own draft). Two rates per view:

* **validity**: the answer contains JSON that parses;
* **schema agreement**: that JSON also satisfies the case's schema.

``raw`` is the change in schema agreement, ft − base (0: unchanged, −1: every
call the base got right is broken). It is a forgetting claim (direction HARM),
judged like :mod:`dlm_sway.probes.external_perplexity` by
:func:`~dlm_sway.core.judge.judge_harm`: FAIL needs a drop past
``assert_validity_delta_gte`` *and* worse than random adapters of the same size;
a drop that random adapters match is a WARN. If the base gets no case right
there is nothing to lose and no claim can be made: WARN, never PASS.

Departures from the reference: a real JSON Schema validator instead of a
hand-written subset, any schema rather than an OpenAI function shape, NaN and
Infinity (not JSON) count as invalid, and the harm direction instead of
demanding that the fine-tune produce *more* valid calls than random adapters.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, ValidationInfo, field_validator

from dlm_sway.core.judge import Judgement, judge_harm
from dlm_sway.core.result import Direction, GeneratedSample, ProbeResult, Verdict
from dlm_sway.core.scoring import (
    BASE_AND_FT,
    ChatTurn,
    Conversation,
    GenerationSettings,
    shared_forwards,
)
from dlm_sway.core.stats import bootstrap_ci
from dlm_sway.probes._fields import STRICT, NonBlank, ZBar
from dlm_sway.probes._textgen import CannotGenerateError, write
from dlm_sway.probes._verdict import calibrate, judged_result
from dlm_sway.probes.base import Probe, ProbeSpec, RunContext, bare_result

_FENCE = re.compile(r"```[A-Za-z0-9_-]*[ \t]*\n?(.*?)```", re.DOTALL)
#: Cases whose answers the reports show side by side.
SHOWN = 8
#: Largest schema file read (a tool schema is a few KiB).
_SCHEMA_MAX_BYTES = 1_000_000


class ToolCase(BaseModel):
    """One tool-call request and the schema its answer must satisfy."""

    model_config = STRICT

    prompt: NonBlank
    #: The JSON Schema (a mapping), or the path of a ``.json`` file holding it
    #: (relative paths: against the spec's folder when the loader passes it, else the
    #: current directory).
    json_schema: dict[str, Any] | str
    #: An optional system turn (e.g. the tool's description and the answer format).
    system: str | None = None

    @field_validator("json_schema")
    @classmethod
    def _schema(cls, value: dict[str, Any] | str, info: ValidationInfo) -> dict[str, Any]:
        base_dir = (info.context or {}).get("base_dir") if info.context else None
        schema = _read_schema(value, base_dir) if isinstance(value, str) else value
        check_schema(schema)
        return schema

    @property
    def schema_dict(self) -> dict[str, Any]:
        """The schema as a mapping (a path was read and replaced at validation)."""
        assert isinstance(self.json_schema, dict)
        return self.json_schema

    def prompt_turns(self) -> Conversation:
        user = ChatTurn("user", self.prompt)
        return (ChatTurn("system", self.system), user) if self.system else (user,)


class ToolUseFidelitySpec(ProbeSpec):
    kind: Literal["tool_use_fidelity"] = "tool_use_fidelity"
    cases: list[ToolCase] = Field(min_length=1, max_length=1000)
    max_new_tokens: int = Field(default=128, ge=1, le=2048)
    #: None: the chat template when the model has one; true: require it; false: plain text.
    chat: bool | None = None
    #: Lowest acceptable change in schema agreement (ft − base), in [-1, 0].
    assert_validity_delta_gte: float = Field(default=-0.1, ge=-1.0, le=0.0)
    assert_z_gte: ZBar = 3.0


def _read_schema(value: str, base_dir: Any) -> dict[str, Any]:
    path = Path(value).expanduser()
    if not path.is_absolute():
        path = Path(base_dir or Path.cwd()) / path
    try:
        if path.stat().st_size > _SCHEMA_MAX_BYTES:
            raise ValueError(f"schema file {path} is over {_SCHEMA_MAX_BYTES} bytes")
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ValueError(f"cannot read schema file {path}: {exc.strerror or exc}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"schema file {path} is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ValueError(f"schema file {path} must hold a JSON object")
    return data


def check_schema(schema: dict[str, Any]) -> None:
    """A ValueError naming the problem when ``schema`` is not a valid JSON Schema."""
    from jsonschema import SchemaError, validators

    try:
        validators.validator_for(schema).check_schema(schema)
    except SchemaError as exc:
        where = "/".join(str(p) for p in exc.path) or "top level"
        raise ValueError(f"is not a valid JSON Schema ({where}): {exc.message}") from None


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _loads(text: str) -> tuple[bool, Any]:
    try:
        return True, json.loads(text, parse_constant=_reject_constant)
    except ValueError:
        return False, None


def extract_json(text: str) -> tuple[bool, Any]:
    """``(found, value)``: the whole answer, else a fenced block, else the first object."""
    ok, value = _loads(text.strip())
    if ok:
        return True, value
    for block in _FENCE.finditer(text):
        ok, value = _loads(block.group(1).strip())
        if ok:
            return True, value
    decoder = json.JSONDecoder(parse_constant=_reject_constant)
    start = text.find("{")
    while start >= 0:
        try:
            value, _ = decoder.raw_decode(text, start)
        except ValueError:
            value = None
        if isinstance(value, dict):
            return True, value
        start = text.find("{", start + 1)
    return False, None


@dataclass(frozen=True, slots=True)
class Checked:
    parsed: bool
    valid: bool
    error: str | None


def check_answer(text: str, schema: dict[str, Any]) -> Checked:
    from jsonschema import validators

    found, value = extract_json(text)
    if not found:
        return Checked(False, False, "no JSON in the answer")
    error = next(iter(validators.validator_for(schema)(schema).iter_errors(value)), None)
    return Checked(True, error is None, None if error is None else error.message[:200])


def _practical_score(delta: float, limit: float) -> float:
    """1 with no calls lost, falling linearly to 0 at the limit."""
    if delta >= 0.0:
        return 1.0
    return max(0.0, 1.0 - delta / limit) if limit < 0.0 else 0.0


def _rate(flags: list[bool]) -> float:
    return sum(flags) / len(flags) if flags else 0.0


class ToolUseFidelityProbe(Probe):
    """Share of tool calls that parse and satisfy their JSON Schema, fine-tune vs base."""

    kind = "tool_use_fidelity"
    spec_cls = ToolUseFidelitySpec
    category = "attribution"
    calibrated = True

    def run(self, spec: ProbeSpec, ctx: RunContext) -> ProbeResult:
        assert isinstance(spec, ToolUseFidelitySpec)
        backend = ctx.require_backend
        prompts = [c.prompt_turns() for c in spec.cases]
        settings = GenerationSettings(max_new_tokens=spec.max_new_tokens, chat=spec.chat)
        try:
            with shared_forwards(backend, BASE_AND_FT):
                with backend.as_base() as view:
                    base_text = write(view, prompts, settings, probe=self.kind)
                with backend.as_finetuned() as view:
                    ft_text = write(view, prompts, settings, probe=self.kind)
        except CannotGenerateError as exc:
            return bare_result(spec, Verdict.SKIP, str(exc))
        base = [check_answer(t, c.schema_dict) for t, c in zip(base_text, spec.cases, strict=True)]
        ft = [check_answer(t, c.schema_dict) for t, c in zip(ft_text, spec.cases, strict=True)]
        base_valid = _rate([c.valid for c in base])
        ft_valid = _rate([c.valid for c in ft])
        raw = ft_valid - base_valid
        n = len(spec.cases)
        harm = calibrate(raw, ctx, spec, sign=-1)
        what = (
            f"schema-valid tool calls {base_valid:.0%} → {ft_valid:.0%} (Δ {raw:+.2f}) over {n} "
            f"case(s); parsing JSON {_rate([c.parsed for c in base]):.0%} → "
            f"{_rate([c.parsed for c in ft]):.0%}"
        )
        limit = spec.assert_validity_delta_gte
        judgement = judge_harm(
            harm.comparison if harm.usable else None,
            what=what,
            versus=harm.versus(),
            practical_ok=raw >= limit,
            limit_text=f"limit: Δ ≥ {limit:g} (assert_validity_delta_gte)",
            z_bar=spec.assert_z_gte,
            non_negative=False,
            uncalibrated_reason=harm.fallback_note(self.kind),
            calibration_failed=harm.failed,
            practical_score=_practical_score(raw, limit),
        )
        if base_valid == 0.0 and not ctx.calibrating:
            judgement = Judgement(
                Verdict.WARN,
                "cannot be judged",
                f"{what}: the base model answers no case with a schema-valid call, so there is "
                "nothing the adapter could break; give cases the base model gets right (e.g. "
                "a system turn describing the tool and the exact JSON shape)",
                None,
            )
        evidence: dict[str, Any] = {
            "num_cases": n,
            "valid_rate_base": base_valid,
            "valid_rate_ft": ft_valid,
            "parse_rate_base": _rate([c.parsed for c in base]),
            "parse_rate_ft": _rate([c.parsed for c in ft]),
            "broken_cases": [
                i for i, (b, f) in enumerate(zip(base, ft, strict=True)) if b.valid and not f.valid
            ],
            "per_case": [
                {
                    "case": i,
                    "base_valid": b.valid,
                    "ft_valid": f.valid,
                    "ft_error": f.error,
                    "ft_text": f_text[:160],
                }
                for i, (b, f, f_text) in enumerate(zip(base, ft, ft_text, strict=True))
            ][:10],
        }
        per_case = [float(f.valid) - float(b.valid) for b, f in zip(base, ft, strict=True)]
        shown = tuple(
            GeneratedSample(c.prompt, b, f)
            for c, b, f in list(zip(spec.cases, base_text, ft_text, strict=True))[:SHOWN]
        )
        result = judged_result(
            spec,
            harm,
            judgement,
            raw=raw,
            measured=what,
            evidence=evidence,
            direction=Direction.HARM,
            non_negative=False,
            base_value=base_valid,
            ft_value=ft_valid,
            ci_95=None
            if ctx.calibrating or not math.isfinite(raw)
            else bootstrap_ci(per_case, seed=ctx.seed),
        )
        return replace(result, generations=shown)

    @classmethod
    def calibrate_spec(cls, ctx: RunContext, target: ProbeSpec | None = None) -> ProbeSpec | None:
        """The entry itself: nulls answer exactly the cases the fine-tune answers."""
        return target if isinstance(target, ToolUseFidelitySpec) else None


__all__ = [
    "Checked",
    "ToolCase",
    "ToolUseFidelityProbe",
    "ToolUseFidelitySpec",
    "check_answer",
    "check_schema",
    "extract_json",
]
