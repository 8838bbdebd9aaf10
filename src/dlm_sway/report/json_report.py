"""The JSON report: the machine contract, and the way a saved run is re-rendered.

``to_json`` writes ``schema_version`` so consumers can refuse a format they do
not know; ``from_json`` rebuilds the exact ``(SuiteResult, SwayScore)`` pair, so
``sway report run.json --format X`` goes through the same renderers as a live
run. Non-finite floats are written as ``null`` (JSON has no NaN), tuples as
lists, and naive timestamps are taken to be UTC.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from dlm_sway.core.errors import SpecValidationError
from dlm_sway.core.result import (
    SCHEMA_VERSION,
    DeterminismReport,
    HealthCheck,
    ProbeResult,
    SuiteResult,
    SwayScore,
    Verdict,
    band_for,
)

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_SOURCE = "JSON report"


def to_json(suite: SuiteResult, score: SwayScore) -> str:
    """The report as a JSON document (2-space indent, sorted keys, no NaN tokens)."""
    return json.dumps(to_json_dict(suite, score), indent=2, sort_keys=True, allow_nan=False)


def to_json_dict(suite: SuiteResult, score: SwayScore) -> dict[str, Any]:
    """The report as plain JSON-compatible Python data."""
    determinism = None
    if suite.determinism is not None:
        determinism = {
            "class": suite.determinism.class_,
            "seed": suite.determinism.seed,
            "notes": list(suite.determinism.notes),
        }
    data: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "sway_version": suite.sway_version,
        "spec_path": suite.spec_path,
        "base_model_id": suite.base_model_id,
        "adapter_id": suite.adapter_id,
        "started_at": _aware(suite.started_at).isoformat(),
        "finished_at": _aware(suite.finished_at).isoformat(),
        "wall_seconds": (_aware(suite.finished_at) - _aware(suite.started_at)).total_seconds(),
        "determinism": determinism,
        "backend_stats": suite.backend_stats,
        "timings": suite.timings,
        "versions": suite.versions,
        "null_stats": suite.null_stats,
        "noise_floor": suite.noise_floor,
        "health": [
            {"level": c.level, "code": c.code, "message": c.message, "fix": c.fix}
            for c in suite.health
        ],
        "score": {
            "overall": score.overall,
            "band": score.band,
            "components": score.components,
            "weights": score.weights,
            "findings": list(score.findings),
        },
        "probes": [_probe_dict(result) for result in suite.probes],
    }
    cleaned = _plain(data)
    assert isinstance(cleaned, dict)
    return cleaned


def _probe_dict(result: ProbeResult) -> dict[str, Any]:
    return {
        "name": result.name,
        "kind": result.kind,
        "verdict": result.verdict.value,
        "score": result.score,
        "raw": result.raw,
        "z_score": result.z_score,
        "p_value": result.p_value,
        "p_adjusted": result.p_adjusted,
        "effect_ratio": result.effect_ratio,
        "base_value": result.base_value,
        "ft_value": result.ft_value,
        "ci_95": _ci(result.ci_95),
        "evidence": result.evidence,
        "message": result.message,
        "duration_s": result.duration_s,
    }


def _ci(ci: tuple[float, float] | None) -> list[float] | None:
    # A half-known interval is no interval: write null rather than [null, hi].
    if ci is None or not all(math.isfinite(bound) for bound in ci):
        return None
    return [float(ci[0]), float(ci[1])]


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _plain(value: Any) -> Any:
    """Recursively turn ``value`` into JSON-safe data; non-finite floats become None."""
    if value is None or isinstance(value, bool | str | int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(key): _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        items = sorted(value, key=repr) if isinstance(value, set | frozenset) else value
        return [_plain(item) for item in items]
    if isinstance(value, datetime):
        return _aware(value).isoformat()
    tolist = getattr(value, "tolist", None)  # numpy arrays and scalars
    if callable(tolist):
        return _plain(tolist())
    return str(value)


def from_json(data: Mapping[str, Any]) -> tuple[SuiteResult, SwayScore]:
    """Rebuild a run from :func:`to_json_dict` output (or a parsed ``to_json`` file).

    Optional fields may be missing (older snapshots: no ``p_adjusted``,
    ``noise_floor`` or ``health``); the payload must carry
    this version's ``schema_version``, a ``score`` with an ``overall`` and a
    ``probes`` list.
    """
    if not isinstance(data, Mapping) or "schema_version" not in data:
        raise SpecValidationError(
            "not a sway JSON report (no 'schema_version'); pass a file written by "
            "`sway run --json` or `sway report --format json`",
            source=_SOURCE,
        )
    version = data["schema_version"]
    if type(version) is not int or version != SCHEMA_VERSION:
        raise SpecValidationError(
            f"schema_version {version!r} is not supported by this sway (it reads "
            f"version {SCHEMA_VERSION}); re-run the suite or use the sway that wrote it",
            source=_SOURCE,
        )
    determinism = None
    raw_det = data.get("determinism")
    if raw_det is not None:
        det = _mapping(raw_det, "determinism")
        determinism = DeterminismReport(
            class_=_str(det.get("class", "best_effort"), "determinism.class"),
            seed=_int(det.get("seed", 0), "determinism.seed"),
            notes=tuple(_str(n, "determinism.notes[]") for n in _list(det.get("notes"), "notes")),
        )
    raw_probes = data.get("probes")
    if raw_probes is None:
        raise SpecValidationError("missing 'probes' list", source=_SOURCE)
    suite = SuiteResult(
        spec_path=_str(data.get("spec_path", ""), "spec_path"),
        started_at=_time(data.get("started_at"), "started_at"),
        finished_at=_time(data.get("finished_at"), "finished_at"),
        base_model_id=_str(data.get("base_model_id", ""), "base_model_id"),
        adapter_id=_str(data.get("adapter_id", ""), "adapter_id"),
        sway_version=_str(data.get("sway_version", ""), "sway_version"),
        probes=tuple(
            _probe(_mapping(entry, f"probes[{i}]"), f"probes[{i}]")
            for i, entry in enumerate(_list(raw_probes, "probes"))
        ),
        null_stats={
            str(kind): dict(_mapping(stats, f"null_stats.{kind}"))
            for kind, stats in _mapping(data.get("null_stats") or {}, "null_stats").items()
        },
        determinism=determinism,
        backend_stats=dict(_mapping(data.get("backend_stats") or {}, "backend_stats")),
        timings={
            str(k): _req_float(v, f"timings.{k}")
            for k, v in _mapping(data.get("timings") or {}, "timings").items()
        },
        versions={
            str(k): _str(v, f"versions.{k}")
            for k, v in _mapping(data.get("versions") or {}, "versions").items()
        },
        noise_floor=dict(_mapping(data.get("noise_floor") or {}, "noise_floor")),
        health=tuple(
            _health(_mapping(entry, f"health[{i}]"), f"health[{i}]")
            for i, entry in enumerate(_list(data.get("health"), "health"))
        ),
    )
    return suite, _score(data.get("score"))


def _score(raw: object) -> SwayScore:
    if raw is None:
        raise SpecValidationError("missing 'score' object", source=_SOURCE)
    body = _mapping(raw, "score")
    if "overall" not in body:
        raise SpecValidationError("score.overall is missing", source=_SOURCE)
    overall = _req_float(body["overall"], "score.overall")
    return SwayScore(
        overall=overall,
        band=_str(body.get("band", band_for(overall)), "score.band"),
        components={
            str(k): _req_float(v, f"score.components.{k}")
            for k, v in _mapping(body.get("components") or {}, "score.components").items()
        },
        weights={
            str(k): _req_float(v, f"score.weights.{k}")
            for k, v in _mapping(body.get("weights") or {}, "score.weights").items()
        },
        findings=tuple(
            _str(f, "score.findings[]") for f in _list(body.get("findings"), "score.findings")
        ),
    )


def _probe(entry: Mapping[str, Any], where: str) -> ProbeResult:
    verdict_text = _str(entry.get("verdict"), f"{where}.verdict").lower()
    try:
        verdict = Verdict(verdict_text)
    except ValueError:
        known = ", ".join(v.value for v in Verdict)
        raise SpecValidationError(
            f"{where}.verdict: {verdict_text!r} is not one of {known}", source=_SOURCE
        ) from None
    ci = entry.get("ci_95")
    ci_95: tuple[float, float] | None = None
    if ci is not None:
        bounds = _list(ci, f"{where}.ci_95")
        if len(bounds) != 2:
            raise SpecValidationError(f"{where}.ci_95: expected [lo, hi]", source=_SOURCE)
        lo, hi = (_opt_float(b, f"{where}.ci_95") for b in bounds)
        ci_95 = None if lo is None or hi is None else (lo, hi)
    return ProbeResult(
        name=_str(entry.get("name"), f"{where}.name"),
        kind=_str(entry.get("kind"), f"{where}.kind"),
        verdict=verdict,
        score=_opt_float(entry.get("score"), f"{where}.score"),
        raw=_opt_float(entry.get("raw"), f"{where}.raw"),
        z_score=_opt_float(entry.get("z_score"), f"{where}.z_score"),
        p_value=_opt_float(entry.get("p_value"), f"{where}.p_value"),
        p_adjusted=_opt_float(entry.get("p_adjusted"), f"{where}.p_adjusted"),
        effect_ratio=_opt_float(entry.get("effect_ratio"), f"{where}.effect_ratio"),
        base_value=_opt_float(entry.get("base_value"), f"{where}.base_value"),
        ft_value=_opt_float(entry.get("ft_value"), f"{where}.ft_value"),
        ci_95=ci_95,
        evidence=dict(_mapping(entry.get("evidence") or {}, f"{where}.evidence")),
        message=_str(entry.get("message", ""), f"{where}.message"),
        duration_s=_req_float(entry.get("duration_s", 0.0), f"{where}.duration_s"),
    )


def _health(entry: Mapping[str, Any], where: str) -> HealthCheck:
    return HealthCheck(
        level=_str(entry.get("level", "info"), f"{where}.level"),
        code=_str(entry.get("code", ""), f"{where}.code"),
        message=_str(entry.get("message", ""), f"{where}.message"),
        fix=_str(entry.get("fix") or "", f"{where}.fix"),
    )


def _bad(where: str, expected: str, value: object) -> SpecValidationError:
    return SpecValidationError(f"{where}: expected {expected}, got {value!r}", source=_SOURCE)


def _mapping(value: object, where: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise _bad(where, "an object", value)
    return value


def _list(value: object, where: str) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list | tuple):
        raise _bad(where, "a list", value)
    return list(value)


def _str(value: object, where: str) -> str:
    if not isinstance(value, str):
        raise _bad(where, "a string", value)
    return value


def _int(value: object, where: str) -> int:
    if type(value) is not int:
        raise _bad(where, "an integer", value)
    return value


def _opt_float(value: object, where: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _bad(where, "a number or null", value)
    return float(value)


def _req_float(value: object, where: str) -> float:
    """A float field that cannot be None: ``null`` was a non-finite value, read back as NaN."""
    number = _opt_float(value, where)
    return math.nan if number is None else number


def _time(value: object, where: str) -> datetime:
    if value is None:
        return _EPOCH
    text = _str(value, where)
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise _bad(where, "an ISO-8601 timestamp", value) from None
    return _aware(moment)


__all__ = ["from_json", "to_json", "to_json_dict"]
