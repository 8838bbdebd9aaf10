"""A half dtype whose matmuls are slower than fp32's on this CPU says so as a warning,
with its fix; one that is faster states by how much."""

from __future__ import annotations

from dlm_sway.backends.hf_load import SLOW_HALF, DtypeFloor, floor_health


def test_a_half_dtype_slower_than_fp32_is_a_warning_with_its_fix() -> None:
    slow = DtypeFloor("bf16", 2e-3, 4e-4, 8, speed=0.15)
    assert slow.slower and "6.7× slower than fp32's" in slow.describe()
    (line,) = floor_health(slow)
    assert line.level == "warn" and "dtype: fp32" in line.fix
    fast = DtypeFloor("bf16", 2e-3, 4e-4, 8, speed=2.1)
    assert not fast.slower and "2.1× as fast as fp32's" in fast.describe()
    assert floor_health(fast)[0].level == "info"
    # At the line itself: within timing noise of parity is not flagged.
    assert not DtypeFloor("fp16", 1e-3, 1e-4, 8, speed=SLOW_HALF).slower
    unmeasured = DtypeFloor("bf16", 2e-3, 4e-4, 8)
    assert not unmeasured.slower and "fp32's" not in unmeasured.describe()
