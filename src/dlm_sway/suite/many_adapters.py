"""Many adapters in one run (``--adapters``): the checkpoint sweep of one training run.

The base model loads once; each adapter is swapped in (``AdapterSwappable``) and
the suite runs on it, so the base view's results (forward cache, noise floor,
preflight) are computed once and shared while every adapter view, null included,
belongs to its adapter. Null statistics are cached on disk under the backend's
cache identity, which holds the adapter's content hash and config: two adapters
share nulls exactly when their weights and structure are identical.

A backend without the swap capability (e.g. a vLLM server) still works: it is
built once per adapter, and the caller is told so (``on_note``).
"""

from __future__ import annotations

import glob
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from dlm_sway.core.errors import BackendLoadError, SpecValidationError

if TYPE_CHECKING:
    from collections.abc import Mapping

    from dlm_sway.core.result import SuiteResult, SwayScore
    from dlm_sway.core.scoring import DifferentialBackend
    from dlm_sway.suite.loader import LoadedSpec
    from dlm_sway.suite.runner import RunProgress

_MAGIC = re.compile(r"[*?\[]")
NO_ADAPTER_KINDS = ("two_model",)


@dataclass(frozen=True, slots=True)
class AdapterRef:
    label: str  # unique within the run; names the per-adapter output files
    path: Path


@dataclass(frozen=True, slots=True)
class AdapterRun:
    ref: AdapterRef
    suite: SuiteResult
    score: SwayScore
    #: Backends built in this run so far, this adapter's included (1 for every adapter
    #: when the backend swaps in place); also ``backend_stats["model_loads"]`` in the JSON.
    model_loads: int = 1


def natural_key(path: Path) -> tuple[tuple[int, int | str], ...]:
    """``checkpoint-2`` before ``checkpoint-10``: digit runs compare as numbers."""
    parts = re.split(r"(\d+)", str(path))
    return tuple((0, int(p)) if p.isdigit() else (1, p) for p in parts if p)


def _is_adapter(path: Path) -> bool:
    return path.is_dir() and (path / "adapter_config.json").is_file()


def expand_adapters(patterns: Sequence[str]) -> list[AdapterRef]:
    """Folders and globs → adapter folders: each glob's matches in natural order, patterns
    in the order given, duplicates once. A glob matching nothing, or anything that is not a
    PEFT adapter folder, is a :class:`SpecValidationError` (exit 2)."""
    found: list[Path] = []
    for pattern in patterns:
        text = str(pattern)
        if not text.strip():
            raise SpecValidationError("--adapters: an empty value; give a folder or a glob")
        expanded = str(Path(text).expanduser())
        if _MAGIC.search(text):
            # glob.glob, not Path.glob: the pattern may be absolute or have magic in folders
            matches = sorted((Path(m) for m in glob.glob(expanded)), key=natural_key)  # noqa: PTH207
            if not matches:
                raise SpecValidationError(
                    f"--adapters {text!r}: the glob matches nothing; check the path (e.g. "
                    "'out/checkpoint-*', quoted so the shell does not expand it first)"
                )
        else:
            matches = [Path(expanded)]
        for match in matches:
            if not match.exists():
                raise SpecValidationError(f"--adapters {text!r}: {match} does not exist")
            if not _is_adapter(match):
                raise SpecValidationError(
                    f"--adapters {text!r}: {match} is not a PEFT adapter folder (no "
                    "adapter_config.json); pass adapter folders, e.g. 'out/checkpoint-*' "
                    "for the checkpoints of a training run"
                )
            if all(match.resolve() != f.resolve() for f in found):
                found.append(match)
    if not found:
        raise SpecValidationError("--adapters: no adapter given")
    return [AdapterRef(label, path) for label, path in zip(_labels(found), found, strict=True)]


def _labels(paths: Sequence[Path]) -> list[str]:
    """The folder name; where names repeat, the path with separators as ``_``."""
    names = [p.name or str(p) for p in paths]
    return [
        name if names.count(name) == 1 else re.sub(r"[\\/:]+", "_", str(p)).strip("_.")
        for name, p in zip(names, paths, strict=True)
    ]


def build_for_adapter(loaded: LoadedSpec, adapter: Path) -> DifferentialBackend:
    from dlm_sway.suite.build import backend_from_spec

    kind = loaded.spec.models.ft.kind
    if kind in NO_ADAPTER_KINDS:
        raise SpecValidationError(
            f"--adapters and sway diff need a backend that loads adapters (hf, dummy, vllm); "
            f"models.ft.kind {kind!r} compares two full checkpoints",
            source=loaded.path,
        )
    model = loaded.spec.models.ft.model_copy(update={"adapter": str(adapter)})
    try:
        return backend_from_spec(model)
    except BackendLoadError as exc:
        raise BackendLoadError(f"{loaded.path}: --adapters {adapter}: {exc}") from None


def _close(backend: object) -> None:
    close = getattr(backend, "close", None)
    if callable(close):
        close()


def run_many(
    loaded: LoadedSpec,
    adapters: Sequence[AdapterRef],
    *,
    weights: Mapping[str, float],
    progress: RunProgress | None = None,
    on_note: Callable[[str], None] = lambda _line: None,
    on_adapter: Callable[[int, AdapterRef], None] = lambda _i, _ref: None,
) -> list[AdapterRun]:
    """Run ``loaded``'s suite on each adapter: one backend, swapped, when it can."""
    from dataclasses import replace

    from dlm_sway.core.scoring import AdapterSwappable, CacheIdentified
    from dlm_sway.suite.runner import run
    from dlm_sway.suite.score import compute

    kind = loaded.spec.models.ft.kind
    runs: list[AdapterRun] = []
    backend = build_for_adapter(loaded, adapters[0].path)
    loads = 1
    swappable = isinstance(backend, AdapterSwappable)
    if not swappable and len(adapters) > 1:
        on_note(
            f"note: the {kind} backend cannot swap adapters in place; it is loaded once per "
            f"adapter ({len(adapters)} loads)"
        )
    try:
        for i, ref in enumerate(adapters):
            on_adapter(i, ref)
            if i > 0:
                if isinstance(backend, AdapterSwappable):
                    try:
                        backend.swap_adapter(str(ref.path))
                    except BackendLoadError as exc:
                        raise BackendLoadError(f"--adapters {ref.path}: {exc}") from None
                else:
                    _close(backend)
                    backend = build_for_adapter(loaded, ref.path)
                    loads += 1
            suite = run(loaded, backend, progress=progress, adapter_id=str(ref.path))
            stats = {**suite.backend_stats, "model_loads": loads}
            if isinstance(backend, CacheIdentified):  # names the exact adapter weights
                stats["identity"] = backend.cache_identity()
            suite = replace(suite, backend_stats=stats)
            runs.append(AdapterRun(ref, suite, compute(suite, weights), model_loads=loads))
    finally:
        _close(backend)
    return runs


__all__ = [
    "AdapterRef",
    "AdapterRun",
    "build_for_adapter",
    "expand_adapters",
    "natural_key",
    "run_many",
]
