"""Quality lane: the paired (per-prompt) comparisons on real model outputs.

A pool of norm-matched null adapters is scored once on the tiny Llama, one row of
per-prompt JS each (delta_kl's own per-prompt values); trials take disjoint rows
(:func:`dlm_sway.suite.power.paired_study`). Every method that assumes only
exchangeability must keep its false-positive rate within the binomial 99.9%
allowance at z ≥ 1.645 and z ≥ 3, and today's comparison (``mean_t``) must keep
the power measured by ``bench/power_study.py`` (docs/statistics.md, "Power and
the prompt dimension"), less a margin for the smaller trial count here.

Nulls sit at 0.05× the trained norm (``TINY_NULL_SCALE`` in the bench): the
tiny model's random base saturates above ~0.2×, where no scaling plants 2×.
Seeds are fixed, so every count is deterministic.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from dlm_sway.backends.dummy import DummyDifferentialBackend
from dlm_sway.core.paired import EXCHANGEABLE_METHODS
from dlm_sway.demo.assets import prompts as demo_prompts
from dlm_sway.suite.loader import from_dict
from dlm_sway.suite.power import (
    PairedStudy,
    base_dists,
    null_table,
    paired_study,
    prompt_divergences,
)
from dlm_sway.suite.quality import Z_05, Z_3, binomial_allowance, nominal_alpha
from dlm_sway.suite.runner import run

K = 10
TRIALS = 150
NULL_SCALE = 0.05
#: Power of ``mean_t`` at K=10, per (planted ratio, z bar): the bench's 1000-trial rate
#: (2×: 0.54 at z ≥ 1.645; 3×: 0.91 and 0.26 at z ≥ 3) less ~3 binomial standard errors
#: at 150 trials. The 2× rate at z ≥ 3 (0.07) is too low to guard.
POWER_FLOOR = {(2.0, Z_05): 0.40, (3.0, Z_05): 0.85, (3.0, Z_3): 0.16}


def _within_allowance(study: PairedStudy, method: str) -> None:
    """Counts ≤ the binomial 99.9% quantile at the nominal rate (at z ≥ 3 and 150 trials the
    expected count is 0.2: the 99% quantile, 2, would fail on one unlucky null seed)."""
    for z in (Z_05, Z_3):
        rate = study.at(method, z)
        allowed = binomial_allowance(rate.trials, nominal_alpha(z), q=0.999)
        assert rate.passes <= allowed, (
            f"{method}: {rate.passes}/{rate.trials} null impostors PASS at z ≥ {z:.3g} "
            f"(nominal {nominal_alpha(z):.3%}, allowance {allowed})"
        )


def test_per_prompt_values_are_the_ones_delta_kl_averages() -> None:
    """The study's per-prompt JS is exactly what the probe reports (its raw is their mean)."""
    prompts = demo_prompts()[:6]
    backend = DummyDifferentialBackend()
    spec = {
        "version": 1,
        "models": {"ft": {"kind": "dummy", "base": "power"}},
        "defaults": {"top_k": 256},
        "suite": [{"name": "d", "kind": "delta_kl", "prompts": prompts}],
    }
    res = next(p for p in run(from_dict(spec), backend, skip_preflight=True).probes)
    base = base_dists(backend, prompts)
    with backend.as_finetuned() as view:
        values = prompt_divergences(view, base, prompts)
    assert res.raw == pytest.approx(float(values.mean()), rel=1e-9)


@pytest.fixture(scope="module")
def tiny_pool(tiny_backend: Any) -> tuple[np.ndarray, list[Any], list[str]]:
    from tiny_model import CORPUS

    prompts = list(CORPUS[:6])
    base = base_dists(tiny_backend, prompts)
    pool = null_table(
        tiny_backend, prompts, range(TRIALS * (K + 1)), base=base, rank_scale=NULL_SCALE**2
    )
    return pool, base, prompts


@pytest.mark.hf
def test_tiny_model_fpr_of_every_exchangeable_method_is_nominal(
    tiny_pool: tuple[np.ndarray, list[Any], list[str]],
) -> None:
    pool, _, _ = tiny_pool
    study = paired_study(pool, k=K, methods=EXCHANGEABLE_METHODS)
    assert study.config["trials"] == TRIALS
    for method in EXCHANGEABLE_METHODS:
        _within_allowance(study, method)
        assert study.at(method, Z_05).passes >= 1, f"{method} never rejects a null"


@pytest.mark.hf
@pytest.mark.parametrize("ratio", sorted({r for r, _ in POWER_FLOOR}))
def test_tiny_model_power_at_planted_ratios(
    tiny_backend: Any, tiny_pool: tuple[np.ndarray, list[Any], list[str]], ratio: float
) -> None:
    """A random direction √ratio× the nulls' norm moves JS ≈ ratio× (JS ∝ size² here)."""
    pool, base, prompts = tiny_pool
    size = NULL_SCALE * ratio**0.5
    adapters = null_table(
        tiny_backend,
        prompts,
        range(10_000_000, 10_000_000 + TRIALS),
        base=base,
        rank_scale=size * size,
    )
    study = paired_study(pool, k=K, adapters=adapters, methods=("mean_t",))
    realised = float(np.median(study.ratios))
    assert abs(realised / ratio - 1.0) < 0.15, f"planted {ratio}×, realised {realised:.2f}×"
    for (r, z), floor in POWER_FLOOR.items():
        if r == ratio:
            rate = study.at("mean_t", z)
            assert rate.rate >= floor, f"{ratio}× at z ≥ {z:.3g}: {rate.passes}/{rate.trials}"
