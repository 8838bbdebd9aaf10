"""``gradient_ghost``: an undertrained adapter, caught before any model loads.

Two sources, each optional but not both:

* the adapter's weights (:mod:`dlm_sway.core.lora_profile`): with PEFT's zero-B
  initialisation every bit of ``s·B·A`` is training's work, so a module whose
  LoRA term adds less than ``min_module_gain`` RMS to its outputs (or under
  ``min_relative_gain`` of the adapter's median module) was not trained;
* the optimizer state when the trainer saved one (``optimizer.pt`` of a
  Trainer checkpoint, ``training_state.pt`` of a ``.dlm`` store version;
  :mod:`dlm_sway.core.optimizer_state`): too few steps, NaN moments, tensors
  that never received a gradient, and gradients still pointing one way when
  training stopped (median coherence above ``max_coherence``).

Fixed checks, no null: a random adapter has no training history to compare with.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import Field

from dlm_sway.core.errors import BackendLoadError
from dlm_sway.core.judge import Check
from dlm_sway.core.lora_profile import ModuleProfile, model_order, profile, zero_b_init
from dlm_sway.core.optimizer_state import (
    OptimizerStateError,
    OptimizerSummary,
    read_optimizer_state,
)
from dlm_sway.core.result import Direction, ProbeResult, Verdict
from dlm_sway.core.sections import Document
from dlm_sway.core.training_logs import newest_checkpoint
from dlm_sway.probes._fields import Fraction, NonBlank
from dlm_sway.probes._verdict import Calibration, judge, judged_result
from dlm_sway.probes.base import Probe, ProbeSpec, RunContext, bare_result

_STATE_FILES = ("optimizer.pt", "training_state.pt")


class GradientGhostSpec(ProbeSpec):
    kind: Literal["gradient_ghost"] = "gradient_ghost"
    path_fields: ClassVar[tuple[str, ...]] = ("adapter", "optimizer_state")
    #: The PEFT adapter folder. Default: the spec's ``models.ft.adapter``.
    adapter: NonBlank | None = None
    #: ``optimizer.pt`` / ``training_state.pt``. Default: next to the adapter, or the newest
    #: ``checkpoint-*/`` of the adapter folder or its parent.
    optimizer_state: NonBlank | None = None
    #: 1e-3 RMS on unit-RMS inputs is < 1% of a projection's typical output entry; the
    #: shipped 110-step demo adapter's weakest module adds 0.06, its 2-step one 5e-6.
    min_module_gain: float = Field(default=1e-3, gt=0.0, le=10.0)
    #: A module under 1% of the adapter's median module barely trained while its peers did
    #: (a frozen layer, a gradient that never reached it).
    min_relative_gain: Fraction = 0.01
    #: Every targeted module of a healthy LoRA receives gradient: allow only a few exceptions.
    max_untrained_frac: Fraction = 0.1
    #: B starts at 0 and Adam moves it by ≈ lr per step: below ~50 steps at the usual
    #: 1e-4–5e-4, B cannot reach the 1e-2 scale trained adapters show (demo: 0.016 after 110).
    min_steps: int = Field(default=50, ge=1, le=100_000_000)
    #: Median share of gradient energy still pointing one way when training stopped; on a
    #: tiny LoRA under batch noise it fell 0.34 (10 steps) → 0.25 (60) → 0.08 (300) → 0.0.
    max_coherence: Fraction = 0.3


def _explicit_problems(spec: GradientGhostSpec) -> list[str]:
    out: list[str] = []
    if spec.adapter is not None and not (Path(spec.adapter) / "adapter_config.json").is_file():
        out.append(
            f"adapter: {spec.adapter} is not a PEFT adapter folder (no adapter_config.json); "
            "point it at the folder save_pretrained wrote, or remove it to use models.ft.adapter"
        )
    if spec.optimizer_state is not None and not Path(spec.optimizer_state).is_file():
        out.append(
            f"optimizer_state: {spec.optimizer_state} does not exist; point it at a Trainer "
            "checkpoint's optimizer.pt (or a .dlm version's training_state.pt), or remove it"
        )
    return out


def find_optimizer_state(adapter_dir: Path) -> Path | None:
    for name in _STATE_FILES:
        if (adapter_dir / name).is_file():
            return adapter_dir / name
    for folder in (adapter_dir, adapter_dir.parent):
        ckpt = newest_checkpoint(folder, "optimizer.pt")
        if ckpt is not None:
            return ckpt / "optimizer.pt"
    return None


def _weight_checks(
    spec: GradientGhostSpec, config: dict[str, Any], mods: list[ModuleProfile]
) -> tuple[list[Check], float | None, str]:
    if not mods:
        return [Check(False, "the adapter holds no lora_A/lora_B pairs", judged=False)], None, ""
    bad = [m.name for m in mods if m.non_finite]
    checks = [Check(not bad, f"{len(bad)} LoRA module(s) hold NaN/inf weights, e.g. {bad[:1]}")]
    gains = np.array([m.gain for m in mods if not m.non_finite])
    median = float(np.median(gains)) if gains.size else 0.0
    if not zero_b_init(config):
        init = config.get("init_lora_weights")
        text = (
            f"init_lora_weights={init!r} does not start B at zero, so the weights cannot show "
            "how far training moved them (save the optimizer state to judge this adapter)"
        )
        return [*checks, Check(False, text, judged=False)], None, f"median module gain {median:.3g}"
    floor = max(spec.min_module_gain, spec.min_relative_gain * median)
    weak = [m for m in mods if not m.non_finite and m.gain < floor]
    frac = (len(weak) + len(bad)) / len(mods)
    shown = ", ".join(m.name.rsplit("model.", 1)[-1] for m in weak[:3])
    checks.append(
        Check(
            frac <= spec.max_untrained_frac,
            f"{len(weak)} of {len(mods)} LoRA modules untrained (gain < {floor:.3g}: "
            f"min_module_gain {spec.min_module_gain:g} / min_relative_gain "
            f"{spec.min_relative_gain:g} of the median), {frac:.0%} > max_untrained_frac "
            f"{spec.max_untrained_frac:g}" + (f"; e.g. {shown}" if shown else ""),
        )
    )
    b_rel = [m.b_rel for m in mods if m.b_rel is not None]
    what = (
        f"{len(mods)} LoRA modules: median gain {median:.3g} (min {float(gains.min()):.3g}), "
        f"median RMS(B)/RMS(A at init) {float(np.median(b_rel)):.3g}, {len(weak)} untrained"
        if gains.size and b_rel
        else f"{len(mods)} LoRA modules"
    )
    return checks, frac, what


def _optimizer_checks(spec: GradientGhostSpec, opt: OptimizerSummary) -> tuple[list[Check], str]:
    where = Path(opt.source).parent.name + "/" + Path(opt.source).name
    if not opt.has_moments:
        return [], f"{where} has no Adam moments (not an Adam-family optimizer): not judged"
    nan = [t for t in opt.tensors if t.non_finite]
    dead = [t for t in opt.tensors if t.no_gradient]
    cohs = [t.coherence for t in opt.tensors if t.coherence is not None]
    med = float(np.median(cohs)) if cohs else None
    checks = [
        Check(
            opt.steps >= spec.min_steps,
            f"{opt.steps} optimizer steps < {spec.min_steps} (min_steps)",
        ),
        Check(not nan, f"{len(nan)} of {len(opt.tensors)} tensors have NaN/inf Adam moments"),
        Check(not dead, f"{len(dead)} of {len(opt.tensors)} tensors never received a gradient"),
    ]
    if med is not None:
        checks.append(
            Check(
                med <= spec.max_coherence,
                f"median gradient coherence {med:.2f} > {spec.max_coherence:g} (max_coherence): "
                "training stopped while gradients still pushed one way",
            )
        )
    coh = f", median gradient coherence {med:.2f}" if med is not None else ""
    return checks, f"{where}: {opt.steps} steps over {len(opt.tensors)} tensors{coh}"


def _names(tensors: dict[str, Any], opt: OptimizerSummary) -> dict[int, str] | None:
    """Optimizer slot → LoRA tensor name when count and every shape agree, else None."""
    order = model_order(tensors)
    if len(order) != len(opt.tensors):
        return None
    pairs = zip(order, opt.tensors, strict=True)
    if any(tuple(tensors[n].shape) != t.shape for n, t in pairs):
        return None
    return {t.index: n for n, t in zip(order, opt.tensors, strict=True)}


class GradientGhostProbe(Probe):
    """Undertrained adapter from its weights and optimizer state, with no model load."""

    kind = "gradient_ghost"
    spec_cls = GradientGhostSpec
    category = "calibration"
    needs_backend = False
    calibrated = False
    uncalibrated_reason = (
        "reads the adapter's files, not the model: a random adapter has no training "
        "history, so fixed checks on the weights and optimizer state decide"
    )

    @classmethod
    def load_problems(
        cls,
        spec: ProbeSpec,
        *,
        document: Document | None,
        downstream: tuple[tuple[Probe, ProbeSpec], ...] = (),
    ) -> list[str]:
        assert isinstance(spec, GradientGhostSpec)
        return _explicit_problems(spec)

    def run(self, spec: ProbeSpec, ctx: RunContext) -> ProbeResult:
        assert isinstance(spec, GradientGhostSpec)
        from dlm_sway.backends.adapter_files import read_adapter_dir, read_weights

        problems = _explicit_problems(spec)
        if problems:
            return bare_result(spec, Verdict.ERROR, "; ".join(problems))
        folder = spec.adapter or ctx.adapter_dir
        if folder is None:
            return bare_result(
                spec,
                Verdict.SKIP,
                "no adapter folder to read (models.ft.adapter is not a local path); set "
                "adapter: in this entry",
            )
        adapter = Path(folder)
        try:
            config, weights_file = read_adapter_dir(adapter)
            tensors = read_weights(weights_file)
            state = (
                Path(spec.optimizer_state)
                if spec.optimizer_state
                else find_optimizer_state(adapter)
            )
            opt = read_optimizer_state(state) if state is not None else None
        except (BackendLoadError, OptimizerStateError) as exc:
            return bare_result(spec, Verdict.ERROR, str(exc))
        mods = profile(config, tensors)
        checks, frac, what = _weight_checks(spec, config, mods)
        evidence: dict[str, Any] = {
            "adapter": str(adapter),
            "weights": str(weights_file),
            "modules": [
                {"name": m.name, "rank": m.rank, "gain": m.gain, "b_rel": m.b_rel}
                for m in sorted(mods, key=lambda m: m.gain)[:10]
            ],
            "optimizer_state": None if opt is None else opt.source,
        }
        if opt is not None:
            opt_checks, opt_what = _optimizer_checks(spec, opt)
            checks += opt_checks
            what = f"{what}; {opt_what}" if what else opt_what
            names = _names(tensors, opt)
            evidence["optimizer_steps"] = opt.steps
            evidence["most_coherent"] = [
                {
                    "tensor": names[t.index] if names else f"param #{t.index}",
                    "coherence": t.coherence,
                }
                for t in sorted(opt.tensors, key=lambda t: -(t.coherence or 0.0))[:5]
            ]
        else:
            what += "; no optimizer state saved (weights only)"
        cal = Calibration(stats=None, comparison=None)
        j = judge(
            0.0 if frac is None else frac,
            cal,
            spec,
            ctx,
            what=what,
            non_negative=False,
            checks=tuple(checks),
            fixed_score=None if frac is None else 1.0 - frac,
            uncalibrated_reason=f"not calibrated against null adapters: {self.uncalibrated_reason}",
        )
        return judged_result(
            spec,
            cal,
            j,
            raw=frac,
            measured=what,
            evidence=evidence,
            direction=Direction.HARM,  # a PASS claims no sign of undertraining, not an effect
            non_negative=False,
        )


__all__ = ["GradientGhostProbe", "GradientGhostSpec", "find_optimizer_state"]
