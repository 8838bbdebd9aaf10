"""Holm step-down adjustment and p ↔ z helpers."""

from __future__ import annotations

import math

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st
from scipy import stats as sps

from dlm_sway.core.calibration import P_FLOOR, Z_LIMIT
from dlm_sway.core.multiplicity import holm, holm_reject, p_from_z, z_from_p

p_maps = st.dictionaries(
    st.text(min_size=1, max_size=6), st.floats(min_value=0.0, max_value=1.0), max_size=12
)


def test_holm_hand_worked_example() -> None:
    # Sorted: d .005·4 = .02; a .01·3 = .03; c .03·2 = .06; b .04·1 = .04 → running max .06.
    adj = holm({"a": 0.01, "b": 0.04, "c": 0.03, "d": 0.005})
    assert list(adj) == ["a", "b", "c", "d"]
    assert adj == pytest.approx({"a": 0.03, "b": 0.06, "c": 0.06, "d": 0.02})
    assert holm_reject({"a": 0.01, "b": 0.04, "c": 0.03, "d": 0.005}, 0.05) == {
        "a": True,
        "b": False,
        "c": False,
        "d": True,
    }


def test_holm_caps_at_one_and_handles_trivial_families() -> None:
    assert holm({}) == {}
    assert holm({"only": 0.3}) == {"only": 0.3}
    assert holm({"x": 0.6, "y": 0.9}) == {"x": 1.0, "y": 1.0}


@pytest.mark.parametrize("bad", [None, float("nan"), -0.1, 1.5, "0.1x"])
def test_holm_rejects_bad_inputs(bad: object) -> None:
    with pytest.raises(ValueError, match="'q'"):
        holm({"p": 0.01, "q": bad})  # type: ignore[dict-item]


@given(p_maps)
def test_holm_properties(p_values: dict[str, float]) -> None:
    adj = holm(p_values)
    m = len(p_values)
    assert list(adj) == list(p_values)
    for k, p in p_values.items():
        assert p <= adj[k] <= 1.0
        assert adj[k] <= min(1.0, m * p) + 1e-15
    # Monotone: a smaller raw p never gets a larger adjusted p.
    for a, pa in p_values.items():
        for b, pb in p_values.items():
            if pa <= pb:
                assert adj[a] <= adj[b]


@given(p_maps, st.sampled_from([0.001, 0.01, 0.05, 0.1, 0.2]))
def test_holm_matches_sequential_procedure(p_values: dict[str, float], alpha: float) -> None:
    """adjusted ≤ α ⇔ the classic step-down: reject p₍ᵢ₎ while p₍ᵢ₎ ≤ α/(m − i + 1)."""
    m = len(p_values)
    ordered = sorted(p_values, key=lambda k: p_values[k])
    assume(all(abs((m - i) * p_values[k] - alpha) > 1e-12 for i, k in enumerate(ordered)))
    rejected: set[str] = set()
    for i, k in enumerate(ordered):
        if p_values[k] <= alpha / (m - i):
            rejected.add(k)
        else:
            break
    assert {k for k, r in holm_reject(p_values, alpha).items() if r} == rejected


def test_z_p_round_trip_and_clamps() -> None:
    for z in (-3.0, -0.5, 0.0, 1.0, 1.6448536269514722, 5.0, 20.0):
        assert z_from_p(p_from_z(z)) == pytest.approx(z, abs=1e-9)
    assert p_from_z(0.0) == 0.5
    assert z_from_p(0.05) == pytest.approx(float(sps.norm.isf(0.05)))
    assert p_from_z(1e6) == P_FLOOR
    assert z_from_p(0.0) == pytest.approx(float(sps.norm.isf(P_FLOOR)))
    assert z_from_p(1.0) == -Z_LIMIT
    assert math.isfinite(z_from_p(1e-320))
    with pytest.raises(ValueError):
        z_from_p(float("nan"))
    with pytest.raises(ValueError):
        p_from_z(float("nan"))
