"""adapter_ablation always measures the base (λ=0) and the effect at λ=1 (issue 7, item 5).

Before, a grid without 0 or 1 left the effect unjudged, so the probe passed on the
curve's shape alone: a random-direction adapter FAILed on the default grid and
PASSed on ``[0.25, 0.5, 1, 1.5]``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dlm_sway.backends.dummy import DummyDifferentialBackend
from dlm_sway.core.result import SuiteResult, Verdict

RunSuite = Callable[..., SuiteResult]

NULL = {"name": "null", "kind": "null_adapter", "runs": 10}
PROMPTS = ["The quick brown fox", "Alpha beta gamma delta", "Hello world", "Once upon a time"]
DEFAULT = [0.0, 0.25, 0.5, 0.75, 1.0, 1.25]
#: The default grid with 0 and/or 1 left out: the measured grid is the default one again.
WITHOUT_ENDS = [
    [0.25, 0.5, 0.75, 1.0, 1.25],
    [0.0, 0.25, 0.5, 0.75, 1.25],
    [0.25, 0.5, 0.75, 1.25],
]
#: Grids a user might write (the issue's one first).
OTHER_GRIDS = [
    [0.25, 0.5, 1.0, 1.5],
    [0.5, 1.5, 2.0],
    [0.0, 0.5, 2.0],
    [2.0, 3.0, 4.0],
    [0.1, 0.2, 0.3],
]


def abl(lambdas: list[float] | None = None) -> dict[str, Any]:
    entry: dict[str, Any] = {"name": "abl", "kind": "adapter_ablation", "prompts": PROMPTS}
    if lambdas is not None:
        entry["lambdas"] = lambdas
    return entry


def random_direction() -> DummyDifferentialBackend:
    """No planted signal: the fine-tune is a random direction of the trained norm."""
    return DummyDifferentialBackend(planted=0.0)


def test_random_direction_fails_on_the_default_grid(run_suite: RunSuite) -> None:
    r = run_suite(NULL, abl(), backend=random_direction()).by_name("abl")
    assert r.verdict is Verdict.FAIL
    # the effect at λ=1 is noise: the judge says so from p, whatever the curve's shape
    assert r.headline == "indistinguishable from noise", r.message
    assert r.p_value is not None and r.p_value >= 0.05


@pytest.mark.parametrize("grid", WITHOUT_ENDS + OTHER_GRIDS, ids=str)
def test_random_direction_never_passes_on_another_grid(
    grid: list[float], run_suite: RunSuite
) -> None:
    default = run_suite(NULL, abl(), backend=random_direction()).by_name("abl")
    r = run_suite(NULL, abl(grid), backend=random_direction()).by_name("abl")
    assert r.verdict is not Verdict.PASS, r.message
    assert r.raw == pytest.approx(default.raw)  # the effect at λ=1, whatever the grid
    assert r.z_score is not None and r.z_score == pytest.approx(default.z_score)
    assert 0.0 in r.evidence["lambdas"] and 1.0 in r.evidence["lambdas"]


@pytest.mark.parametrize("planted", [0.0, 1.0], ids=["random", "trained"])
@pytest.mark.parametrize("grid", WITHOUT_ENDS, ids=str)
def test_leaving_out_zero_or_one_changes_nothing(
    grid: list[float], planted: float, run_suite: RunSuite
) -> None:
    be = {"backend": DummyDifferentialBackend(planted=planted)}
    default = run_suite(NULL, abl(), **be).by_name("abl")
    be = {"backend": DummyDifferentialBackend(planted=planted)}
    r = run_suite(NULL, abl(grid), **be).by_name("abl")
    assert r.verdict is default.verdict
    assert (r.raw, r.z_score, r.score) == (default.raw, default.z_score, default.score)
    assert r.evidence["lambdas"] == DEFAULT
    assert r.evidence["lambdas_requested"] == grid


def test_trained_adapter_passes_on_the_issue_grid(run_suite: RunSuite) -> None:
    r = run_suite(NULL, abl([0.25, 0.5, 1.0, 1.5])).by_name("abl")
    assert r.verdict is Verdict.PASS, r.message
    assert r.headline == "above noise" and r.z_score is not None and r.z_score >= 3.0


def test_grid_without_zero_is_calibrated(run_suite: RunSuite) -> None:
    res = run_suite(NULL, abl([0.25, 0.5, 1.0, 1.5]))
    assert "abl" in res.by_name("null").evidence["calibrated"]
    assert res.by_name("abl").z_score is not None


def test_noop_adapter_fails_on_any_grid(run_suite: RunSuite) -> None:
    for grid in OTHER_GRIDS:
        be = DummyDifferentialBackend(strength=0.0)
        r = run_suite(abl(grid), backend=be).by_name("abl")
        assert r.verdict is Verdict.FAIL, (grid, r.message)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    grid=st.lists(
        st.floats(min_value=0.0, max_value=4.0, allow_nan=False).map(lambda x: round(x, 2)),
        min_size=3,
        max_size=7,
        unique=True,
    ).filter(lambda xs: len(set(xs)) >= 3)
)
def test_property_random_direction_never_passes(grid: list[float], run_suite: RunSuite) -> None:
    r = run_suite(NULL, abl(grid), backend=random_direction()).by_name("abl")
    assert r.verdict is not Verdict.PASS, (grid, r.message)
    assert r.z_score is not None
