"""The gate decision: one function turns a finished run and a policy into an exit code.

``sway gate`` computes it once; its exit code, its terminal line and the JUnit,
markdown and JSON outputs all read the same :class:`GateDecision`, so a report
can never show green while the gate exits 1.

Policy, in short: a FAIL or an ERROR fails the gate; so does a SKIP at run
time or a WARN, unless the spec (``gate.allow_skip`` / ``gate.allow_warn``) or
the command line (``--allow-skip`` / ``--allow-warn``) allows it by name or for
all probes. An entry disabled in the spec (``enabled: false``) was skipped on
purpose and does not fail. At least one effect claim must be judged (forgetting
probes alone only show no harm, which a no-op adapter shows too: exit 2), and
at least one effect claim that PASSes must have passed against null adapters,
not on fixed thresholds alone. An error-level health check (a zero-norm adapter, a
partly loaded adapter allowed by ``allow_partial_adapter``) fails it too. A suite
where no probe besides ``null_adapter`` was judged (PASS, FAIL or WARN) verified
nothing: exit 2, never 0.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from typing import Literal

from dlm_sway.core.result import Direction, ProbeResult, SuiteResult, SwayScore, Verdict

GATE_PASS = 0
GATE_FAIL = 1
#: Nothing was judged: a usage problem (the suite cannot verify anything), not a verdict.
GATE_UNJUDGED = 2
#: The calibration step: its own result gates like any probe, but it judges nothing.
BASELINE_KIND = "null_adapter"

ReasonCode = Literal[
    "nothing_judged",
    "uncalibrated",
    "failed",
    "errored",
    "skipped",
    "warned",
    "health",
    "threshold",
]
REASON_CODES: tuple[ReasonCode, ...] = (
    "nothing_judged",
    "uncalibrated",
    "failed",
    "errored",
    "skipped",
    "warned",
    "health",
    "threshold",
)
_JUDGED = (Verdict.PASS, Verdict.FAIL, Verdict.WARN)


@dataclass(frozen=True, slots=True)
class GatePolicy:
    """What the gate accepts. Names are probe names; ``*_all`` allows every probe."""

    threshold: float
    allow_skip: frozenset[str] = frozenset()
    allow_all_skips: bool = False
    allow_warn: frozenset[str] = frozenset()
    allow_all_warns: bool = False
    #: Entries the spec disables (``enabled: false``): their SKIP was asked for.
    disabled: frozenset[str] = frozenset()

    def skip_allowed(self, name: str) -> bool:
        return name in self.disabled or self.allow_all_skips or name in self.allow_skip

    def warn_allowed(self, name: str) -> bool:
        return self.allow_all_warns or name in self.allow_warn


@dataclass(frozen=True, slots=True)
class GateReason:
    """One reason the gate fails, with the probes it is about (empty for threshold)."""

    code: ReasonCode
    message: str
    probes: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class GateDecision:
    """The gate's verdict: exit code, every reason it fails, and what the policy allowed."""

    exit_code: int
    threshold: float
    overall: float
    reasons: tuple[GateReason, ...] = ()
    #: SKIP / WARN results the policy let through (disabled entries are not listed).
    allowed_skips: tuple[str, ...] = ()
    allowed_warns: tuple[str, ...] = ()

    @property
    def passed(self) -> bool:
        return self.exit_code == GATE_PASS

    @property
    def nothing_judged(self) -> bool:
        """No probe besides null_adapter was judged: the run verified nothing at all."""
        return any(reason.code == "nothing_judged" for reason in self.reasons)

    def summary(self) -> str:
        """One line: why it passed, or every reason it failed."""
        if self.passed:
            return f"overall={_number(self.overall, self.threshold)} ≥ {self.threshold:g}"
        return "; ".join(reason.message for reason in self.reasons)

    def probe_reason(self, name: str) -> GateReason | None:
        """The skipped/warned reason that turns this probe's own result into a gate failure."""
        for reason in self.reasons:
            if reason.code in ("skipped", "warned") and name in reason.probes:
                return reason
        return None


def decide(suite: SuiteResult, score: SwayScore, policy: GatePolicy) -> GateDecision:
    """The one gate decision (see the module docstring for the policy)."""
    probes = suite.probes
    failed = tuple(p.name for p in probes if p.verdict is Verdict.FAIL)
    errored = tuple(p.name for p in probes if p.verdict is Verdict.ERROR)
    skips = [p for p in probes if p.verdict is Verdict.SKIP]
    warns = [p for p in probes if p.verdict is Verdict.WARN]
    skipped = tuple(p.name for p in skips if not policy.skip_allowed(p.name))
    warned = tuple(p.name for p in warns if not policy.warn_allowed(p.name))
    judged = [p for p in probes if p.kind != BASELINE_KIND and p.verdict in _JUDGED]
    # Effect claims: what the gate exists to verify. Forgetting probes (direction HARM)
    # only show the adapter did no harm, which a no-op adapter shows too.
    claims = [p for p in judged if p.direction is Direction.EFFECT]

    reasons: list[GateReason] = []
    if not judged:
        reasons.append(
            GateReason(
                "nothing_judged",
                f"nothing was verified: no probe besides {BASELINE_KIND} returned PASS, FAIL "
                f"or WARN ({_tally(probes)}); a gate over no evidence cannot pass — enable "
                "or fix at least one probe",
            )
        )
    elif not claims:
        reasons.append(
            GateReason(
                "nothing_judged",
                "no effect was verified: only forgetting probes were judged, and they show "
                "that the adapter did no harm — which an adapter that changes nothing shows "
                "too; add an effect probe (e.g. delta_kl after a null_adapter)",
            )
        )
    else:
        passed = [p for p in claims if p.verdict is Verdict.PASS]
        calibrated = [p for p in passed if p.null is not None and p.null.degenerate is None]
        if passed and not calibrated:
            names = tuple(p.name for p in passed)
            reasons.append(
                GateReason(
                    "uncalibrated",
                    f"no effect claim passed against null adapters: {', '.join(names)} "
                    "passed on fixed thresholds only, which cannot tell a trained adapter "
                    "from a random one of its size — put a null_adapter before a calibrated "
                    "probe (delta_kl, adapter_ablation, ...)",
                    names,
                )
            )
    if failed:
        reasons.append(GateReason("failed", f"probe(s) failed: {', '.join(failed)}", failed))
    if errored:
        reasons.append(
            GateReason("errored", f"probe(s) could not run: {', '.join(errored)}", errored)
        )
    if skipped:
        why = "; ".join(f"{p.name}: {p.message or 'no reason given'}" for p in skips)
        reasons.append(
            GateReason(
                "skipped",
                f"probe(s) skipped at run time: {', '.join(skipped)} ({why}) — a SKIP "
                "verifies nothing; fix the cause, or allow it with --allow-skip NAME or "
                "gate.allow_skip in the spec",
                skipped,
            )
        )
    if warned:
        reasons.append(
            GateReason(
                "warned",
                f"probe(s) warned: {', '.join(warned)} — allow with --allow-warn NAME or "
                "gate.allow_warn in the spec",
                warned,
            )
        )
    broken = [c for c in suite.health if c.level == "error"]
    if broken:
        # An error-level health check says the evidence cannot carry any claim (a zero-norm
        # adapter, a partly loaded one): no verdict of this run can be staked on.
        reasons.append(
            GateReason(
                "health",
                "health check(s) failed: " + "; ".join(f"{c.code}: {c.message}" for c in broken),
            )
        )
    overall = score.overall
    if not overall >= policy.threshold:  # NaN never clears a threshold
        reasons.append(
            GateReason(
                "threshold",
                f"overall={_number(overall, policy.threshold)} < threshold {policy.threshold:g}",
            )
        )
    if not reasons:
        code = GATE_PASS
    elif claims or failed or errored:
        code = GATE_FAIL
    else:
        code = GATE_UNJUDGED
    return GateDecision(
        exit_code=code,
        threshold=policy.threshold,
        overall=overall,
        reasons=tuple(reasons),
        allowed_skips=tuple(
            p.name for p in skips if p.name not in skipped and p.name not in policy.disabled
        ),
        allowed_warns=tuple(p.name for p in warns if p.name not in warned),
    )


def _tally(probes: tuple[ProbeResult, ...]) -> str:
    counts = Counter(p.verdict.value.upper() for p in probes)
    if not counts:
        return "the suite produced no results"
    return ", ".join(f"{n} {verdict}" for verdict, n in sorted(counts.items()))


def _number(overall: float, threshold: float) -> str:
    """Two decimals, or four when two would round across the threshold (0.596 vs 0.6)."""
    if not math.isfinite(overall):
        return "nan"
    text = f"{overall:.2f}"
    if (float(text) >= threshold) != (overall >= threshold):
        text = f"{overall:.4f}"
    return text


__all__ = [
    "BASELINE_KIND",
    "GATE_FAIL",
    "GATE_PASS",
    "GATE_UNJUDGED",
    "REASON_CODES",
    "GateDecision",
    "GatePolicy",
    "GateReason",
    "ReasonCode",
    "decide",
]
