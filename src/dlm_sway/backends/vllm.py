"""The ``vllm`` backend: the same views, served by a running vLLM server.

Base = the served base model's name; fine-tuned = the trained adapter hot-loaded
with ``/v1/load_lora_adapter``; scaled λ and null views = adapter directories
sway writes (B × λ; null weights by the HF backend's own construction code and
seeds) and hot-loads. At most ``max_loras`` sway adapters are resident: the least
recently used is unloaded first. ``close()`` (also on a failed start) unloads
every adapter sway loaded and deletes what it wrote.

A server is trusted only after :mod:`dlm_sway.backends.vllm_parity` passes.
Next-token distributions are top-k + tail (vLLM returns at most
``--max-logprobs``): this backend does not claim ``FullDistributions``.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import tempfile
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dlm_sway.backends.instrumentation import BackendStats, Instrumentation
from dlm_sway.backends.vllm_client import ServerError, VLLMClient
from dlm_sway.backends.vllm_options import VLLMOptions, parse_options
from dlm_sway.backends.vllm_views import VLLMScorer, VLLMView
from dlm_sway.core.errors import BackendLoadError, ViewError
from dlm_sway.core.result import HealthCheck
from dlm_sway.core.scoring import NULL_CONSTRUCTIONS, NullConstruction, ScoringModel, TokenDist

if TYPE_CHECKING:
    import httpx

    from dlm_sway.backends.vllm_adapters import FileSlot
    from dlm_sway.backends.vllm_parity import ParityReport

PREFLIGHT_PROMPT = "The quick brown fox"


class VLLMDifferentialBackend:
    """Differential, scalable, constructed-null backend over a vLLM server."""

    safe_for_concurrent_views = False
    null_constructions: tuple[NullConstruction, ...] = NULL_CONSTRUCTIONS

    def __init__(
        self,
        base: str,
        adapter: str | Path,
        *,
        options: VLLMOptions,
        transport: httpx.AsyncBaseTransport | None = None,
        cache_size: int = 4096,
    ) -> None:
        from dlm_sway.backends import vllm_adapters
        from dlm_sway.backends.hf_load import inspect_adapter

        self.options = options
        self.base_model = base
        self._info = inspect_adapter(adapter)
        if self._info.config.get("use_dora"):
            raise BackendLoadError(
                f"adapter {self._info.path} is a DoRA adapter (use_dora: true); vLLM serves "
                "plain LoRA only. Use kind: hf for DoRA adapters"
            )
        self._local_base = options.local_base or (base if Path(base).is_dir() else None)
        if self._local_base is not None:
            from dlm_sway.backends.builtin_models import resolve_base

            self._local_base = resolve_base(self._local_base)
        order = vllm_adapters.module_order(self._local_base) if self._local_base else None
        self._load_health: tuple[HealthCheck, ...] = ()
        if order is None:
            self._load_health = (
                HealthCheck(
                    "warning",
                    "vllm_null_order",
                    "no local copy of the base model: null adapters are drawn in natural "
                    "module-name order, so they are valid nulls but not the HF backend's "
                    "exact draws for the same seeds",
                    "set models.ft.options.local_base to a local copy of the served model",
                ),
            )
        self._slots: list[FileSlot] = vllm_adapters.read_slots(self._info, order)
        vocab = options.vocab_size or (
            vllm_adapters.vocab_size_of(self._local_base) if self._local_base else None
        )
        if vocab is None:
            raise BackendLoadError(
                "the vllm backend needs the model's vocabulary size for top-k tails: set "
                "models.ft.options.local_base (a local copy of the model) or options.vocab_size"
            )
        self._tag = uuid.uuid4().hex[:8]
        self._own_dir = options.adapter_dir is None
        self._dir = Path(options.adapter_dir or tempfile.mkdtemp(prefix="sway-vllm-"))
        self._resident: OrderedDict[str, Path] = OrderedDict()
        self._written: set[Path] = set()
        self._instr = Instrumentation(cache_size)
        self._client = VLLMClient(
            options.url,
            api_key=options.api_key(),
            max_in_flight=options.max_in_flight,
            timeout_s=options.timeout_s,
            retries=options.retries,
            transport=transport,
        )
        self._active: str | None = None
        self._token: object | None = None
        self.parity: ParityReport | None = None
        try:
            self.server_version, self._max_model_len = self._identify()
            self._scorer = VLLMScorer(
                self._client,
                base_model=base,
                vocab_size=vocab,
                max_logprobs=options.max_logprobs,
                prompt_logprobs_in_flight=options.prompt_logprobs_in_flight,
                instrumentation=self._instr,
            )
            if options.parity:
                from dlm_sway.backends.vllm_parity import check_parity

                self.parity = check_parity(self)
        except BaseException:
            self.close()
            raise

    # ------------------------------------------------------------------ server

    def _identify(self) -> tuple[str, int | None]:
        """Server version and the base model's context length; the base must be served."""
        version = self._client.get("/version")
        if not isinstance(version, dict) or not isinstance(version.get("version"), str):
            raise ServerError(f"{self.options.url}/version did not return a version: {version}")
        models = self._client.get("/v1/models")
        data = models.get("data") if isinstance(models, dict) else None
        if not isinstance(data, list):
            raise ServerError(f"{self.options.url}/v1/models did not list models: {models}")
        cards = {m.get("id"): m for m in data if isinstance(m, dict)}
        if self.base_model not in cards:
            raise BackendLoadError(
                f"the vLLM server at {self.options.url} does not serve {self.base_model!r} "
                f"(it serves {sorted(str(k) for k in cards)}); set models.ft.base to one of them"
            )
        limit = cards[self.base_model].get("max_model_len")
        return str(version["version"]), limit if isinstance(limit, int) else None

    def _server_path(self, local: Path) -> str:
        root = self.options.server_adapter_root
        if root is None:
            return str(local)
        return str(Path(root) / local.relative_to(self._dir))

    def _adapter(self, name: str, write: Callable[[Path], Path] | None) -> str:
        """Make adapter ``name`` resident (writing it first if needed); returns ``name``."""
        if name in self._resident:
            self._resident.move_to_end(name)
            return name
        while len(self._resident) >= self.options.max_loras:
            self._unload(next(iter(self._resident)))
        if write is None:  # the trained adapter, read in place unless the server is elsewhere
            if self.options.server_adapter_root is None:
                path = self._info.path
            else:
                from dlm_sway.backends.vllm_adapters import copy_adapter

                path = copy_adapter(self._info, self._dir / name)
                self._written.add(path)
        else:
            path = write(self._dir / name)
            self._written.add(path)
        where = str(path) if path == self._info.path else self._server_path(path)
        body = {"lora_name": name, "lora_path": where}
        self._client.post("/v1/load_lora_adapter", body, expect_json=False)
        self._resident[name] = path
        return name

    def _unload(self, name: str) -> None:
        path = self._resident.pop(name)
        try:
            self._client.post("/v1/unload_lora_adapter", {"lora_name": name}, expect_json=False)
        finally:
            if path in self._written:
                shutil.rmtree(path, ignore_errors=True)
                self._written.discard(path)

    # ------------------------------------------------------------------ views

    @contextmanager
    def _claim(self, view_id: str, cache_ns: str, resolve: Callable[[], str]) -> Iterator[VLLMView]:
        if self._active is not None:
            raise ViewError(
                f"cannot open view {view_id!r} while view {self._active!r} is active: exit "
                "the open view first"
            )
        token = object()
        self._active, self._token = view_id, token
        try:
            yield VLLMView(self._scorer, view_id, cache_ns, resolve, lambda: self._token is token)
        finally:
            self._active, self._token = None, None

    def _ft_name(self) -> str:
        return self._adapter(f"sway-{self._tag}-ft", None)

    def as_base(self) -> AbstractContextManager[ScoringModel]:
        return self._claim("base", "base", lambda: self.base_model)

    def as_finetuned(self) -> AbstractContextManager[ScoringModel]:
        return self._claim("ft", "ft", self._ft_name)

    def as_scaled_adapter(self, lam: float) -> AbstractContextManager[ScoringModel]:
        """The trained adapter with B × λ, written and hot-loaded on first use."""
        if not math.isfinite(lam):
            raise ValueError(f"lam must be finite, got {lam!r}")
        lam = float(lam)
        if lam == 1.0:
            return self._claim("scaled_1", "scaled_1.0", self._ft_name)
        from dlm_sway.backends import vllm_adapters as va

        name = f"sway-{self._tag}-scaled-{hashlib.sha1(repr(lam).encode()).hexdigest()[:10]}"

        def resolve() -> str:
            return self._adapter(
                name, lambda d: va.write_adapter(self._info, d, va.scaled_tensors(self._slots, lam))
            )

        return self._claim(f"scaled_{lam:g}", f"scaled_{lam!r}", resolve)

    def as_null_adapter(
        self,
        seed: int,
        *,
        init_scale: float = 0.02,
        rank_scale: float = 1.0,
        construction: NullConstruction = "init_scale",
    ) -> AbstractContextManager[ScoringModel]:
        """A null adapter directory drawn exactly as the HF backend draws its null view."""
        from dlm_sway.backends import hf_lora
        from dlm_sway.backends import vllm_adapters as va

        weights = hf_lora.null_weights(construction, init_scale=init_scale, rank_scale=rank_scale)
        tag = {"init_scale": "", "norm_matched": "_nm", "permuted": "_perm"}[construction]
        view_id = f"null{tag}_{seed}_s{init_scale:g}_r{rank_scale:g}"
        cache_ns = f"null{tag}_{seed}_s{init_scale!r}_r{rank_scale!r}"
        name = f"sway-{self._tag}-{hashlib.sha1(cache_ns.encode()).hexdigest()[:12]}"

        def resolve() -> str:
            return self._adapter(
                name,
                lambda d: va.write_adapter(
                    self._info, d, va.null_tensors(self._slots, int(seed), weights)
                ),
            )

        return self._claim(view_id, cache_ns, resolve)

    # ------------------------------------------------------------------ checks

    def load_health(self) -> tuple[HealthCheck, ...]:
        return self._load_health

    def max_context_tokens(self) -> int | None:
        return self._max_model_len

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        return [len(ids) for ids in self._scorer.encode(list(texts))]

    def preflight_finite_check(self) -> tuple[bool, str]:
        """One uncached request per view on a fixed prompt; NaN/inf means broken weights."""
        for opener, label in ((self.as_base, "base"), (self.as_finetuned, "fine-tuned")):
            with opener() as view:
                assert isinstance(view, VLLMView)
                try:
                    model = view.model_name()
                    dist = self._scorer.next_token_dists(model, [PREFLIGHT_PROMPT], 8)[0]
                except ViewError as exc:
                    return False, f"{label} view: the vLLM server failed the preflight: {exc}"
            if not all(math.isfinite(float(x)) for x in dist.logprobs):
                return False, (
                    f"{label} view: the vLLM server returned non-finite log-probs on the "
                    f"preflight prompt (adapter: {self._info.path}); no result would be meaningful"
                )
        return True, "base and fine-tuned views give finite log-probs"

    def base_layout_pairs(
        self, prompts: Sequence[str], top_k: int
    ) -> list[tuple[TokenDist, TokenDist]]:
        """Base dists sent all at once (server-side batching) and one at a time, uncached."""
        prompts = list(prompts)
        together = self._scorer.next_token_dists(self.base_model, prompts, top_k)
        alone = [
            self._scorer.next_token_dists(self.base_model, [p], top_k, in_flight=1)[0]
            for p in prompts
        ]
        return list(zip(together, alone, strict=True))

    def cache_identity(self) -> str:
        """Server (url, version), served model and the adapter's content and config."""
        config = json.dumps(self._info.config, sort_keys=True, default=str)
        config_hash = hashlib.sha256(config.encode("utf-8")).hexdigest()[:12]
        return (
            f"vllm:{self.options.url}:{self.server_version}:{self.base_model}:"
            f"{self._info.weights_sha256[:16]}:{config_hash}"
        )

    def adapter_norms(self) -> dict[str, float]:
        from dlm_sway.backends.hf_lora import delta_norm

        return {s.name: delta_norm(s.a, s.b, s.scaling) for s in self._slots}

    @property
    def stats(self) -> BackendStats:
        return self._instr.stats

    @property
    def scorer(self) -> VLLMScorer:
        return self._scorer

    @property
    def adapter_path(self) -> Path:
        return self._info.path

    @property
    def local_base(self) -> str | None:
        return self._local_base

    @property
    def requests_sent(self) -> int:
        return self._client.requests_sent

    @property
    def resident_adapters(self) -> list[str]:
        return list(self._resident)

    # ------------------------------------------------------------------ lifecycle

    def close(self) -> None:
        """Unload every adapter sway loaded, delete what it wrote; safe to call twice.

        An unreachable server cannot be asked to unload: the local files still go.
        """
        errors: list[str] = []
        for name in list(getattr(self, "_resident", {})):
            try:
                self._unload(name)
            except ViewError as exc:
                errors.append(str(exc))
                self._resident.clear()
                break
        for path in list(getattr(self, "_written", ())):
            shutil.rmtree(path, ignore_errors=True)
        if getattr(self, "_own_dir", False):
            shutil.rmtree(self._dir, ignore_errors=True)
        client = getattr(self, "_client", None)
        if client is not None:
            client.close()
        self._closed_errors = errors

    def __enter__(self) -> VLLMDifferentialBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"VLLMDifferentialBackend(url={self.options.url!r}, base={self.base_model!r}, "
            f"adapter={str(self._info.path)!r})"
        )


def build(base: str, adapter: str | None = None, **options: Any) -> VLLMDifferentialBackend:
    """Registry factory: ``models.ft`` → backend (options validated first)."""
    if not adapter:
        from dlm_sway.core.errors import SpecValidationError

        raise SpecValidationError(
            "the vllm backend needs the local PEFT adapter directory it hot-loads",
            source="models.ft.adapter",
        )
    return VLLMDifferentialBackend(base, adapter, options=parse_options(options))


__all__ = ["VLLMDifferentialBackend", "build"]
