"""On-disk cache of null statistics, keyed by backend identity and calibration params.

The identity includes a content hash of the adapter weights, so a retrained
adapter at the same path never reuses stale nulls. Writes are atomic. A file is
trusted only after it passes :func:`read`'s schema: the identity and params it
stores equal this run's, every rank group holds exactly the calibrated entries,
each with exactly K finite samples whose statistics it recomputes. Anything
else — unreadable, valid JSON of the wrong shape, stats under another name — is
a miss (recompute and overwrite), never an error and never a silent fallback.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, FiniteFloat, ValidationError

from dlm_sway.core.stats import NullStats

CACHE_FORMAT = 2


def cache_root() -> Path:
    """``$SWAY_NULL_CACHE_DIR``, else ``$XDG_CACHE_HOME/dlm-sway/null-stats``, else ~/.cache."""
    explicit = os.environ.get("SWAY_NULL_CACHE_DIR")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "dlm-sway" / "null-stats"


def _canonical(params: Mapping[str, Any]) -> Any:
    """Params as they read back from JSON, so stored and expected compare exactly."""
    return json.loads(json.dumps(params, sort_keys=True, default=str))


def cache_key(identity: str, params: Mapping[str, Any]) -> str:
    blob = json.dumps(
        {"format": CACHE_FORMAT, "backend": identity, "params": params},
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:32]


def cache_path(key: str) -> Path:
    return cache_root() / f"{key}.json"


def _disabled() -> bool:
    return os.environ.get("SWAY_DISABLE_NULL_CACHE", "") not in ("", "0")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise ValueError(f"duplicate key {k!r}")
        out[k] = v
    return out


def _read_json(path: Path) -> tuple[Any, str | None]:
    """(parsed, None), (None, None) when there is no file, or (None, why unreadable)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None, None
    except (OSError, ValueError) as exc:
        return None, f"unreadable: {exc}"
    try:
        return json.loads(text, object_pairs_hook=_no_duplicates), None
    except (ValueError, RecursionError) as exc:
        return None, f"not valid JSON: {exc}"


def load(key: str) -> dict[str, Any] | None:
    """The raw JSON object stored under ``key`` (no schema check), or None."""
    if _disabled():
        return None
    data, _ = _read_json(cache_path(key))
    return data if isinstance(data, dict) else None


def save(key: str, payload: Mapping[str, Any]) -> bool:
    """Atomic write; returns False (and leaves no partial file) when the disk refuses."""
    if _disabled():
        return False
    root = cache_root()
    try:
        root.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{key}.", suffix=".tmp", dir=root)
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump(payload, fh, sort_keys=True, indent=2, allow_nan=False)
            tmp.replace(root / f"{key}.json")
        finally:
            tmp.unlink(missing_ok=True)
    except (OSError, ValueError):
        return False
    return True


# --- the schema a cached calibration must pass ----------------------------------------------

_STRICT = ConfigDict(strict=True, extra="forbid", frozen=True)


class _Entry(BaseModel):
    """One entry's null statistics, exactly as :meth:`NullStats.to_dict` writes them."""

    model_config = _STRICT
    mean: FiniteFloat
    std: FiniteFloat
    n: int
    degenerate: bool
    samples: list[FiniteFloat]
    construction: str
    method: str


class _Payload(BaseModel):
    model_config = _STRICT
    format: Literal[2]
    identity: str
    params: dict[str, Any]
    by_rank: dict[str, dict[str, _Entry]]
    sway_version: str


@dataclass(frozen=True, slots=True)
class Expected:
    """What this run's calibration is: a cached file must match it in every part."""

    identity: str
    params: Mapping[str, Any]
    ranks: Sequence[str]
    names: Sequence[str]
    runs: int
    construction: str
    method: str
    sway_version: str

    @property
    def key(self) -> str:
        return cache_key(self.identity, self.params)


@dataclass(frozen=True, slots=True)
class CacheRead:
    """A lookup: ``by_rank`` on a hit; on a miss, ``problem`` says why an existing file
    was rejected (None when there was no file or the cache is off)."""

    path: Path
    by_rank: dict[str, dict[str, NullStats]] | None = None
    problem: str | None = None


def _close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)


def _entry_stats(where: str, e: _Entry, exp: Expected) -> NullStats | str:
    if len(e.samples) != exp.runs or e.n != exp.runs:
        return f"{where}: {len(e.samples)} samples (n={e.n}), expected {exp.runs}"
    if e.construction != exp.construction or e.method != exp.method:
        return (
            f"{where}: nulls drawn {e.construction}/{e.method}, "
            f"expected {exp.construction}/{exp.method}"
        )
    stats = NullStats.from_samples(e.samples, construction=e.construction, method=e.method)
    if not (
        _close(stats.mean, e.mean) and _close(stats.std, e.std) and stats.degenerate == e.degenerate
    ):
        return f"{where}: stored mean/std/degenerate disagree with its samples"
    return stats


def _validate(data: Any, exp: Expected) -> dict[str, dict[str, NullStats]] | str:
    try:
        payload = _Payload.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(p) for p in first["loc"]) or "<root>"
        return f"schema: {loc}: {first['msg']} ({exc.error_count()} problem(s))"
    if payload.identity != exp.identity:
        return "stored for another backend/adapter identity"
    if payload.params != _canonical(exp.params) or payload.sway_version != exp.sway_version:
        return "stored for other calibration parameters"
    if sorted(payload.by_rank) != sorted(exp.ranks):
        return f"rank groups {sorted(payload.by_rank)}, expected {sorted(exp.ranks)}"
    out: dict[str, dict[str, NullStats]] = {}
    for rank in exp.ranks:
        group = payload.by_rank[rank]
        if sorted(group) != sorted(exp.names):
            return f"{rank} holds entries {sorted(group)}, expected {sorted(exp.names)}"
        out[rank] = {}
        for name in exp.names:
            stats = _entry_stats(f"{rank}.{name}", group[name], exp)
            if isinstance(stats, str):
                return stats
            out[rank][name] = stats
    return out


def read(exp: Expected) -> CacheRead:
    """The cached calibration for ``exp`` if a valid one is stored; otherwise a miss."""
    path = cache_path(exp.key)
    if _disabled():
        return CacheRead(path)
    data, problem = _read_json(path)
    if data is None:
        return CacheRead(path, problem=problem)
    checked = _validate(data, exp)
    if isinstance(checked, str):
        return CacheRead(path, problem=checked)
    return CacheRead(path, by_rank=checked)


def write(exp: Expected, by_rank: Mapping[str, Mapping[str, NullStats]]) -> bool:
    """Store a complete calibration (every rank, every entry), atomically replacing any file."""
    payload = {
        "format": CACHE_FORMAT,
        "identity": exp.identity,
        "params": _canonical(exp.params),
        "by_rank": {r: {n: s.to_dict() for n, s in g.items()} for r, g in by_rank.items()},
        "sway_version": exp.sway_version,
    }
    return save(exp.key, payload)


__all__ = [
    "CacheRead",
    "Expected",
    "cache_key",
    "cache_path",
    "cache_root",
    "load",
    "read",
    "save",
    "write",
]
