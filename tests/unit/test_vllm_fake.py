"""The vllm backend against a fake OpenAI-compatible server: error paths and bookkeeping.

The fake speaks the subset of vLLM's API the backend uses (``/version``,
``/v1/models``, ``/tokenize``, ``/v1/completions`` with ``logprobs`` /
``prompt_logprobs``, LoRA load/unload) over ``httpx.MockTransport``; one test
uses a real socket server on 127.0.0.1 for timeouts and a server that goes away.
Every failure must surface as an error carrying the server's words, never a number.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import http.server
import json
import math
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from dlm_sway.backends.vllm import VLLMDifferentialBackend
from dlm_sway.backends.vllm_client import ServerError, VLLMClient
from dlm_sway.backends.vllm_options import parse_options
from dlm_sway.core.errors import BackendLoadError, SpecValidationError, ViewError

VOCAB = 64
BASE = "fake-base"


def _logprobs(model_shift: float, context: list[int]) -> np.ndarray[Any, Any]:
    seed = int(hashlib.md5(json.dumps(context).encode()).hexdigest()[:8], 16)
    logits = np.random.default_rng(seed).standard_normal(VOCAB)
    logits[(sum(context) * 7) % VOCAB] += model_shift * 3.0
    return logits - (logits.max() + math.log(np.exp(logits - logits.max()).sum()))


class FakeVLLM:
    """State and knobs of the fake server."""

    def __init__(self) -> None:
        self.loras: dict[str, float] = {}
        self.loaded_paths: dict[str, str] = {}
        self.requests: list[tuple[str, dict[str, Any]]] = []
        self.fail_completions: int | None = None  # HTTP status for /v1/completions
        self.transient_503 = 0  # answer 503 this many times first
        self.malformed = False
        self.die_after: int | None = None  # completions answered before connections refuse
        self.ignore_lora = False
        self.max_logprobs = 20
        self.api_key: str | None = None
        self.in_flight = 0
        self.max_seen_in_flight = 0
        self.completions = 0
        self.mounts: dict[str, str] = {}

    def path_map(self, path: str) -> str:
        """Where the fake 'server' finds a path (a shared folder mounted elsewhere)."""
        for theirs, ours in self.mounts.items():
            if path.startswith(theirs):
                return ours + path[len(theirs) :]
        return path

    def tokens(self, text: str) -> list[int]:
        return [1] + [ord(c) % (VOCAB - 2) + 2 for c in text]

    def shift(self, model: str) -> float:
        if model == BASE or self.ignore_lora:
            return 0.0
        return self.loras[model]

    async def handle(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content) if request.content else {}
        self.requests.append((request.url.path, body))
        if self.api_key is not None and request.headers.get("authorization") != (
            f"Bearer {self.api_key}"
        ):
            return httpx.Response(401, json={"error": {"message": "Unauthorized", "code": 401}})
        path = request.url.path
        if path == "/version":
            return httpx.Response(200, json={"version": "0.32.0-fake"})
        if path == "/v1/models":
            return httpx.Response(200, json={"data": [{"id": BASE, "max_model_len": 256}]})
        if path == "/tokenize":
            return httpx.Response(200, json={"tokens": self.tokens(body["prompt"])})
        if path == "/v1/load_lora_adapter":
            weights = Path(self.path_map(body["lora_path"])) / "adapter_model.safetensors"
            digest = hashlib.md5(weights.read_bytes()).hexdigest()
            self.loras[body["lora_name"]] = 0.5 + int(digest[:4], 16) / 65536
            self.loaded_paths[body["lora_name"]] = body["lora_path"]
            return httpx.Response(200, text="Success")
        if path == "/v1/unload_lora_adapter":
            self.loras.pop(body["lora_name"])
            return httpx.Response(200, text="Success")
        if path == "/v1/completions":
            return await self._completion(body)
        return httpx.Response(404, json={"error": {"message": f"no route {path}"}})

    async def _completion(self, body: dict[str, Any]) -> httpx.Response:
        if self.die_after is not None and self.completions >= self.die_after:
            raise httpx.ConnectError("Connection refused")
        if self.transient_503 > 0:
            self.transient_503 -= 1
            return httpx.Response(503, json={"error": {"message": "Service Unavailable"}})
        if self.fail_completions is not None:
            return httpx.Response(
                self.fail_completions,
                json={"error": {"message": "EngineCore encountered an issue (fake)"}},
            )
        if self.malformed:
            return httpx.Response(200, text="<html>proxy error</html>")
        k = body.get("logprobs") or 0
        if k > self.max_logprobs:
            return httpx.Response(
                400,
                json={
                    "error": {
                        "message": f"Requested sample logprobs of {k}, which is greater "
                        f"than max allowed: {self.max_logprobs}"
                    }
                },
            )
        self.completions += 1
        self.in_flight += 1
        self.max_seen_in_flight = max(self.max_seen_in_flight, self.in_flight)
        try:
            await asyncio.sleep(0.005)
        finally:
            self.in_flight -= 1
        shift = self.shift(body["model"])
        prompt = body["prompt"]
        ids = prompt if isinstance(prompt, list) else self.tokens(prompt)
        choice: dict[str, Any] = {"text": "x", "finish_reason": "length", "stop_reason": None}
        if k:
            lp = _logprobs(shift, ids)
            top = np.argsort(-lp)[:k]
            choice["logprobs"] = {"top_logprobs": [{f"token_id:{t}": float(lp[t]) for t in top}]}
        if body.get("prompt_logprobs") is not None:
            rows: list[Any] = [None]
            for i in range(1, len(ids)):
                lp = _logprobs(shift, ids[:i])
                rows.append({str(ids[i]): {"logprob": float(lp[ids[i]]), "rank": 1}})
            choice["prompt_logprobs"] = rows
        return httpx.Response(200, json={"choices": [choice], "usage": {"completion_tokens": 1}})


@pytest.fixture
def adapter(tmp_path: Path) -> Path:
    """A real PEFT-format LoRA (rank 2 on two modules) with non-zero weights."""
    import torch
    from safetensors.torch import save_file

    out = tmp_path / "adapter"
    out.mkdir()
    config = {"peft_type": "LORA", "r": 2, "lora_alpha": 4, "target_modules": ["q_proj"]}
    (out / "adapter_config.json").write_text(json.dumps(config))
    gen = torch.Generator().manual_seed(0)
    tensors = {}
    for layer in (0, 1):
        stem = f"base_model.model.model.layers.{layer}.self_attn.q_proj"
        tensors[f"{stem}.lora_A.weight"] = torch.randn(2, 8, generator=gen)
        tensors[f"{stem}.lora_B.weight"] = torch.randn(8, 2, generator=gen)
    save_file(tensors, str(out / "adapter_model.safetensors"))
    return out


@pytest.fixture
def fake() -> FakeVLLM:
    return FakeVLLM()


def make(fake: FakeVLLM, adapter: Path, tmp_path: Path, **options: Any) -> VLLMDifferentialBackend:
    opts = {
        "url": "http://fake-vllm:8000",
        "vocab_size": VOCAB,
        "retries": 1,
        "adapter_dir": str(tmp_path / "written"),
        **options,
    }
    return VLLMDifferentialBackend(
        BASE,
        adapter,
        options=parse_options(opts),
        transport=httpx.MockTransport(fake.handle),
    )


def test_views_score_through_the_server_and_close_cleans_up(
    fake: FakeVLLM, adapter: Path, tmp_path: Path
) -> None:
    backend = make(fake, adapter, tmp_path, max_in_flight=3)
    assert backend.parity is not None and backend.parity.ft_vs_base > 0
    with backend.as_base() as base:
        b = base.next_token_dist_batch(["hello", "world", "again", "more"], top_k=8)
        b_lp = base.logprob_of("hello", " world")
    with backend.as_finetuned() as ft:
        f = ft.next_token_dist("hello", top_k=8)
    with backend.as_null_adapter(7, construction="norm_matched") as null:
        null.next_token_dist("hello", top_k=8)
    assert fake.max_seen_in_flight <= 3
    assert b[0].k == 8 and b[0].tail_logprob is not None and b[0].tail_logprob < 0
    assert not np.array_equal(b[0].logprobs, f.logprobs)
    # log p(" world" | "hello") = the sum of its per-token prompt log-probs
    ids = fake.tokens("hello world")
    expected = sum(float(_logprobs(0.0, ids[:i])[ids[i]]) for i in range(6, len(ids)))
    assert b_lp == pytest.approx(expected, abs=1e-6)
    written = [Path(p) for n, p in fake.loaded_paths.items() if "ft" not in n]
    assert written and all(p.is_dir() for p in written)
    backend.close()
    assert fake.loras == {}  # every adapter sway loaded is unloaded
    assert not any(p.exists() for p in written)  # and what it wrote is deleted


def test_max_loras_is_respected(fake: FakeVLLM, adapter: Path, tmp_path: Path) -> None:
    backend = make(fake, adapter, tmp_path, max_loras=2)
    try:
        for seed in range(4):
            with backend.as_null_adapter(seed) as view:
                view.next_token_dist("hi", top_k=4)
            assert len(fake.loras) <= 2
    finally:
        backend.close()
    assert fake.loras == {}


def test_http_500_is_an_error_with_the_servers_words(
    fake: FakeVLLM, adapter: Path, tmp_path: Path
) -> None:
    backend = make(fake, adapter, tmp_path)
    fake.fail_completions = 500
    try:
        with backend.as_base() as view, pytest.raises(ServerError, match="EngineCore"):
            view.next_token_dist("fresh prompt", top_k=4)
    finally:
        backend.close()


def test_transient_503_is_retried(fake: FakeVLLM, adapter: Path, tmp_path: Path) -> None:
    backend = make(fake, adapter, tmp_path, retries=2)
    fake.transient_503 = 2
    try:
        with backend.as_base() as view:
            assert view.next_token_dist("retry me", top_k=4).k == 4
    finally:
        backend.close()


def test_malformed_answer_is_an_error(fake: FakeVLLM, adapter: Path, tmp_path: Path) -> None:
    backend = make(fake, adapter, tmp_path)
    fake.malformed = True
    try:
        with backend.as_base() as view, pytest.raises(ServerError, match="malformed"):
            view.rolling_logprob("some text")
    finally:
        backend.close()


def test_server_dying_mid_run_is_an_error_not_a_number(
    fake: FakeVLLM, adapter: Path, tmp_path: Path
) -> None:
    backend = make(fake, adapter, tmp_path)
    fake.die_after = fake.completions + 2
    try:
        with backend.as_base() as view, pytest.raises(ServerError, match="cannot reach"):
            view.next_token_dist_batch([f"p{i}" for i in range(6)], top_k=4)
    finally:
        backend.close()  # the server is gone: local files still go, no hang


def test_top_k_above_server_max_logprobs_says_so(
    fake: FakeVLLM, adapter: Path, tmp_path: Path
) -> None:
    backend = make(fake, adapter, tmp_path)
    try:
        with backend.as_base() as view, pytest.raises(ViewError, match="at most 20"):
            view.next_token_dist("x", top_k=50)
    finally:
        backend.close()
    declared = make(fake, adapter, tmp_path, max_logprobs=16)
    try:
        sent = len(fake.requests)
        with declared.as_base() as view, pytest.raises(ViewError, match="top_k: 16"):
            view.next_token_dist("x", top_k=32)
        assert len(fake.requests) == sent  # refused before sending
    finally:
        declared.close()


def test_parity_failure_refuses_the_server(fake: FakeVLLM, adapter: Path, tmp_path: Path) -> None:
    fake.ignore_lora = True
    with pytest.raises(BackendLoadError, match="ignores the LoRA"):
        make(fake, adapter, tmp_path)
    assert fake.loras == {}  # cleaned up on the failed start too
    assert not any((tmp_path / "written").glob("*"))


def test_api_key_comes_from_the_named_env_var(
    fake: FakeVLLM, adapter: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake.api_key = "s3cret-token-value"
    monkeypatch.setenv("FAKE_VLLM_KEY", "s3cret-token-value")
    make(fake, adapter, tmp_path, api_key_env="FAKE_VLLM_KEY").close()
    monkeypatch.setenv("FAKE_VLLM_KEY", "wrong")
    with pytest.raises(ServerError, match="401: Unauthorized"):
        make(fake, adapter, tmp_path, api_key_env="FAKE_VLLM_KEY")
    monkeypatch.delenv("FAKE_VLLM_KEY")
    with pytest.raises(SpecValidationError, match="FAKE_VLLM_KEY.*not set"):
        make(fake, adapter, tmp_path, api_key_env="FAKE_VLLM_KEY")


@pytest.mark.parametrize("value", ["sk-abc123def456", "aB3dE5fG7hJ9kL1mN3pQ5rS7"])
def test_a_key_in_the_spec_is_refused_without_echoing_it(value: str) -> None:
    with pytest.raises(SpecValidationError) as info:
        parse_options({"url": "http://h:1", "api_key_env": value})
    assert value not in str(info.value) and "NAME of an environment variable" in str(info.value)
    with pytest.raises(SpecValidationError, match="never put the API key"):
        parse_options({"url": "http://h:1", "api_key": value})


def test_spec_with_kind_vllm_is_checked_at_load() -> None:
    from dlm_sway.suite.loader import from_dict

    spec = {
        "version": 1,
        "models": {"ft": {"kind": "vllm", "base": BASE, "adapter": "a", "options": {}}},
        "suite": [],
    }
    with pytest.raises(SpecValidationError, match="url"):
        from_dict(spec, source="t")
    spec["models"]["ft"]["options"] = {"url": "http://h:1", "max_in_flight": 0}
    with pytest.raises(SpecValidationError, match="max_in_flight"):
        from_dict(spec, source="t")


class _Slow(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802
        threading.Event().wait(1.0)  # longer than the client's timeout
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # client gave up
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"{}")

    def log_message(self, *args: object) -> None:
        return


@pytest.fixture
def slow_server() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Slow)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def test_timeouts_are_retried_then_reported(slow_server: str) -> None:
    client = VLLMClient(slow_server, timeout_s=0.2, retries=1, backoff_s=0.01)
    try:
        with pytest.raises(ServerError, match=r"failed 2 time\(s\).*no answer within 0.2 s"):
            client.get("/version")
        assert client.requests_sent == 2
    finally:
        client.close()


def test_a_closed_port_is_reported() -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    client = VLLMClient(f"http://127.0.0.1:{port}", retries=0, timeout_s=2)
    try:
        with pytest.raises(ServerError, match="cannot reach the server"):
            client.get("/version")
    finally:
        client.close()


def test_server_adapter_root_maps_every_path_the_server_reads(
    fake: FakeVLLM, adapter: Path, tmp_path: Path
) -> None:
    fake.mounts = {"/srv/shared": str(tmp_path / "written")}
    backend = make(fake, adapter, tmp_path, server_adapter_root="/srv/shared")
    try:
        with backend.as_null_adapter(3) as view:
            view.next_token_dist("hi", top_k=4)
        sent = [b["lora_path"] for p, b in fake.requests if p == "/v1/load_lora_adapter"]
        assert len(sent) >= 2 and all(s.startswith("/srv/shared/") for s in sent)
    finally:
        backend.close()
    assert not any((tmp_path / "written").iterdir())


def _suite(prompts: list[str]) -> Any:
    from dlm_sway.suite.loader import from_dict

    spec = {
        "version": 1,
        "models": {
            "ft": {"kind": "vllm", "base": BASE, "adapter": "a", "options": {"url": "http://x:1"}}
        },
        "defaults": {"top_k": 8},
        "suite": [{"name": "shift", "kind": "delta_kl", "prompts": prompts}],
    }
    return from_dict(spec, source="t")


def test_a_server_failing_mid_run_gives_error_results_not_numbers(
    fake: FakeVLLM, adapter: Path, tmp_path: Path
) -> None:
    from dlm_sway.core.result import Verdict
    from dlm_sway.suite.runner import run

    backend = make(fake, adapter, tmp_path)
    try:
        fake.fail_completions = 500
        aborted = run(_suite(["a b", "c d"]), backend)
        assert [p.verdict for p in aborted.probes] == [Verdict.ERROR]
        assert "EngineCore encountered an issue" in aborted.probes[0].message
        fake.fail_completions = None
        fake.die_after = fake.completions + 2  # the preflight's two requests, then gone
        result = run(_suite(["e f", "g h"]), backend)
        (probe,) = result.probes
        assert probe.verdict is Verdict.ERROR and probe.raw is None
        assert "cannot reach the server" in probe.message
    finally:
        backend.close()


def test_generation_through_completions(fake: FakeVLLM, adapter: Path, tmp_path: Path) -> None:
    from dlm_sway.core.scoring import Generating, GenerationSettings

    backend = make(fake, adapter, tmp_path)
    try:
        with backend.as_finetuned() as view:
            assert isinstance(view, Generating)
            (gen,) = view.generate_batch(["Once"], GenerationSettings(max_new_tokens=3, chat=False))
        body = fake.requests[-1][1]
        assert (
            body["model"].endswith("-ft") and body["max_tokens"] == 3 and body["prompt"] == "Once"
        )
        assert (gen.text, gen.new_tokens, gen.finish, gen.templated) == ("x", 1, "length", False)
    finally:
        backend.close()


def test_several_settings_go_to_the_server_as_one_set_of_requests(
    fake: FakeVLLM, adapter: Path, tmp_path: Path
) -> None:
    """Greedy and sampled batches of the same prompts are in flight together, each
    request with its own settings, and each batch is cached as ``generate_batch``'s."""
    from dlm_sway.core.scoring import GeneratingBatches, GenerationBatch, GenerationSettings

    prompts = ("Once", "upon", "a time")
    greedy = GenerationSettings(max_new_tokens=3, chat=False)
    sampled = GenerationSettings(max_new_tokens=4, temperature=0.8, seed=5, chat=False)
    backend = make(fake, adapter, tmp_path, max_in_flight=16)
    try:
        with backend.as_finetuned() as view:
            assert isinstance(view, GeneratingBatches)
            before, fake.max_seen_in_flight = len(fake.requests), 0
            got = view.generate_batches(
                [GenerationBatch(prompts, greedy), GenerationBatch(prompts, sampled)]
            )
            sent = [body for _, body in fake.requests[before:]]
            assert fake.max_seen_in_flight == 2 * len(prompts)  # none waited for another batch
            again = len(fake.requests)
            assert view.generate_batch(list(prompts), sampled) == got[1]
            assert len(fake.requests) == again  # served from the run cache
    finally:
        backend.close()
    assert [len(g) for g in got] == [3, 3]
    assert sorted((b["prompt"], b["max_tokens"], b["temperature"], b["seed"]) for b in sent) == (
        sorted(
            (p, s.max_new_tokens, s.temperature, s.seed) for s in (greedy, sampled) for p in prompts
        )
    )
