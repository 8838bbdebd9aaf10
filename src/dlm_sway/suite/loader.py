"""Load and validate a spec file completely before any model is touched.

Every problem is reported at once, with the file and the field, so a typo in
the last probe costs milliseconds rather than a model load.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from dlm_sway.core.errors import SpecValidationError
from dlm_sway.core.sections import Document
from dlm_sway.probes.base import Probe, ProbeSpec, build_probe, format_validation_error
from dlm_sway.suite.spec import ModelSpec, SwaySpec
from dlm_sway.suite.yaml_strict import strict_load, unusable_values


@dataclass(frozen=True)
class LoadedSpec:
    """A validated spec with its probes built and its paths resolved."""

    spec: SwaySpec
    path: str
    probes: tuple[tuple[Probe, ProbeSpec], ...]
    weights: dict[str, float]
    #: The parsed ``dlm_source`` document, when the spec names one.
    document: Document | None = None


def load_spec(path: str | Path) -> LoadedSpec:
    """Read a YAML spec; relative model paths resolve against the spec's folder."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise SpecValidationError(
            "spec file not found (check the path; `sway run` takes the YAML file)", source=str(p)
        )
    try:
        data = strict_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        where = ""
        mark = getattr(exc, "problem_mark", None)
        if mark is not None:
            where = f" at line {mark.line + 1}, column {mark.column + 1}"
        problem = getattr(exc, "problem", None) or str(exc)
        raise SpecValidationError(f"invalid YAML{where}: {problem}", source=str(p)) from None
    except UnicodeDecodeError as exc:
        raise SpecValidationError(
            f"cannot read spec: not UTF-8 text (byte {exc.start}: {exc.reason}); "
            "save the file as UTF-8",
            source=str(p),
        ) from None
    except RecursionError:
        raise SpecValidationError(
            "cannot read spec: nested too deeply for a spec file", source=str(p)
        ) from None
    except OSError as exc:
        raise SpecValidationError(f"cannot read spec: {exc}", source=str(p)) from None
    return from_dict(data, source=str(p), base_dir=p.resolve().parent)


def from_dict(
    data: Any,
    *,
    source: str = "<memory>",
    base_dir: Path | None = None,
    document: Document | None = None,
) -> LoadedSpec:
    """Validate a spec given as a mapping (programmatic callers, tests, ``sway check``).

    ``document`` stands in for ``dlm_source`` when the caller already holds the parsed
    training document; section probes are checked against it like against a file.
    """
    if not isinstance(data, Mapping):
        raise SpecValidationError(
            "the top level must be a mapping with 'models' and 'suite'", source=source
        )
    unusable = unusable_values(data)
    if unusable:
        # Reported alone: every later message would echo (or recurse into) these values.
        detail = "\n  - ".join(unusable)
        raise SpecValidationError(
            f"{len(unusable)} problem(s) in the spec:\n  - {detail}", source=source
        )
    errors: list[str] = []
    try:
        spec: SwaySpec | None = SwaySpec.model_validate(dict(data))
    except ValidationError as exc:
        spec = None
        errors.append(format_validation_error(exc))
    if spec is not None:
        spec = _resolve_paths(spec, base_dir or Path.cwd())
        entries = spec.suite
    else:
        raw_suite = data.get("suite")
        entries = (
            [e for e in raw_suite if isinstance(e, dict)] if isinstance(raw_suite, list) else []
        )

    probes: list[tuple[Probe, ProbeSpec]] = []
    seen: set[str] = set()
    labels: dict[int, str] = {}
    positions: dict[int, int] = {}
    last_failed = -1
    for i, entry in enumerate(entries):
        name = entry.get("name")
        printable = isinstance(name, str) and name.isprintable() and name.strip() == name != ""
        label = f"suite[{i}]" + (f" ({name})" if printable else "")
        try:
            probe, pspec = build_probe(entry, source=label, base_dir=base_dir or Path.cwd())
        except SpecValidationError as exc:
            errors.append(str(exc))
            last_failed = i
            continue
        pspec = _resolve_probe_paths(pspec, base_dir or Path.cwd())
        if pspec.name in seen:
            errors.append(f"{label}: duplicate probe name {pspec.name!r} (names must be unique)")
        seen.add(pspec.name)
        labels[id(pspec)] = label
        probes.append((probe, pspec))
        positions[id(pspec)] = i
    all_built = len(probes) == len(entries)
    if spec is not None and not spec.suite:
        errors.append("suite: is empty; add at least one probe (see `sway list-probes`)")
    elif spec is not None and all_built:
        errors.extend(_verdict_errors(probes))

    from dlm_sway.suite.score import DEFAULT_WEIGHTS, validate_weights

    weights: dict[str, float] = dict(DEFAULT_WEIGHTS)
    if spec is not None and spec.defaults.score_weights is not None:
        try:
            weights = validate_weights(spec.defaults.score_weights, source="defaults.score_weights")
        except SpecValidationError as exc:
            errors.append(str(exc))
    document_ok = True
    if document is not None and spec is not None and spec.dlm_source:
        document_ok = False
        errors.append("dlm_source: given both in the spec and as a parsed document; keep one")
    elif spec is not None and spec.dlm_source:
        try:
            document, spec = _attach_document(spec, base_dir or Path.cwd())
        except SpecValidationError as exc:
            document_ok = False
            errors.append(f"dlm_source: {exc}")
    if spec is not None and document_ok:
        # An entry before a broken one cannot see all its followers: checked once fixed.
        checkable = [(p, s) for p, s in probes if positions[id(s)] > last_failed]
        errors.extend(_load_problems(checkable, labels, document))
    if spec is not None:
        errors.extend(_model_errors(spec))
    if errors or spec is None:
        detail = "\n  - ".join(errors)
        raise SpecValidationError(
            f"{len(errors)} problem(s) in the spec:\n  - {detail}", source=source
        )
    return LoadedSpec(
        spec=spec, path=source, probes=tuple(probes), weights=weights, document=document
    )


def _verdict_errors(probes: list[tuple[Probe, ProbeSpec]]) -> list[str]:
    """A suite must judge something: a null_adapter alone, or all entries off, cannot."""
    if any(spec.enabled and probe.category != "baseline" for probe, spec in probes):
        return []
    if not any(spec.enabled for _, spec in probes):
        why = "every entry is disabled (enabled: false)"
    else:
        kinds = sorted({spec.kind for _, spec in probes if spec.enabled})
        why = f"its only enabled entries ({', '.join(kinds)}) calibrate, they give no verdict"
    return [
        f"suite: no probe would give a verdict: {why}; enable or add a judged probe "
        "such as delta_kl (see `sway list-probes`)"
    ]


def _load_problems(
    probes: list[tuple[Probe, ProbeSpec]], labels: dict[int, str], document: Document | None
) -> list[str]:
    """Each enabled entry's :meth:`Probe.load_problems`, labelled with its position."""
    out: list[str] = []
    for i, (probe, pspec) in enumerate(probes):
        if not pspec.enabled:
            continue
        downstream = tuple(probes[i + 1 :])
        for problem in type(probe).load_problems(pspec, document=document, downstream=downstream):
            out.append(f"{labels[id(pspec)]}: {problem}")
    return out


def _model_errors(spec: SwaySpec) -> list[str]:
    """Backend kind and options are checked now, not when the model loads."""
    from dlm_sway.backends.registry import backends
    from dlm_sway.suite.build import backend_options

    kind = spec.models.ft.kind
    if kind not in backends():
        known = ", ".join(sorted(backends()))
        return [f"models.ft.kind: unknown backend kind {kind!r}; known kinds: {known}"]
    try:
        backend_options(spec.models.ft)
    except SpecValidationError as exc:
        return [str(exc)]
    return []


def _attach_document(spec: SwaySpec, base_dir: Path) -> tuple[Document, SwaySpec]:
    """Parse ``dlm_source`` (relative to the spec file); a ``.dlm`` may supply the adapter."""
    from dlm_sway.core.documents import load_document

    assert spec.dlm_source is not None
    path = (base_dir / Path(spec.dlm_source).expanduser()).resolve()
    document = load_document(path)
    spec = spec.model_copy(update={"dlm_source": str(path)})
    two_model = spec.models.ft.kind == "two_model"
    if spec.models.ft.adapter is None and document.adapter_path and not two_model:
        ft = spec.models.ft.model_copy(update={"adapter": document.adapter_path})
        spec = spec.model_copy(update={"models": spec.models.model_copy(update={"ft": ft})})
    return document, spec


def _resolve_model(model: ModelSpec, base_dir: Path) -> ModelSpec:
    updates: dict[str, str] = {}
    if model.adapter and not model.adapter.startswith("builtin:"):
        updates["adapter"] = str((base_dir / Path(model.adapter).expanduser()).resolve())
    finetuned = model.finetuned  # kind: two_model; resolved like base
    if finetuned and not finetuned.startswith("builtin:"):
        candidate = base_dir / Path(finetuned).expanduser()
        if finetuned.startswith((".", "/", "~")) or candidate.exists():
            updates["finetuned"] = str(candidate.resolve())
    base = model.base
    if not base.startswith("builtin:"):
        candidate = base_dir / Path(base).expanduser()
        if base.startswith((".", "/", "~")) or candidate.exists():
            updates["base"] = str(candidate.resolve())
    return model.model_copy(update=updates) if updates else model


def _resolve_probe_paths(pspec: ProbeSpec, base_dir: Path) -> ProbeSpec:
    """A probe's ``path_fields`` resolve against the spec's folder, like model paths."""
    updates: dict[str, str] = {}
    for name in type(pspec).path_fields:
        value = getattr(pspec, name)
        if isinstance(value, str):
            updates[name] = str((base_dir / Path(value).expanduser()).resolve())
    return pspec.model_copy(update=updates) if updates else pspec


def _resolve_paths(spec: SwaySpec, base_dir: Path) -> SwaySpec:
    models = spec.models.model_copy(
        update={
            "ft": _resolve_model(spec.models.ft, base_dir),
            "base": _resolve_model(spec.models.base, base_dir) if spec.models.base else None,
        }
    )
    return spec.model_copy(update={"models": models})


__all__ = ["LoadedSpec", "from_dict", "load_spec"]
