"""Probe framework: spec envelope, run context, and the one probe registry.

Subclassing :class:`Probe` with a ``kind`` registers it. Third-party probes
register the same way once their module is imported; the
``dlm_sway.probes`` entry-point group imports them.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ValidationError

from dlm_sway.core.errors import SpecValidationError, SwayError
from dlm_sway.core.result import ProbeResult, Verdict
from dlm_sway.core.scoring import DifferentialBackend
from dlm_sway.core.sections import Document, Section
from dlm_sway.core.stats import NullStats
from dlm_sway.probes._fields import STRICT, Name, Weight

Category = Literal["adherence", "attribution", "calibration", "ablation", "baseline"]
CATEGORIES: tuple[Category, ...] = (
    "adherence",
    "attribution",
    "calibration",
    "ablation",
    "baseline",
)

#: Short, content-neutral openers used when a probe calibrates against nulls.
SENTINEL_PROMPTS: tuple[str, ...] = (
    "The capital city of the country is",
    "Once upon a time, in a small village,",
    "One interesting fact about the ocean is that",
    "After you finish this step, the next thing to do is",
)


class ProbeSpec(BaseModel):
    """Fields every probe entry has. Unknown keys are an error, never ignored.

    Strict (no coercion, no NaN/inf; see :mod:`dlm_sway.probes._fields`), and every
    subclass inherits that: ``weight: "2"`` or ``enabled: 1`` are errors.
    """

    model_config = STRICT

    name: Name
    kind: str
    enabled: bool = True
    #: Relative weight inside the probe's score category; 0 keeps the probe informational.
    weight: Weight = 1.0
    #: Fields holding file paths: the loader resolves relative ones against the spec's folder.
    path_fields: ClassVar[tuple[str, ...]] = ()


NullStatsMap = Mapping[str, NullStats]
ProgressFn = Callable[[str, int, int], None]
#: Called by ``null_adapter`` as soon as one entry's nulls are all drawn: (entry name,
#: rank key → its stats, why it could not be calibrated or None). The runner uses it to
#: judge that entry at once instead of after every entry's nulls.
CalibratedFn = Callable[[str, Mapping[str, NullStats], "str | None"], None]


def _no_progress(label: str, done: int, total: int) -> None:
    return None


@dataclass(frozen=True)
class RunContext:
    """Everything a probe may read. Frozen; the runner derives new ones."""

    backend: DifferentialBackend | None
    seed: int = 0
    top_k: int = 256
    null_stats: NullStatsMap = field(default_factory=lambda: MappingProxyType({}))
    null_stats_by_rank: Mapping[str, NullStatsMap] = field(
        default_factory=lambda: MappingProxyType({})
    )
    downstream: tuple[tuple[Probe, ProbeSpec], ...] = ()
    #: The training document's sections (from ``dlm_source``), or None without one.
    sections: tuple[Section, ...] | None = None
    doc_text: str | None = None
    progress: ProgressFn = _no_progress
    #: Largest JS between two batch layouts of the base view (pure numerics), if measured.
    noise_floor: float | None = None
    #: True while null_adapter samples the null: only ``raw`` matters, so probes may skip
    #: extras such as bootstrap CIs.
    calibrating: bool = False
    #: Entry name → why the suite's null_adapter could not calibrate it. The judge then
    #: says WARN "not calibrated" instead of falling back to fixed thresholds.
    calibration_failures: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    #: The fine-tune's adapter directory (absolute; None for ``builtin:`` or no adapter), and
    #: the ``.dlm`` document's store: where probes that read training artefacts look.
    adapter_dir: str | None = None
    dlm_store: str | None = None
    on_calibrated: CalibratedFn | None = None

    @property
    def downstream_kinds(self) -> tuple[str, ...]:
        """Kinds of the suite entries after the current one (``null_adapter`` reads it)."""
        return tuple(spec.kind for _, spec in self.downstream)

    @property
    def require_backend(self) -> DifferentialBackend:
        if self.backend is None:
            raise SwayError("this probe needs a model backend, but the run has none")
        return self.backend

    def evolve(self, **changes: Any) -> RunContext:
        return replace(self, **changes)


class Probe(ABC):
    """A probe: ``run(spec, ctx) -> ProbeResult``. Stateless; one instance per entry."""

    kind: ClassVar[str]
    spec_cls: ClassVar[type[ProbeSpec]]
    category: ClassVar[Category] = "adherence"
    needs_backend: ClassVar[bool] = True
    #: Declared, not inferred: True when ``calibrate_spec`` returns a null spec for a
    #: runnable entry (``null_adapter`` then z-scores it); ``list-probes`` shows it.
    calibrated: ClassVar[bool] = False
    #: Why nulls do not calibrate this probe (shown by ``list-probes`` when not calibrated).
    uncalibrated_reason: ClassVar[str] = "defines no null calibration (no calibrate_spec)"
    #: Set, for a calibrated probe, to why ``null_adapter`` draws its null only when
    #: ``calibrate_kinds`` names it: a null that is degenerate for typical adapters would
    #: cost K passes over the probe's inputs and end in fixed thresholds anyway.
    null_on_request: ClassVar[str | None] = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        kind = cls.__dict__.get("kind")
        if kind is None:
            return  # abstract intermediate class
        below_probe = cls.__mro__[: cls.__mro__.index(Probe)]
        if cls.calibrated and not any("calibrate_spec" in vars(k) for k in below_probe):
            raise TypeError(
                f"probe {kind!r} declares calibrated = True but does not override calibrate_spec"
            )
        if not cls.calibrated and not cls.uncalibrated_reason.strip():
            raise TypeError(f"probe {kind!r} is not calibrated: give an uncalibrated_reason")
        if kind in _REGISTRY and _REGISTRY[kind] is not cls:
            raise TypeError(f"probe kind {kind!r} is already registered by {_REGISTRY[kind]}")
        _REGISTRY[kind] = cls

    @abstractmethod
    def run(self, spec: ProbeSpec, ctx: RunContext) -> ProbeResult: ...

    @classmethod
    def calibrate_spec(cls, ctx: RunContext, target: ProbeSpec | None = None) -> ProbeSpec | None:
        """The spec whose ``raw`` under a null adapter samples this probe's null distribution.

        ``target`` is the suite entry being calibrated: calibrating on the entry's own
        prompts keeps the null and the real metric comparable (the reference used fixed
        sentinel prompts, which compares different quantities). None opts out, e.g. for
        probes that need views a null adapter cannot give.
        """
        return None

    @classmethod
    def load_problems(
        cls,
        spec: ProbeSpec,
        *,
        document: Document | None,
        downstream: tuple[tuple[Probe, ProbeSpec], ...] = (),
    ) -> list[str]:
        """What this entry is certain to hit at run time, knowable from the spec alone.

        The loader calls it for every enabled entry, after the entry validated, with the
        parsed ``dlm_source`` document (None without one) and the entries after it. Each
        string says what is wrong and how to fix it; any string makes the spec a load
        error (exit 2) before a model loads, instead of a SKIP or a never-passing WARN
        after one. Run-time checks stay in ``run`` as a defence.
        """
        return []

    @classmethod
    def summary(cls) -> str:
        doc = (cls.__doc__ or "").strip()
        return doc.splitlines()[0] if doc else ""


def document_context(document: Document | None) -> RunContext:
    """A backend-less context holding what a run will know about ``dlm_source``.

    ``load_problems`` hooks pass it to the same helpers ``run`` uses, so the
    load-time check and the run-time SKIP can never disagree.
    """
    if document is None:
        return RunContext(backend=None)
    return RunContext(backend=None, sections=document.sections, doc_text=document.text)


def bare_result(spec: ProbeSpec, verdict: Verdict, message: str) -> ProbeResult:
    """A result with no numbers (SKIP, ERROR): the message says why (the runner stamps
    the entry's weight and category on it like on every result)."""
    return ProbeResult(name=spec.name, kind=spec.kind, verdict=verdict, message=message)


_REGISTRY: dict[str, type[Probe]] = {}


def registry() -> Mapping[str, type[Probe]]:
    """Kind → probe class for every registered probe (built-ins loaded on first call)."""
    _load_builtin_probes()
    return MappingProxyType(_REGISTRY)


def get_probe_class(kind: str) -> type[Probe]:
    reg = registry()
    if kind not in reg:
        raise KeyError(kind)
    return reg[kind]


def build_probe(
    raw: Mapping[str, Any], *, source: str | None = None, base_dir: Path | None = None
) -> tuple[Probe, ProbeSpec]:
    """Validate one suite entry against its kind's spec class.

    ``base_dir`` (the spec's folder) reaches field validators that read files, so a
    relative path means the same file whatever directory sway runs from.
    """
    label = source or str(raw.get("name") or "<unnamed probe>")
    kind = raw.get("kind")
    if not isinstance(kind, str):
        raise SpecValidationError("missing 'kind' (e.g. kind: delta_kl)", source=label)
    reg = registry()
    if kind not in reg:
        known = ", ".join(sorted(reg))
        raise SpecValidationError(
            f"unknown probe kind {kind!r}; registered kinds: {known}", source=label
        )
    cls = reg[kind]
    try:
        context = {"base_dir": base_dir} if base_dir is not None else None
        spec = cls.spec_cls.model_validate(dict(raw), context=context)
    except ValidationError as exc:
        raise SpecValidationError(format_validation_error(exc), source=label) from None
    return cls(), spec


def format_validation_error(exc: ValidationError) -> str:
    """Pydantic errors as '<field path>: <problem>' lines a user can act on."""
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "<root>"
        msg = str(err["msg"]).removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown key (check the spelling; unknown keys are not ignored)"
        elif str(err["type"]).endswith("_type") and "input" in err:
            # Strict mode: say what was given, e.g. "got str '7'" for ``seed: "7"``.
            given = err["input"]
            if given is None:
                # YAML reads null, ~ and an empty value as "no value": ``name: null`` is not a name.
                msg = f"{msg} (got no value: YAML reads null, ~ or nothing as none; quote it)"
            else:
                msg = f"{msg} (got {type(given).__name__} {_show(given)}; values are not converted)"
        # A model-level check names its fields in the message itself.
        parts.append(f"{loc}: {msg}" if err["loc"] else msg)
    return "; ".join(parts)


#: Modules of the built-in probes, imported on the first :func:`registry` call (not at
#: package import, so ``sway --help`` and importing one probe stay cheap).
BUILTIN_PROBE_MODULES: tuple[str, ...] = (
    "adapter_ablation",
    "adapter_revert",
    "calibration_drift",
    "cluster_kl",
    "delta_kl",
    "external_perplexity",
    "gradient_ghost",
    "leakage",
    "multi_turn_coherence_decay",
    "null_adapter",
    "paraphrase_invariance",
    "preference_flip",
    "prompt_collapse",
    "section_internalization",
    "style_fingerprint",
    "tool_use_fidelity",
    "training_drift",
)


def _show(value: Any) -> str:
    """A short, printable repr (escapes surrogates; never str() of a 5000-digit int)."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 128:
        return f"<{value.bit_length()}-bit integer>"
    shown = repr(value)
    return shown if len(shown) <= 40 else shown[:37] + "..."


_LOADED = False


def _load_builtin_probes() -> None:
    """Built-ins first, then ``dlm_sway.probes`` entry points, each guarded on its own."""
    global _LOADED
    if _LOADED:
        return
    _LOADED = True
    from importlib import import_module

    from dlm_sway.core.plugins import load_entry_points

    for module in BUILTIN_PROBE_MODULES:
        import_module(f"dlm_sway.probes.{module}")
    load_entry_points("dlm_sway.probes", lambda ep: ep.load(), rollback=_registry_snapshot)


def _registry_snapshot() -> Callable[[], None]:
    """Undo for a failed plugin: drop the kinds it registered before it failed."""
    before = dict(_REGISTRY)

    def undo() -> None:
        _REGISTRY.clear()
        _REGISTRY.update(before)

    return undo


__all__ = [
    "BUILTIN_PROBE_MODULES",
    "CATEGORIES",
    "SENTINEL_PROMPTS",
    "Category",
    "Probe",
    "ProbeSpec",
    "RunContext",
    "bare_result",
    "build_probe",
    "document_context",
    "format_validation_error",
    "get_probe_class",
    "registry",
]
