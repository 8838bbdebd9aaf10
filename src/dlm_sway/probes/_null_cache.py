"""On-disk cache of null statistics, keyed by backend identity and calibration params.

The identity includes a content hash of the adapter weights, so a retrained
adapter at the same path never reuses stale nulls. Writes are atomic; a
corrupt or unreadable file is a miss (recompute), never an error.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

CACHE_FORMAT = 1


def cache_root() -> Path:
    """``$SWAY_NULL_CACHE_DIR``, else ``$XDG_CACHE_HOME/dlm-sway/null-stats``, else ~/.cache."""
    explicit = os.environ.get("SWAY_NULL_CACHE_DIR")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "dlm-sway" / "null-stats"


def cache_key(identity: str, params: dict[str, Any]) -> str:
    blob = json.dumps(
        {"format": CACHE_FORMAT, "backend": identity, "params": params},
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:32]


def _disabled() -> bool:
    return os.environ.get("SWAY_DISABLE_NULL_CACHE", "") not in ("", "0")


def load(key: str) -> dict[str, Any] | None:
    if _disabled():
        return None
    path = cache_root() / f"{key}.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def save(key: str, payload: dict[str, Any]) -> bool:
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
                json.dump(payload, fh, sort_keys=True, indent=2)
            tmp.replace(root / f"{key}.json")
        finally:
            tmp.unlink(missing_ok=True)
    except OSError:
        return False
    return True


__all__ = ["cache_key", "cache_root", "load", "save"]
