"""On-disk cache of the base view's scoring results, shared by every run on that base.

The base view is the base model alone, so what it returns depends only on the
base weights, the tokenizer, the numerics (dtype, device kind, attention
implementation, library versions) and the request. A second run on the same
base — another adapter, another checkpoint — reads those results back instead
of recomputing them (the base view is 1/(K+2) of a calibrated suite's forwards).

Trust rules: an entry is used only when its header names this exact identity
and request and a SHA-256 over header and arrays matches; values are checked
for shape, range and finiteness. Anything else (truncated, bit-flipped, another
format) is a miss: a warning, recompute, overwrite — never a wrong number.
Writes are atomic (temp file + rename); the folder is bounded by size (oldest
entries evicted). ``SWAY_DISABLE_BASE_CACHE=1`` turns it off,
``SWAY_BASE_CACHE_DIR`` moves it, ``SWAY_BASE_CACHE_MAX_MB`` bounds it.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import logging
import os
import tempfile
import time
import weakref
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import numpy as np
from pydantic import BaseModel, ConfigDict, ValidationError

from dlm_sway.core.scoring import RollingLogprob, TokenDist

if TYPE_CHECKING:
    from dlm_sway.backends.hf_views import HFScorer

CACHE_FORMAT = 1
#: The cache namespace of the base view (``HFDifferentialBackend._base_view``).
BASE_NS = "base"
DISABLE_ENV = "SWAY_DISABLE_BASE_CACHE"
DIR_ENV = "SWAY_BASE_CACHE_DIR"
MAX_MB_ENV = "SWAY_BASE_CACHE_MAX_MB"
DEFAULT_MAX_BYTES = 512 * 2**20
#: Log-probs are ≤ 0; float32 rounding of a near-certain token may sit a hair above.
_LOGPROB_SLACK = 1e-4
#: A file modified this recently is hashed again next time (mtime can be coarse, as in git).
_RACY_SECONDS = 2.0

Kind = Literal["topk", "full", "float", "rolling"]
#: Which value each cached op holds; other ops are never cached on disk.
OP_KINDS: dict[str, Kind] = {
    "next_token": "topk",
    "next_token_full": "full",
    "logprob_of": "float",
    "rolling": "rolling",
    # The noise floor's two layouts (``base_layout_pairs``): whole-vocabulary dists.
    "layout_batched": "full",
    "layout_single": "full",
}
Value = TokenDist | RollingLogprob | float
T = TypeVar("T")

_log = logging.getLogger(__name__)


def enabled() -> bool:
    return os.environ.get(DISABLE_ENV, "") in ("", "0")


def cache_root() -> Path:
    """``$SWAY_BASE_CACHE_DIR``, else ``$XDG_CACHE_HOME/dlm-sway/base-cache``, else ~/.cache."""
    explicit = os.environ.get(DIR_ENV)
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "dlm-sway" / "base-cache"


def max_bytes() -> int:
    raw = os.environ.get(MAX_MB_ENV, "")
    try:
        return int(float(raw) * 2**20) if raw else DEFAULT_MAX_BYTES
    except ValueError:
        _log.warning("%s=%r is not a number of MiB; using %d MiB", MAX_MB_ENV, raw, 512)
        return DEFAULT_MAX_BYTES


class _Header(BaseModel):
    """What an entry claims to be; every field is compared with the request on read."""

    model_config = ConfigDict(extra="forbid", strict=True)

    format: int
    identity: str
    op: str
    request: str
    top_k: int
    kind: Kind
    vocab_size: int = 0
    tail_logprob: float | None = None
    num_tokens: int = 0
    total: float = 0.0
    arrays: list[str]


@dataclass
class CacheStats:
    hits: int = 0
    misses: int = 0
    writes: int = 0
    rejected: int = 0


@functools.lru_cache(maxsize=4)
def _arange(vocab: int) -> np.ndarray[Any, np.dtype[np.int64]]:
    ids = np.arange(vocab, dtype=np.int64)
    ids.flags.writeable = False
    return ids


def _frozen(array: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    array.flags.writeable = False
    return array


def _digest(header: dict[str, Any], arrays: Sequence[np.ndarray[Any, Any]]) -> str:
    h = hashlib.sha256(json.dumps(header, sort_keys=True).encode("utf-8"))
    for a in arrays:
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


class BaseCache:
    """Base-view results for one base identity, one ``.npz`` file per request."""

    def __init__(self, root: Path, identity: str, *, limit_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.root = root
        self.identity = identity
        self.limit_bytes = limit_bytes
        self.dir = root / hashlib.sha256(identity.encode("utf-8")).hexdigest()[:24]
        self.stats = CacheStats()

    def path(self, op: str, request: str, top_k: int) -> Path:
        blob = json.dumps([CACHE_FORMAT, op, request, top_k])
        name = hashlib.sha256(blob.encode("utf-8")).hexdigest()[:40]
        return self.dir / name[:2] / f"{name}.npz"

    # ------------------------------------------------------------------ read

    def get(self, op: str, request: str, top_k: int) -> Value | None:
        """The stored value, or None (absent, or rejected with a warning)."""
        kind = OP_KINDS.get(op)
        path = self.path(op, request, top_k)
        if kind is None or not path.is_file():
            self.stats.misses += 1
            return None
        try:
            value = self._read(path, kind, op, request, top_k)
        except (
            OSError,
            ValueError,
            KeyError,
            EOFError,
            zipfile.BadZipFile,
            ValidationError,
        ) as exc:
            self.stats.misses += 1
            self.stats.rejected += 1
            _log.warning("ignoring corrupt base-cache entry %s (%s); recomputing it", path, exc)
            return None
        self.stats.hits += 1
        try:
            os.utime(path)  # recency for the size bound
        except OSError as exc:
            _log.debug("could not touch %s: %s", path, exc)
        return value

    def _read(self, path: Path, kind: Kind, op: str, request: str, top_k: int) -> Value:
        with np.load(path, allow_pickle=False) as npz:
            meta = json.loads(bytes(npz["header"]).decode("utf-8"))
            digest = bytes(npz["digest"]).decode("ascii")
            header = _Header.model_validate(meta)
            arrays = [npz[name] for name in header.arrays]
        expected = (CACHE_FORMAT, self.identity, op, request, top_k, kind)
        found = (header.format, header.identity, header.op, header.request, header.top_k)
        if found + (header.kind,) != expected:
            raise ValueError("entry is for another identity, request or format")
        if _digest(meta, arrays) != digest:
            raise ValueError("checksum mismatch")
        return _decode(header, arrays)

    # ------------------------------------------------------------------ write

    def put(self, op: str, request: str, top_k: int, value: Value) -> None:
        """Store ``value`` atomically; values with NaN/+inf are never stored."""
        kind = OP_KINDS.get(op)
        if kind is None:
            return
        encoded = _encode(kind, value)
        if encoded is None:
            return
        fields, arrays = encoded
        meta = {
            "format": CACHE_FORMAT,
            "identity": self.identity,
            "op": op,
            "request": request,
            "top_k": top_k,
            "kind": kind,
            **fields,
            "arrays": [f"a{i}" for i in range(len(arrays))],
        }
        buf = io.BytesIO()
        payload: dict[str, Any] = {f"a{i}": a for i, a in enumerate(arrays)}
        payload["header"] = np.frombuffer(json.dumps(meta).encode("utf-8"), dtype=np.uint8)
        payload["digest"] = np.frombuffer(_digest(meta, arrays).encode("ascii"), dtype=np.uint8)
        np.savez(buf, **payload)
        path = self.path(op, request, top_k)
        try:
            _atomic_write(path, buf.getvalue())
        except OSError as exc:
            _log.warning("could not write base-cache entry %s: %s", path, exc)
            return
        self.stats.writes += 1

    def fetch(
        self,
        op: str,
        requests: Sequence[str],
        top_k: int,
        compute: Callable[[list[int]], list[T]],
    ) -> list[T]:
        """Values for ``requests``: stored ones read back, the rest computed once and stored."""
        out: list[Any] = [None] * len(requests)
        missing: list[int] = []
        for i, request in enumerate(requests):
            value = self.get(op, request, top_k)
            if value is None:
                missing.append(i)
            else:
                out[i] = value
        if missing:
            computed = compute(missing)
            if len(computed) != len(missing):
                raise RuntimeError(f"compute returned {len(computed)} values for {len(missing)}")
            for i, fresh in zip(missing, computed, strict=True):
                out[i] = fresh
                self.put(op, requests[i], top_k, fresh)  # type: ignore[arg-type]
            self.enforce_bound()
        return out

    def enforce_bound(self) -> None:
        """Evict the least recently used entries (whole cache root) above the size bound."""
        entries: list[tuple[float, int, Path]] = []
        total = 0
        for p in self.root.glob("*/*/*.npz"):
            try:
                st = p.stat()
            except OSError:
                continue
            entries.append((st.st_mtime, st.st_size, p))
            total += st.st_size
        if total <= self.limit_bytes:
            return
        for _, size, p in sorted(entries, key=lambda e: e[0]):
            if total <= self.limit_bytes * 0.9:
                break
            try:
                p.unlink()
                total -= size
            except OSError as exc:
                _log.debug("could not evict %s: %s", p, exc)


def _atomic_write(path: Path, data: bytes) -> None:
    """Temp file in the same folder, then rename: readers see the old file or the new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=".tmp-", dir=path.parent)
    tmp = Path(name)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        tmp.replace(path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _encode(kind: Kind, value: Any) -> tuple[dict[str, Any], list[np.ndarray[Any, Any]]] | None:
    if kind in ("topk", "full"):
        if not isinstance(value, TokenDist):
            raise TypeError(f"{kind} entries hold TokenDist, got {type(value).__name__}")
        lp = np.asarray(value.logprobs, dtype=np.float32)
        if np.isnan(lp).any() or np.isposinf(lp).any():
            return None
        tail = value.tail_logprob
        if tail is not None and (tail != tail or tail == float("inf")):
            return None
        fields = {"vocab_size": int(value.vocab_size), "tail_logprob": tail}
        if kind == "full":
            return fields, [lp]
        return fields, [np.asarray(value.token_ids, dtype=np.int64), lp]
    if kind == "float":
        number = float(value)
        if not np.isfinite(number) and number != float("-inf"):
            return None
        return {"total": number}, []
    if not isinstance(value, RollingLogprob):
        raise TypeError(f"rolling entries hold RollingLogprob, got {type(value).__name__}")
    lp = np.asarray(value.logprobs, dtype=np.float32)
    if np.isnan(lp).any() or np.isposinf(lp).any() or not np.isfinite(value.total_logprob):
        return None
    fields = {"num_tokens": int(value.num_tokens), "total": float(value.total_logprob)}
    return fields, [np.asarray(value.token_ids, dtype=np.int64), lp]


def _check_logprobs(lp: np.ndarray[Any, Any]) -> None:
    if lp.dtype != np.float32 or lp.ndim != 1:
        raise ValueError(f"log-probs must be a float32 vector, got {lp.dtype} {lp.shape}")
    if np.isnan(lp).any() or (lp > _LOGPROB_SLACK).any():
        raise ValueError("log-probs hold NaN or values above 0")


def _decode(header: _Header, arrays: list[np.ndarray[Any, Any]]) -> Value:
    if header.kind == "float":
        if arrays or header.total != header.total or header.total > _LOGPROB_SLACK:
            raise ValueError("a log-prob entry holds no valid number")
        return header.total
    if header.kind == "full":
        (lp,) = arrays
        _check_logprobs(lp)
        if lp.shape[0] != header.vocab_size:
            raise ValueError("full distribution does not cover the vocabulary")
        return TokenDist(_arange(header.vocab_size), _frozen(lp), header.vocab_size, None)
    ids, lp = arrays
    _check_logprobs(lp)
    if ids.dtype != np.int64 or ids.ndim != 1:
        raise ValueError("token ids must be an int64 vector")
    if header.kind == "topk":
        if ids.shape != lp.shape or ids.shape[0] != min(header.top_k, header.vocab_size):
            raise ValueError("top-k entry has the wrong length")
        if ids.size and (ids.min() < 0 or ids.max() >= header.vocab_size):
            raise ValueError("token id outside the vocabulary")
        return TokenDist(_frozen(ids), _frozen(lp), header.vocab_size, header.tail_logprob)
    scored = header.num_tokens - 1 if header.num_tokens >= 2 else 0
    if ids.shape[0] != header.num_tokens or lp.shape[0] != scored:
        raise ValueError("rolling entry lengths disagree with its token count")
    if not np.isclose(float(lp.astype(np.float64).sum()), header.total, rtol=1e-5, atol=1e-4):
        raise ValueError("rolling total disagrees with its per-token log-probs")
    return RollingLogprob(_frozen(ids), _frozen(lp), header.num_tokens, header.total)


# ---------------------------------------------------------------------- identity


def file_sha256(path: Path, memo_dir: Path) -> str:
    """SHA-256 of a file, memoised on disk by (path, size, mtime, inode).

    The memo is written only for files older than a couple of seconds, so an
    in-place rewrite within one timestamp tick can never reuse a stale hash."""
    st = path.stat()
    stamp = f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}|{st.st_ino}"
    memo = memo_dir / (hashlib.sha256(stamp.encode("utf-8")).hexdigest()[:32] + ".txt")
    try:
        known = memo.read_text(encoding="ascii").strip()
        if len(known) == 64 and all(c in "0123456789abcdef" for c in known):
            return known
    except (OSError, UnicodeDecodeError):
        pass  # no memo yet (or unreadable): hash the file below
    with path.open("rb") as fh:
        digest = hashlib.file_digest(fh, "sha256").hexdigest()
    if time.time() - st.st_mtime < _RACY_SECONDS:
        return digest  # timestamps are coarse: a rewrite this fresh could keep the same stat
    try:
        _atomic_write(memo, digest.encode("ascii"))
    except OSError as exc:
        _log.debug("could not memoise the hash of %s: %s", path, exc)
    return digest


def model_dir_hash(directory: Path, memo_dir: Path) -> str:
    """Content hash of every regular file directly in a model directory."""
    h = hashlib.sha256()
    for p in sorted(directory.iterdir()):
        if p.is_file() and not p.name.startswith("."):
            h.update(f"{p.name}:{file_sha256(p, memo_dir)}\n".encode())
    return h.hexdigest()


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """The whole tokenization pipeline (fast tokenizers serialise it), else the vocabulary."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        blob = backend.to_str()
    else:
        blob = json.dumps(sorted(tokenizer.get_vocab().items()))
    extra = json.dumps(
        [type(tokenizer).__name__, repr(getattr(tokenizer, "special_tokens_map", {}))]
    )
    return hashlib.sha256((blob + extra).encode("utf-8")).hexdigest()


def _model_dir(name_or_path: str) -> Path | None:
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return path
    try:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(name_or_path, "config.json")
    except (ImportError, ValueError):
        return None
    return Path(cached).parent if isinstance(cached, str) else None


#: Identity per scorer: hashing weights costs a read of the files, so once per backend.
_IDENTITIES: weakref.WeakKeyDictionary[Any, str | None] = weakref.WeakKeyDictionary()


def scorer_identity(scorer: HFScorer) -> str | None:
    """(base content, tokenizer, numerics) of a scorer's model; None when not hashable."""
    if scorer in _IDENTITIES:
        return _IDENTITIES[scorer]
    import torch
    import transformers

    model: Any = scorer.model
    # A two-model backend's scorer holds a plain transformers model (no PEFT wrapper).
    base: Any = model.get_base_model() if hasattr(model, "get_base_model") else model
    config = base.config
    directory = _model_dir(str(getattr(config, "_name_or_path", "") or ""))
    identity: str | None = None
    if directory is not None:
        param = next(base.parameters())
        identity = json.dumps(
            {
                "format": CACHE_FORMAT,
                "weights": model_dir_hash(directory, cache_root() / "_file-hashes"),
                "tokenizer": tokenizer_fingerprint(scorer.tokenizer),
                "dtype": str(param.dtype),
                "device": scorer.device.type,
                "attn": str(getattr(config, "_attn_implementation", "")),
                "torch": torch.__version__,
                "transformers": transformers.__version__,
            },
            sort_keys=True,
        )
    else:
        _log.info(
            "base cache off: cannot locate the files of %r", getattr(config, "_name_or_path", "")
        )
    _IDENTITIES[scorer] = identity
    return identity


def for_scorer(scorer: HFScorer) -> BaseCache | None:
    """The disk cache for a scorer's base model, or None when disabled or unidentifiable."""
    if not enabled():
        return None
    identity = scorer_identity(scorer)
    if identity is None:
        return None
    return BaseCache(cache_root(), identity, limit_bytes=max_bytes())


__all__ = [
    "BASE_NS",
    "BaseCache",
    "CacheStats",
    "cache_root",
    "enabled",
    "for_scorer",
    "model_dir_hash",
    "scorer_identity",
    "tokenizer_fingerprint",
]
