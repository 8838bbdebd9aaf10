"""Probe framework: spec envelope, run context, and the one probe registry.

Subclassing :class:`Probe` with a ``kind`` registers it. Third-party probes
register the same way once their module is imported; the
``dlm_sway.probes`` entry-point group imports them.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from dlm_sway.core.errors import SpecValidationError, SwayError
from dlm_sway.core.result import ProbeResult, Verdict
from dlm_sway.core.scoring import DifferentialBackend
from dlm_sway.core.sections import Section
from dlm_sway.core.stats import NullStats

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
    """Fields every probe entry has. Unknown keys are an error, never ignored."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    kind: str
    enabled: bool = True
    weight: float = 1.0


NullStatsMap = Mapping[str, NullStats]
ProgressFn = Callable[[str, int, int], None]


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

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        kind = cls.__dict__.get("kind")
        if kind is None:
            return  # abstract intermediate class
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
    def summary(cls) -> str:
        doc = (cls.__doc__ or "").strip()
        return doc.splitlines()[0] if doc else ""


def bare_result(spec: ProbeSpec, verdict: Verdict, message: str) -> ProbeResult:
    """A result with no numbers (SKIP, ERROR): the message says why; the weight is kept."""
    return ProbeResult(
        name=spec.name,
        kind=spec.kind,
        verdict=verdict,
        message=message,
        evidence={"weight": spec.weight},
    )


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


def build_probe(raw: Mapping[str, Any], *, source: str | None = None) -> tuple[Probe, ProbeSpec]:
    """Validate one suite entry against its kind's spec class."""
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
        spec = cls.spec_cls.model_validate(dict(raw))
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
        parts.append(f"{loc}: {msg}")
    return "; ".join(parts)


_LOADED = False


def _load_builtin_probes() -> None:
    global _LOADED
    if _LOADED:
        return
    _LOADED = True
    from importlib.metadata import entry_points

    import dlm_sway.probes  # noqa: F401  (imports every built-in probe module)

    for ep in entry_points(group="dlm_sway.probes"):
        ep.load()


__all__ = [
    "CATEGORIES",
    "SENTINEL_PROMPTS",
    "Category",
    "Probe",
    "ProbeSpec",
    "RunContext",
    "bare_result",
    "build_probe",
    "format_validation_error",
    "get_probe_class",
    "registry",
]
