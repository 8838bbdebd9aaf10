"""``training_drift``: was the training run's loss curve healthy? No model is loaded.

Reads what trainers write (:mod:`dlm_sway.core.training_logs`): HF Trainer / TRL
``trainer_state.json`` next to the adapter, in its parent or newest
``checkpoint-*/``, or a ``.dlm`` store's ``logs/train-*.jsonl``; and judges it
with fixed checks (:mod:`dlm_sway.core.loss_curve`): non-finite losses, no
learning, divergence, loss spikes and over-fitting fail; a late plateau is a
note. There is no null: a random adapter has no training run.

Where the log comes from decides what "missing" means: a path written in the
entry that does not exist is a load error (exit 2, before anything runs);
automatic discovery that finds nothing is a SKIP saying where it looked.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field, model_validator

from dlm_sway.core.judge import Check
from dlm_sway.core.loss_curve import CurveReport, Thresholds, analyse
from dlm_sway.core.result import Direction, ProbeResult, Verdict
from dlm_sway.core.sections import Document
from dlm_sway.core.training_logs import (
    TrainingLog,
    TrainingLogError,
    discover,
    dlm_log_files,
    read_dlm_logs,
    read_trainer_state,
)
from dlm_sway.probes._fields import Fraction, NonBlank
from dlm_sway.probes._verdict import Calibration, judge, judged_result
from dlm_sway.probes.base import Probe, ProbeSpec, RunContext, bare_result

MAX_CURVE_POINTS = 256


class TrainingDriftSpec(ProbeSpec):
    """Thresholds of the fixed checks; each default's reason is in its comment."""

    kind: Literal["training_drift"] = "training_drift"
    path_fields: ClassVar[tuple[str, ...]] = ("trainer_state", "logs_dir")
    #: A ``trainer_state.json`` (or a folder holding one). Default: found around the adapter.
    trainer_state: NonBlank | None = None
    #: A ``.dlm`` store's ``logs/`` folder. Default: the store of the spec's ``.dlm`` document.
    logs_dir: NonBlank | None = None
    #: Fewer logged points cannot show a trend (a WARN, not a verdict on the run).
    min_points: int = Field(default=5, ge=3, le=1_000_000)
    #: A run whose loss fell by less than 2% of its start learned nothing measurable.
    min_improvement: Fraction = 0.02
    #: Giving back over half of the improvement is a diverging run, not noise.
    max_rebound: float = Field(default=0.5, gt=0.0, le=10.0)
    #: Robust z of an upward jump against its neighbours; 6 is ~1e-9 under Gaussian noise,
    #: so ordinary heavy-tailed batch noise stays below it (3 flagged smooth decays).
    spike_z: float = Field(default=6.0, gt=0.0, le=1000.0)
    max_spikes: int = Field(default=0, ge=0, le=1_000_000)
    #: Eval loss 5% above its best while train loss still falls: the adapter memorises.
    max_eval_rise: float = Field(default=0.05, gt=0.0, le=10.0)
    #: A note (never a failure) when the last half of the steps added < 5% of the gain.
    plateau_frac: Fraction = 0.5

    @model_validator(mode="after")
    def _one_source(self) -> TrainingDriftSpec:
        if self.trainer_state is not None and self.logs_dir is not None:
            raise ValueError(
                "give either trainer_state or logs_dir, not both (one run's curve is judged)"
            )
        return self

    def thresholds(self) -> Thresholds:
        return Thresholds(
            min_points=self.min_points,
            min_improvement=self.min_improvement,
            max_rebound=self.max_rebound,
            spike_z=self.spike_z,
            max_spikes=self.max_spikes,
            max_eval_rise=self.max_eval_rise,
            plateau_frac=self.plateau_frac,
        )


def _explicit_problem(spec: TrainingDriftSpec) -> str | None:
    """What is wrong with a path written in the entry (None: fine or not given)."""
    if spec.trainer_state is not None:
        p = Path(spec.trainer_state)
        if p.is_dir():
            p = p / "trainer_state.json"
        if not p.is_file():
            return (
                f"trainer_state: {p} does not exist; point it at the trainer_state.json that "
                "Trainer.save_state or a checkpoint-*/ folder holds, or remove the field to "
                "look next to the adapter"
            )
    if spec.logs_dir is not None:
        d = Path(spec.logs_dir)
        if not d.is_dir() or not dlm_log_files(d):
            return (
                f"logs_dir: {d} holds no train-*.jsonl files; point it at a .dlm store's "
                "logs/ folder, or remove the field to use the spec's .dlm document's store"
            )
    return None


def load_log(spec: TrainingDriftSpec, ctx: RunContext) -> tuple[TrainingLog | None, str]:
    """The configured log, or the discovered one; ``(None, why)`` when none exists."""
    problem = _explicit_problem(spec)
    if problem is not None:
        raise TrainingLogError(problem)
    if spec.trainer_state is not None:
        p = Path(spec.trainer_state)
        return read_trainer_state(p / "trainer_state.json" if p.is_dir() else p), ""
    if spec.logs_dir is not None:
        return read_dlm_logs(spec.logs_dir), ""
    return discover(ctx.adapter_dir, ctx.dlm_store)


def _sampled(points: tuple[tuple[int, float], ...]) -> list[list[float]]:
    stride = max(1, -(-len(points) // MAX_CURVE_POINTS))
    kept = list(points[::stride])
    if points and kept[-1] != points[-1]:
        kept.append(points[-1])
    return [[s, v] for s, v in kept]


class TrainingDriftProbe(Probe):
    """Was the loss curve healthy: no NaN, learned, no divergence, spikes or over-fit?"""

    kind = "training_drift"
    spec_cls = TrainingDriftSpec
    category = "calibration"
    needs_backend = False
    calibrated = False
    uncalibrated_reason = (
        "reads the training log, not the model: a random adapter has no training run to "
        "compare with, so fixed checks on the loss curve decide"
    )

    @classmethod
    def load_problems(
        cls,
        spec: ProbeSpec,
        *,
        document: Document | None,
        downstream: tuple[tuple[Probe, ProbeSpec], ...] = (),
    ) -> list[str]:
        assert isinstance(spec, TrainingDriftSpec)
        problem = _explicit_problem(spec)
        return [problem] if problem is not None else []

    def run(self, spec: ProbeSpec, ctx: RunContext) -> ProbeResult:
        assert isinstance(spec, TrainingDriftSpec)
        try:
            log, why = load_log(spec, ctx)
        except TrainingLogError as exc:
            return bare_result(spec, Verdict.ERROR, str(exc))
        if log is None:
            return bare_result(
                spec,
                Verdict.SKIP,
                f"{why}; set trainer_state: or logs_dir: in this entry to point at the log",
            )
        if not log.train_loss:
            return bare_result(
                spec,
                Verdict.ERROR,
                f"{log.source}: the log holds no train loss values (no 'loss' entries), so "
                "there is no curve to judge; log with logging_steps > 0",
            )
        report = analyse(log.train_loss, log.eval_loss, spec.thresholds())
        return self._judged(spec, ctx, log, report)

    def _judged(
        self, spec: TrainingDriftSpec, ctx: RunContext, log: TrainingLog, report: CurveReport
    ) -> ProbeResult:
        checks = tuple(
            Check(False, f.text, judged=f.kind != "too_short")
            for f in report.findings
            if f.fails or f.kind == "too_short"
        )
        notes = [f.text for f in report.findings if not f.fails and f.kind != "too_short"]
        where = f"{log.format} {log.source}"
        if report.ratio is not None:
            assert report.start is not None and report.end is not None
            what = (
                f"train loss {report.start:.4g} → {report.end:.4g} (×{report.ratio:.3g}) over "
                f"{report.n_points} logged steps of {where}"
            )
        else:
            what = f"{report.n_points} finite train loss value(s) in {where}"
        if notes:
            what += "; note: " + "; ".join(notes)
        raw = report.ratio
        cal = Calibration(stats=None, comparison=None)
        j = judge(
            0.0 if raw is None else raw,
            cal,
            spec,
            ctx,
            what=what,
            non_negative=False,
            checks=checks,
            fixed_score=max(0.0, min(1.0, 1.0 - report.ratio)) if report.ratio else None,
            uncalibrated_reason=f"not calibrated against null adapters: {self.uncalibrated_reason}",
        )
        evidence: dict[str, Any] = {
            "source": log.source,
            "format": log.format,
            "files": list(log.files),
            "global_step": log.global_step,
            "findings": [
                {"kind": f.kind, "fails": f.fails, "step": f.step, "text": f.text}
                for f in report.findings
            ],
            "best_loss": report.best,
            "best_step": report.best_step,
            "spike_steps": list(report.spikes),
            "train_curve": _sampled(log.train_loss),
            "eval_curve": _sampled(log.eval_loss),
            "read_notes": list(log.notes),
        }
        return judged_result(
            spec,
            cal,
            j,
            raw=raw,
            measured=what,
            evidence=evidence,
            direction=Direction.HARM,  # a PASS claims no pathology, not an effect
            non_negative=False,
            base_value=report.start,
            ft_value=report.end,
        )


__all__ = ["TrainingDriftProbe", "TrainingDriftSpec", "load_log"]
