"""``null_adapter``: sample every following numeric probe's metric under random adapters.

For each calibrated suite entry, the entry's calibration spec is run K times
through :class:`NullCalibrationBackendProxy` (one seed each), per rank
multiplier. The finite raws become :class:`~dlm_sway.core.stats.NullStats`
that the runner hands to every later probe. This probe calibrates; it never
judges the adapter, so it PASSes whenever calibration ran. Entries it tried and
failed to calibrate are listed in ``calibration.failures``; the runner turns
their fixed-threshold PASS into a WARN, and when none could be calibrated this
result itself is a WARN. The statistics travel typed, in ``result.calibration``;
``evidence`` only repeats details for people reading a report.
"""

from __future__ import annotations

import hashlib
import logging
import math
from typing import Any, Literal

from pydantic import Field, field_validator

from dlm_sway import __version__
from dlm_sway.core.calibration import Method
from dlm_sway.core.errors import SwayError
from dlm_sway.core.result import NullCalibration, ProbeResult, Verdict
from dlm_sway.core.scoring import (
    BASE_AND_FT,
    CacheIdentified,
    NullCalibratedBackend,
    NullConstruction,
    NullDraw,
    NullGenerationPrefetch,
    SweepMember,
    plain_text,
    prompt_cache_key,
    shared_forwards,
)
from dlm_sway.core.sections import Document
from dlm_sway.core.stats import NullStats
from dlm_sway.probes import _null_cache
from dlm_sway.probes._fields import Seed
from dlm_sway.probes._null_proxy import (
    SEED_CONSTRUCTION,
    NullCalibrationBackendProxy,
    supported_constructions,
)
from dlm_sway.probes._textgen import Written, recording
from dlm_sway.probes.base import (
    Probe,
    ProbeSpec,
    RunContext,
    bare_result,
    document_context,
    get_probe_class,
)

_log = logging.getLogger(__name__)
#: Generated texts at least this long that reappear in a later prompt mark it as
#: following from them (not worth decoding for the other nulls ahead of time).
MIN_FOLLOWED_CHARS = 8


def rank_key(multiplier: float) -> str:
    return f"rank_{multiplier:.2f}"


#: Default number of null adapters. Chosen from the quality study in docs/statistics.md:
#: with the t-prediction test, K=10 keeps the false-positive rate at nominal and gives
#: a trained adapter enough degrees of freedom to clear z ≥ 3.
DEFAULT_RUNS = 10
#: Bounds of ``rank_multipliers``: group names keep two decimals, so 0.01 is the finest step.
RANK_MIN = 0.01
RANK_MAX = 64.0


class NullAdapterSpec(ProbeSpec):
    kind: Literal["null_adapter"] = "null_adapter"
    #: K null adapters, 2..200: one null has no spread, so it could calibrate nothing.
    runs: int = Field(default=DEFAULT_RUNS, ge=2, le=200)
    #: How null weights are drawn (see :data:`dlm_sway.core.scoring.NullConstruction`).
    null: NullConstruction = "norm_matched"
    #: ``t_prediction`` (small-sample correct) or ``reference_z`` ((x−mean)/pstdev).
    calibration: Method = "t_prediction"
    #: Std of the random A/B for ``null: init_scale`` (the reference uses 0.02), in (0, 1].
    init_scale: float = Field(default=0.02, gt=0.0, le=1.0)
    #: Selects another family of null seeds for the same run seed (see :func:`null_seeds`);
    #: an integer in [0, 2**32 - 1].
    seed_base: Seed | None = None
    calibrate_kinds: list[str] = Field(default_factory=list)
    cache: bool = True
    #: Null norm multipliers in [0.01, 64]; verdicts use the 1x group when present.
    rank_multipliers: list[float] = Field(default_factory=lambda: [1.0])

    @field_validator("rank_multipliers")
    @classmethod
    def _positive(cls, value: list[float]) -> list[float]:
        if not value:
            return [1.0]
        bad = [m for m in value if not math.isfinite(m) or not RANK_MIN <= m <= RANK_MAX]
        if bad:
            raise ValueError(
                f"rank multipliers must be finite and in [{RANK_MIN:g}, {RANK_MAX:g}], got {bad}"
            )
        out = sorted(set(value))
        keys = [rank_key(m) for m in out]
        clash = sorted({k for k in keys if keys.count(k) > 1})
        if clash:
            raise ValueError(
                f"multipliers {out} share the group name(s) {clash} (two decimals); "
                "make them differ by at least 0.01"
            )
        return out

    @field_validator("calibrate_kinds")
    @classmethod
    def _known(cls, value: list[str]) -> list[str]:
        from dlm_sway.probes.base import registry

        unknown = [k for k in value if k not in registry()]
        if unknown:
            raise ValueError(
                f"unknown probe kind(s) {unknown}; registered: {', '.join(sorted(registry()))}"
            )
        if "null_adapter" in value:
            raise ValueError("null_adapter cannot calibrate itself; list the probe kinds to judge")
        return value


def null_seeds(run_seed: int, runs: int, seed_base: int | None = None) -> list[int]:
    """Seeds of the ``runs`` null adapters: a pure function of ``defaults.seed``.

    Seed *i* is the first 31 bits of ``sha256("sway-null|<run seed>|<seed_base>|<i>")``
    (``seed_base`` is ``None`` unless the spec sets it). So the same run seed always
    draws the same nulls (reproducible, cacheable), another run seed draws an
    independent family, and an explicit ``seed_base`` selects yet another family
    for the same run seed. A (vanishingly rare) repeat is skipped, so the K nulls
    are always K distinct adapters.
    """
    seeds: list[int] = []
    i = 0
    while len(seeds) < runs:
        blob = f"sway-null|{run_seed}|{seed_base}|{i}".encode()
        seed = int.from_bytes(hashlib.sha256(blob).digest()[:4], "big") & 0x7FFF_FFFF
        if seed not in seeds:
            seeds.append(seed)
        i += 1
    return seeds


Target = tuple[Probe, ProbeSpec, ProbeSpec]
#: How a skipped entry whose probe has ``null_on_request`` is listed.
ON_REQUEST = "calibrated only when calibrate_kinds names it"


def select_targets(
    spec: NullAdapterSpec, ctx: RunContext
) -> tuple[list[Target], list[dict[str, str]], dict[str, str]]:
    """(entries to calibrate, entries not calibrated with why, name → reason for those that
    wanted a null but could not say how). Opting out (``calibrate_spec`` → None) is not a
    failure; raising is."""
    targets: list[Target] = []
    skipped: list[dict[str, str]] = []
    failed: dict[str, str] = {}
    wanted = set(spec.calibrate_kinds)
    for probe, target in ctx.downstream:
        if target.kind == NullAdapterProbe.kind or not target.enabled:
            continue
        if wanted and target.kind not in wanted:
            continue
        on_request = type(probe).null_on_request
        if on_request and target.kind not in wanted:
            reason = f"{ON_REQUEST}: {on_request}"
            skipped.append({"kind": target.kind, "name": target.name, "reason": reason})
            continue
        try:
            calib = type(probe).calibrate_spec(ctx, target)
        except Exception as exc:  # noqa: BLE001 — a plugin's bug must not sink calibration
            reason = f"calibrate_spec raised {type(exc).__name__}: {exc}"
            skipped.append({"kind": target.kind, "name": target.name, "reason": reason})
            failed[target.name] = reason
            continue
        if calib is None:
            skipped.append({"kind": target.kind, "name": target.name, "reason": "probe opted out"})
            continue
        targets.append((probe, target, calib))
    return targets, skipped, failed


class NullAdapterProbe(Probe):
    """Calibrate the following probes against random adapters of the same structure."""

    kind = "null_adapter"
    spec_cls = NullAdapterSpec
    category = "baseline"
    calibrated = False
    uncalibrated_reason = "it draws the null distribution the other probes are judged against"

    @classmethod
    def load_problems(
        cls,
        spec: ProbeSpec,
        *,
        document: Document | None,
        downstream: tuple[tuple[Probe, ProbeSpec], ...] = (),
    ) -> list[str]:
        """A null that could calibrate nothing (or not what ``calibrate_kinds`` names)."""
        assert isinstance(spec, NullAdapterSpec)
        out: list[str] = []
        present = {t.kind for _, t in downstream if t.enabled}
        absent = [k for k in spec.calibrate_kinds if k not in present]
        if absent:
            out.append(
                f"calibrate_kinds: no enabled {', '.join(absent)} entry follows this "
                "null_adapter; put those entries after it, enable them, or drop the kinds"
            )
        targets, skipped, failed = select_targets(
            spec, document_context(document).evolve(downstream=downstream)
        )
        if not targets and not failed and not absent:
            why = (
                f"the entries after it opt out ({', '.join(s['name'] for s in skipped)})"
                if skipped
                else "no enabled probe follows it"
            )
            on_request = sorted(
                {t.kind for p, t in downstream if t.enabled and type(p).null_on_request}
            )
            fix = (
                f"name {', '.join(on_request)} in calibrate_kinds to draw its null, put "
                if on_request
                else "put "
            )
            out.append(
                f"nothing to calibrate: {why}; {fix}null_adapter before the probes it "
                "calibrates (e.g. delta_kl), or remove it"
            )
        return out

    def run(self, spec: ProbeSpec, ctx: RunContext) -> ProbeResult:
        assert isinstance(spec, NullAdapterSpec)
        backend = ctx.require_backend
        if not isinstance(backend, NullCalibratedBackend):
            return bare_result(
                spec,
                Verdict.SKIP,
                "backend has no null views: later probes use fixed thresholds",
            )

        fallback = _seed_contract_fallback(spec, backend)
        if fallback:
            spec = spec.model_copy(update={"null": SEED_CONSTRUCTION})
        targets, skipped, failed = select_targets(spec, ctx)
        seeds = null_seeds(ctx.seed, spec.runs, spec.seed_base)
        base_evidence: dict[str, Any] = {
            "runs": spec.runs,
            "null": spec.null,
            "calibration": spec.calibration,
            "init_scale": spec.init_scale,
            "seed_base": spec.seed_base,
            "null_seeds": seeds,
            "rank_multipliers": spec.rank_multipliers,
            "skipped_kinds": skipped,
        }
        if fallback:
            base_evidence["construction_note"] = fallback
        if not targets:
            msg = "nothing to calibrate: put null_adapter first and numeric probes after it"
            if skipped:
                msg += f" ({len(skipped)} opted out or failed)"
            return ProbeResult(
                name=spec.name,
                kind=self.kind,
                verdict=Verdict.WARN,
                message=msg,
                evidence=base_evidence,
                calibration=NullCalibration(by_rank={}, primary=rank_key(1.0), failures=failed),
            )

        ranks = [rank_key(m) for m in spec.rank_multipliers]
        expected: _null_cache.Expected | None = None
        cached: _null_cache.CacheRead | None = None
        if spec.cache and isinstance(backend, CacheIdentified):
            expected = _null_cache.Expected(
                identity=str(backend.cache_identity()),
                params={
                    "runs": spec.runs,
                    "null": spec.null,
                    "calibration": spec.calibration,
                    "init_scale": spec.init_scale,
                    "run_seed": ctx.seed,
                    "seed_base": spec.seed_base,
                    "null_seeds": seeds,
                    "top_k": ctx.top_k,
                    "rank_multipliers": spec.rank_multipliers,
                    "specs": {t.name: c.model_dump(mode="json") for _, t, c in targets},
                },
                ranks=ranks,
                names=[t.name for _, t, _ in targets],
                runs=spec.runs,
                construction=spec.null,
                method=spec.calibration,
                sway_version=__version__,
            )
            cached = _null_cache.read(expected)
            if cached.by_rank is not None:
                return self._result(spec, base_evidence, cached.by_rank, {}, failed, cached)

        by_rank, errors = self._sample_all(spec, ctx, backend, targets, seeds)
        return self._finish(spec, base_evidence, by_rank, errors, failed, expected, cached)

    def _sample_all(
        self,
        spec: NullAdapterSpec,
        ctx: RunContext,
        backend: NullCalibratedBackend,
        targets: list[Target],
        seeds: list[int],
    ) -> tuple[dict[str, dict[str, NullStats]], dict[str, list[str]]]:
        """Per rank key, per entry, the null stats; and per entry, the draws that failed.

        Entry by entry (all of one entry's nulls, then the next's), so each entry's
        statistics exist as early as possible; ``ctx.on_calibrated`` hears of each one
        then, and the runner can judge it while the others are still being drawn.
        Each null runs with the *run's* seed in its context: only the adapter differs
        from the real measurement, so seeded steps inside a probe (clustering, item
        selection) are the same ones the real run's verdict rests on.
        """
        out: dict[str, dict[str, NullStats]] = {rank_key(m): {} for m in spec.rank_multipliers}
        errors: dict[str, list[str]] = {}
        primary = rank_key(1.0) if rank_key(1.0) in out else next(iter(out))
        total = spec.runs * len(spec.rank_multipliers) * len(targets)
        step = 0
        for _probe, target, calib in targets:
            for mult in spec.rank_multipliers:
                samples: list[float] = []
                # Every null (and the base, and the fine-tune the probe runs on later) is
                # asked the same prompts: a backend that can scores them in shared forwards.
                nulls = [
                    SweepMember.of_null(NullDraw(x, spec.init_scale, mult, spec.null))
                    for x in seeds
                ]
                with shared_forwards(backend, [*BASE_AND_FT, *nulls]):
                    for i, seed in enumerate(seeds):
                        label = f"{spec.name}: {target.name} null {i + 1}/{spec.runs} @ {mult:g}x"
                        ctx.progress(label, step, total)
                        null_ctx = _null_context(ctx, backend, spec, seed, mult)
                        if i == 0:  # what the first null writes, the others may share
                            with recording() as written:
                                raw, err = _sample(get_probe_class(calib.kind)(), calib, null_ctx)
                            _prefetch(backend, null_ctx, written, seeds[1:])
                        else:
                            raw, err = _sample(get_probe_class(calib.kind)(), calib, null_ctx)
                        if raw is not None:
                            samples.append(raw)
                        elif err:
                            errors.setdefault(target.name, []).append(f"seed {seed}: {err}")
                        step += 1
                        ctx.progress(label, step, total)
                if samples:
                    out[rank_key(mult)][target.name] = NullStats.from_samples(
                        samples, construction=spec.null, method=spec.calibration
                    )
            if ctx.on_calibrated is not None:
                mine = {k: group[target.name] for k, group in out.items() if target.name in group}
                failure = None
                if target.name not in out[primary]:
                    failure = f"no finite null raw: {errors.get(target.name, ['none'])[0]}"
                ctx.on_calibrated(target.name, mine, failure)
        return out, errors

    def _finish(
        self,
        spec: NullAdapterSpec,
        evidence: dict[str, Any],
        by_rank: dict[str, dict[str, NullStats]],
        errors: dict[str, list[str]],
        failed: dict[str, str],
        expected: _null_cache.Expected | None,
        cached: _null_cache.CacheRead | None,
    ) -> ProbeResult:
        complete = expected is not None and all(
            sorted(group) == sorted(expected.names) for group in by_rank.values()
        )
        if expected is not None and complete:
            # Only a complete calibration is stored: a failed one is retried next run,
            # and shows its reasons again.
            _null_cache.write(expected, by_rank)
        return self._result(spec, evidence, by_rank, errors, failed, cached, from_cache=False)

    def _result(
        self,
        spec: NullAdapterSpec,
        evidence: dict[str, Any],
        by_rank: dict[str, dict[str, NullStats]],
        errors: dict[str, list[str]],
        failed: dict[str, str],
        cached: _null_cache.CacheRead | None,
        *,
        from_cache: bool = True,
    ) -> ProbeResult:
        primary_key = rank_key(1.0) if rank_key(1.0) in by_rank else next(iter(by_rank))
        primary = by_rank[primary_key]
        skipped = list(evidence["skipped_kinds"])
        failures = dict(failed)
        for name, errs in errors.items():
            if name not in primary:
                reason = f"no finite null raw: {errs[0]}"
                skipped.append({"kind": "", "name": name, "reason": reason})
                failures[name] = reason
        cache_file = str(cached.path) if cached is not None else None
        # Human detail only: the statistics later layers use are the typed ``calibration``.
        evidence = {
            **evidence,
            "skipped_kinds": skipped,
            "calibrated": sorted(primary),
            "calibration_failed": failures,
            "errors": {k: v[:3] for k, v in errors.items()},
            "from_cache": from_cache,
            "cache_file": cache_file,
        }
        if cached is not None and cached.problem is not None:
            evidence["cache_rejected"] = cached.problem
        ranks = ""
        if len(spec.rank_multipliers) > 1:
            ranks = " × ranks [" + ", ".join(f"{m:g}x" for m in spec.rank_multipliers) + "]"
            if primary_key != rank_key(1.0):
                ranks += f"; verdicts use the {primary_key.removeprefix('rank_')}x null"
        msg = (
            f"calibrated {len(primary)} probe(s){ranks} against {spec.runs} "
            f"{spec.null.replace('_', '-')} null adapter(s)"
        )
        if skipped:
            msg += f" ({len(skipped)} not calibrated)"
        if evidence.get("construction_note"):
            msg += f"; {evidence['construction_note']}"
        if from_cache:
            msg += f" (loaded from cache {cache_file})"
        elif cached is not None and cached.problem is not None:
            msg += f" (cache file {cache_file} rejected, recomputed: {cached.problem})"
        if not primary:
            first = next(iter(failures.values()), "no finite null samples")
            msg = (
                "calibration failed for every probe, so none of them can claim an effect "
                f"beyond noise ({first})"
            )
        return ProbeResult(
            name=spec.name,
            kind=self.kind,
            verdict=Verdict.PASS if primary else Verdict.WARN,
            score=1.0 if primary else None,
            message=msg,
            evidence=evidence,
            calibration=NullCalibration(
                by_rank=by_rank,
                primary=primary_key,
                failures=failures,
                from_cache=from_cache,
                cache_file=cache_file,
            ),
        )


def _seed_contract_fallback(spec: NullAdapterSpec, backend: NullCalibratedBackend) -> str:
    """A backend written to the seed contract draws only fixed-std nulls. When the spec
    left ``null:`` at its default, calibrate with those and say so; a construction the
    spec asked for by name is never swapped silently (the proxy refuses it)."""
    if "null" in spec.model_fields_set or spec.null in supported_constructions(backend):
        return ""
    return (
        f"the backend draws only the seed contract's {SEED_CONSTRUCTION!r} nulls, not the "
        f"default {spec.null!r}: calibrated against fixed-std nulls (set null: explicitly "
        "to require a construction)"
    )


def _null_context(
    ctx: RunContext, backend: NullCalibratedBackend, spec: NullAdapterSpec, seed: int, mult: float
) -> RunContext:
    """The run's context with one seeded null as "the fine-tune" (and nothing to calibrate)."""
    proxy = NullCalibrationBackendProxy(
        backend,
        seed=seed,
        init_scale=spec.init_scale,
        rank_scale=mult,
        construction=spec.null,
    )
    return ctx.evolve(
        backend=proxy,
        null_stats={},
        null_stats_by_rank={},
        downstream=(),
        calibrating=True,
        on_calibrated=None,
    )


def _prefetch(
    backend: NullCalibratedBackend, first: RunContext, written: list[Written], seeds: list[int]
) -> None:
    """What the first null wrote, the other nulls will write too: a backend that can
    decodes it for all of them in one batch, into their views' caches. A prompt that
    carries text generated before it (a dialogue's next turn) is only the same for the
    nulls that wrote the same text so far, so only those get it. The caches are keyed
    by the exact request: this decides speed only, anything asked otherwise is computed."""
    proxy = first.backend
    if not seeds or not written or not isinstance(backend, NullGenerationPrefetch):
        return
    if not isinstance(proxy, NullCalibrationBackendProxy):
        return
    nulls = [proxy.draw(seed) for seed in seeds]
    agreeing = list(range(len(nulls)))  # nulls that wrote what the first did, so far
    done: set[tuple[tuple[str, ...], str]] = set()  # as the caches key them
    generated: list[str] = []  # texts written so far (under any view) in this sample
    for w in written:
        keys = tuple(prompt_cache_key(p) for p in w.prompts)
        shown = [plain_text(p) for p in w.prompts]  # every turn's content, verbatim
        follows = any(t in text for t in generated for text in shown)
        generated.extend(t.strip() for t in w.texts if len(t.strip()) >= MIN_FOLLOWED_CHARS)
        if w.view_id not in proxy.ft_view_ids or (keys, repr(w.settings)) in done:
            continue
        done.add((keys, repr(w.settings)))
        ask = agreeing if follows else list(range(len(nulls)))
        try:
            got = backend.prefetch_null_generations([nulls[i] for i in ask], w.prompts, w.settings)
        except SwayError as exc:  # each null then meets (and records) the same error itself
            _log.info("null generations not batched: %s", exc)
            return
        except Exception as exc:  # noqa: BLE001 — only speed is lost: each null generates alone
            _log.warning(
                "batched null generation failed (%s: %s); generating one null at a time",
                type(exc).__name__,
                exc,
            )
            return
        mine = list(w.texts)
        agreeing = [
            i
            for i in agreeing
            if got is not None and i in ask and [g.text for g in got[ask.index(i)]] == mine
        ]


def _sample(probe: Probe, calib: ProbeSpec, ctx: RunContext) -> tuple[float | None, str]:
    """One null draw of a probe's raw. Probe failures are recorded, not raised."""
    try:
        result = probe.run(calib, ctx)
    except SwayError as exc:
        return None, str(exc)
    except Exception as exc:  # noqa: BLE001 — recorded per seed, reported in evidence
        return None, f"{type(exc).__name__}: {exc}"
    if result.raw is None or not math.isfinite(result.raw):
        return None, result.message or f"verdict {result.verdict.value} with no raw"
    return float(result.raw), ""


__all__ = ["NullAdapterProbe", "NullAdapterSpec", "null_seeds", "rank_key", "select_targets"]
