"""bf16 on CPU is an opt-in whose drift from fp32 is measured at load and said out loud."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pytest

from dlm_sway.backends import hf_load
from dlm_sway.backends.hf import HFDifferentialBackend

pytestmark = pytest.mark.hf


def test_bf16_on_cpu_scores_and_reports_its_floor(
    tiny_assets: Any, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="dlm_sway.backends.hf_load"):
        backend = HFDifferentialBackend(
            str(tiny_assets.base), tiny_assets.adapter, dtype="bf16", device="cpu"
        )
    with backend:
        assert backend.dtype == "bf16"
        floor = hf_load.dtype_floor(backend.peft_model)
        assert floor is not None and floor.dtype == "bf16"
        assert 0.0 < floor.js_max < 0.05 and floor.js_mean <= floor.js_max
        assert "bf16 on CPU" in caplog.text and "JS ≤" in caplog.text
        # …and in every report: a health line the JSON, terminal and HTML all carry.
        shown = [c for c in backend.load_health() if c.code == "dtype_floor"]
        assert len(shown) == 1 and "JS ≤" in shown[0].message
        # The half matmul's speed next to fp32's is measured too: a CPU that emulates
        # bf16 makes the run slower, and that is a warning, not an aside.
        assert floor.speed is not None and floor.speed > 0 and "fp32's" in shown[0].message
        assert shown[0].level == ("warn" if floor.slower else "info")
        with backend.as_base() as view:
            dist = view.next_token_full("The zebra")
        assert np.isfinite(dist.logprobs).all()
        assert abs(float(np.exp(dist.logprobs.astype(np.float64)).sum()) - 1.0) < 1e-3


def test_fp32_has_no_floor(tiny_assets: Any) -> None:
    with HFDifferentialBackend(
        str(tiny_assets.base), tiny_assets.adapter, dtype="fp32", device="cpu"
    ) as backend:
        assert hf_load.dtype_floor(backend.peft_model) is None
        assert not [c for c in backend.load_health() if c.code == "dtype_floor"]
