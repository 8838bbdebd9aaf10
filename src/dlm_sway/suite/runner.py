"""Run a validated suite against one backend: seed, preflight, probes in order.

Every probe is fenced: an exception becomes one ERROR result and the suite goes
on. A failed preflight (non-finite logits) aborts with a single ERROR result,
never a false PASS. The runner knows nothing about terminals: progress goes to
an optional :class:`RunProgress`.
"""

from __future__ import annotations

import platform
import sys
import time
from collections.abc import Mapping
from contextlib import nullcontext
from dataclasses import replace
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any, Protocol

from dlm_sway import __version__
from dlm_sway.core.determinism import seed_everything
from dlm_sway.core.errors import SwayError
from dlm_sway.core.result import ProbeResult, SuiteResult, Verdict
from dlm_sway.core.scoring import DifferentialBackend, PreflightCheckable
from dlm_sway.core.stats import NullStats
from dlm_sway.probes.base import CalibratedFn, Probe, ProbeSpec, RunContext, bare_result
from dlm_sway.probes.null_adapter import NullAdapterSpec, rank_key, select_targets
from dlm_sway.suite.evidence import apply_holm, health_checks, measure_noise_floor
from dlm_sway.suite.loader import LoadedSpec
from dlm_sway.suite.preflight import check_context
from dlm_sway.suite.trace import TraceWriter


class RunProgress(Protocol):
    def probe_started(self, name: str, index: int, total: int) -> None: ...

    def probe_finished(self, result: ProbeResult) -> None: ...

    def step(self, label: str, done: int, total: int) -> None: ...


def run(
    loaded: LoadedSpec,
    backend: DifferentialBackend | None,
    *,
    progress: RunProgress | None = None,
    skip_preflight: bool = False,
    adapter_id: str | None = None,
    trace: TraceWriter | None = None,
) -> SuiteResult:
    """Execute ``loaded``'s probes in declaration order and assemble the result.

    ``trace`` records phases and probes (the caller attaches it to the backend).
    """
    phase = trace.phase if trace is not None else (lambda _name: nullcontext())
    spec = loaded.spec
    started = datetime.now(UTC)
    t0 = time.perf_counter()
    determinism = seed_everything(spec.defaults.seed)
    timings: dict[str, float] = {}
    before = _backend_stats(backend)
    ft = spec.models.ft
    adapter_label = adapter_id if adapter_id is not None else (ft.adapter or "")

    needy = sorted({s.kind for p, s in loaded.probes if p.needs_backend and s.enabled})
    if backend is None and needy:
        raise SwayError(f"probes {needy} need a model backend, but none was built")

    if backend is not None:
        check_context(loaded, backend)  # a text longer than the model's context: exit 2
    results: list[ProbeResult] = []
    if backend is not None and not skip_preflight and isinstance(backend, PreflightCheckable):
        tp = time.perf_counter()
        with phase("preflight"):
            ok, reason = backend.preflight_finite_check()
        timings["preflight_s"] = time.perf_counter() - tp
        if not ok:
            results.append(
                ProbeResult(
                    name="__preflight__",
                    kind="preflight",
                    verdict=Verdict.ERROR,
                    message=f"suite aborted before any probe ran: {reason}",
                    evidence={"preflight_reason": reason},
                )
            )
            return _assemble(
                loaded, started, results, {}, determinism, backend, timings, adapter_label, before
            )

    noise_floor: dict[str, Any] = {}
    if backend is not None:
        tn = time.perf_counter()
        try:
            with phase("noise_floor"):
                noise_floor = measure_noise_floor(backend, loaded.probes, spec.defaults.top_k)
        except SwayError as exc:
            noise_floor = {"error": str(exc)}
        timings["noise_floor_s"] = time.perf_counter() - tn
    floor = noise_floor.get("js_max")
    adapter_dir, store_dir = artifact_dirs(loaded, adapter_label)
    ctx = RunContext(
        backend=backend,
        seed=spec.defaults.seed,
        top_k=spec.defaults.top_k,
        progress=progress.step if progress is not None else RunContext.progress,
        noise_floor=float(floor) if isinstance(floor, float) else None,
        sections=loaded.document.sections if loaded.document is not None else None,
        doc_text=loaded.document.text if loaded.document is not None else None,
        adapter_dir=adapter_dir,
        dlm_store=store_dir,
    )
    null_stats: dict[str, NullStats] = {}
    by_rank: dict[str, dict[str, NullStats]] = {}
    #: Entry name → why the suite's null_adapter could not calibrate it. Later probes
    #: get it as ``ctx.calibration_failures``, and the judge (the one place) makes such
    #: an entry WARN "not calibrated" instead of passing on fixed thresholds.
    uncalibrated: dict[str, str] = {}
    total = len(loaded.probes)
    #: Entries already judged while a null_adapter was still drawing (index → result).
    early: dict[int, ProbeResult] = {}

    def run_entry(i: int, hook: CalibratedFn | None = None) -> ProbeResult:
        probe, pspec = loaded.probes[i]
        if progress is not None:
            progress.probe_started(pspec.name, i, total)
        if trace is not None:
            trace.probe_started(pspec.name, pspec.kind, i)
        if not pspec.enabled:
            result = bare_result(pspec, Verdict.SKIP, "disabled in spec")
        else:
            entry_ctx = ctx.evolve(
                downstream=loaded.probes[i + 1 :],
                null_stats=MappingProxyType(dict(null_stats)),
                null_stats_by_rank=MappingProxyType(
                    {k: MappingProxyType(v) for k, v in by_rank.items()}
                ),
                calibration_failures=MappingProxyType(dict(uncalibrated)),
                on_calibrated=hook,
            )
            tp = time.perf_counter()
            result = _fenced(probe.run, pspec, entry_ctx)
            spent = time.perf_counter() - tp - sum(early[j].duration_s for j in early if j > i)
            result = result.with_duration(max(spent, 0.0))
            if pspec.kind == "null_adapter":
                _note_calibration(result, pspec, entry_ctx, null_stats, by_rank, uncalibrated)
        result = _stamp(result, probe, pspec)
        if progress is not None:
            progress.probe_finished(result)
        if trace is not None:
            trace.probe_finished(result)
        return result

    def judge_early(after: int) -> CalibratedFn:
        """While null_adapter ``after`` draws, judge each entry that directly follows it
        as soon as its own nulls are in: the first verdicts come in seconds, in spec
        order, computed exactly as they would be afterwards (same stats, same context)."""
        state = {"next": after + 1}
        multipliers = getattr(loaded.probes[after][1], "rank_multipliers", [1.0])

        def calibrated(name: str, stats: Mapping[str, NullStats], failure: str | None) -> None:
            j = state["next"]
            while 0 <= j < total and not loaded.probes[j][1].enabled:
                early[j] = run_entry(j)
                j += 1
            if not (0 <= j < total) or loaded.probes[j][1].name != name:
                state["next"] = -1  # an entry in between is not calibrated here: stop early runs
                return
            # The same bookkeeping as _note_calibration, for this one entry.
            if failure is None:
                primary = rank_key(1.0) if rank_key(1.0) in stats else next(iter(stats))
                null_stats[name] = stats[primary]
                uncalibrated.pop(name, None)
            else:
                uncalibrated[name] = failure
            if len(multipliers) > 1:
                for key, one in stats.items():
                    by_rank.setdefault(key, {})[name] = one
            early[j] = run_entry(j)
            state["next"] = j + 1

        return calibrated

    for i in range(total):
        if i in early:
            results.append(early.pop(i))
            continue
        is_null = loaded.probes[i][1].kind == "null_adapter" and loaded.probes[i][1].enabled
        results.append(run_entry(i, judge_early(i) if is_null else None))
    results = apply_holm(results)
    timings["total_s"] = time.perf_counter() - t0
    suite = _assemble(
        loaded, started, results, null_stats, determinism, backend, timings, adapter_label, before
    )
    return replace(
        suite,
        noise_floor=noise_floor,
        health=health_checks(results, loaded.probes, backend),
    )


def artifact_dirs(loaded: LoadedSpec, adapter: str) -> tuple[str | None, str | None]:
    """Where probes that read training artefacts look: the adapter folder the run uses
    (None for ``builtin:`` or no adapter) and the ``.dlm`` document's store."""
    from pathlib import Path

    from dlm_sway.core.dlm_store import dlm_store

    folder = Path(adapter).expanduser() if adapter and not adapter.startswith("builtin:") else None
    doc = loaded.document
    store = None
    if doc is not None and isinstance(doc.metadata.get("dlm_id"), str):
        store = str(dlm_store(doc))
    usable = folder is not None and folder.is_dir()
    return (str(folder.resolve()) if folder is not None and usable else None), store


def _stamp(result: ProbeResult, probe: Probe, pspec: ProbeSpec) -> ProbeResult:
    """What the entry declared, typed on its result: category, weight, the validated
    config. Stamped here once, so no probe copies them and a saved run re-renders
    without the probe registered."""
    return replace(
        result,
        category=probe.category,
        weight=float(pspec.weight),
        config=MappingProxyType(pspec.model_dump(mode="json")),
    )


def _fenced(fn: Any, pspec: Any, ctx: RunContext) -> ProbeResult:
    """One broken probe never aborts the suite: its exception becomes an ERROR result."""
    try:
        result: ProbeResult = fn(pspec, ctx)
    except SwayError as exc:
        return _error(pspec, str(exc))
    except Exception as exc:  # noqa: BLE001 — fencing is the point; the type is reported
        return _error(pspec, f"{type(exc).__name__}: {exc}")
    return result


def _error(pspec: ProbeSpec, message: str) -> ProbeResult:
    return bare_result(pspec, Verdict.ERROR, message)


def _note_calibration(
    result: ProbeResult,
    pspec: ProbeSpec,
    ctx: RunContext,
    null_stats: dict[str, NullStats],
    by_rank: dict[str, dict[str, NullStats]],
    uncalibrated: dict[str, str],
) -> None:
    """Take a null_adapter's stats for later probes, and remember which entries it
    tried and failed to calibrate (all of its targets when it crashed)."""
    cal = result.calibration
    if cal is None:
        if result.verdict is Verdict.ERROR and isinstance(pspec, NullAdapterSpec):
            reason = f"null_adapter {pspec.name!r} errored: {result.message}"
            try:
                targets, _, _ = select_targets(pspec, ctx)
                names = [t.name for _, t, _ in targets]
            except Exception:  # noqa: BLE001 — then every later enabled entry is suspect
                names = [s.name for _, s in ctx.downstream if s.enabled]
            uncalibrated.update(dict.fromkeys(names, reason))
        return
    null_stats.update(cal.stats)
    if len(cal.by_rank) > 1:
        for key, group in cal.by_rank.items():
            by_rank.setdefault(key, {}).update(group)
    uncalibrated.update(cal.failures)
    for name in cal.stats:
        uncalibrated.pop(name, None)


def library_versions() -> dict[str, str]:
    """Versions of the libraries that shape the numbers (only those already imported)."""
    out = {"sway": __version__, "python": platform.python_version()}
    for mod in ("numpy", "scipy", "torch", "transformers", "peft"):
        m = sys.modules.get(mod)
        if m is not None:
            out[mod] = str(getattr(m, "__version__", "?"))
    return out


#: Counters that add up over a backend's life; a run reports its own share of them.
_COUNTERS = (
    "forward_passes",
    "scored_tokens",
    "cache_hits",
    "cache_misses",
    "batches_sent",
    "batched_prompts",
    "scoring_wall_s",
)


def _backend_stats(backend: DifferentialBackend | None) -> dict[str, Any]:
    stats_obj = getattr(backend, "stats", None)
    if stats_obj is not None and callable(getattr(stats_obj, "to_dict", None)):
        return dict(stats_obj.to_dict())
    return {}


def _stats_since(now: dict[str, Any], before: Mapping[str, Any]) -> dict[str, Any]:
    """This run's counters on a backend that may have served earlier runs (``--adapters``
    swaps adapters on one backend: its counters keep counting)."""
    if not before:
        return now
    out = dict(now)
    for key in _COUNTERS:
        if isinstance(now.get(key), int | float) and isinstance(before.get(key), int | float):
            out[key] = now[key] - before[key]
    hits, misses = out.get("cache_hits", 0), out.get("cache_misses", 0)
    out["hit_rate"] = hits / (hits + misses) if hits + misses else 0.0
    sent = out.get("batches_sent", 0)
    out["avg_batch_size"] = out.get("batched_prompts", 0) / sent if sent else 0.0
    return out


def _assemble(
    loaded: LoadedSpec,
    started: datetime,
    results: list[ProbeResult],
    null_stats: Mapping[str, NullStats],
    determinism: Any,
    backend: DifferentialBackend | None,
    timings: dict[str, float],
    adapter_label: str,
    before: Mapping[str, Any],
) -> SuiteResult:
    backend_stats = _stats_since(_backend_stats(backend), before)
    return SuiteResult(
        spec_path=loaded.path,
        started_at=started,
        finished_at=datetime.now(UTC),
        base_model_id=loaded.spec.models.ft.base,
        adapter_id=adapter_label,
        sway_version=__version__,
        probes=tuple(results),
        null_stats={k: v.to_dict() for k, v in null_stats.items()},
        determinism=determinism,
        backend_stats=backend_stats,
        timings=timings,
        versions=library_versions(),
    )


__all__ = ["RunProgress", "library_versions", "run"]
