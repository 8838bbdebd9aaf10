"""Hugging Face transformers + PEFT backend: one loaded model, many views.

The base weights load once with the LoRA adapter attached; views differ only
in adapter state (disabled, enabled, scalings × λ, A/B swapped for seeded
noise). DoRA modules and ``modules_to_save`` modules are not an additive LoRA
term: their scaled and null views are weight-space views (:mod:`hf_weights`),
W₀ + λ·(W − W₀) and W₀ + a random direction of the same per-tensor norm. Every
view change is undone in a ``finally``, so the model is always back to the
trained adapter when no view is open. Heavy imports happen in the constructor
so importing this module (and ``sway --help``) stays instant.
"""

from __future__ import annotations

import functools
import gc
import hashlib
import json
import math
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from dlm_sway.backends.instrumentation import BackendStats, Instrumentation
from dlm_sway.core.errors import BackendLoadError, BackendNotAvailableError, ViewError
from dlm_sway.core.result import HealthCheck
from dlm_sway.core.scoring import (
    NULL_CONSTRUCTIONS,
    Conversation,
    Generation,
    GenerationSettings,
    NullConstruction,
    NullDraw,
    ScoringModel,
    SweepMember,
    TokenDist,
    prompt_cache_key,
)

if TYPE_CHECKING:
    import torch
    from peft import PeftModel
    from transformers import PreTrainedTokenizerBase

    from dlm_sway.backends.hf_lora import NullWeights
    from dlm_sway.backends.hf_mixed import Factors, Group
    from dlm_sway.backends.hf_sweep import Sweep
    from dlm_sway.backends.hf_views import HFScorer, HFView
    from dlm_sway.backends.hf_weights import WeightSlot

PREFLIGHT_PROMPT = "The quick brown fox"
#: Memory for null LoRA factors kept between opens of the same null (a few MB per null
#: for a small adapter; larger adapters are redrawn on each open instead).
NULL_DRAW_CACHE_BYTES = 256 * 2**20
T = TypeVar("T")


def require_hf_stack() -> None:
    """Fail with an install hint (not an ImportError trace) when the hf extra is missing."""
    try:
        import peft  # noqa: F401
        import torch  # noqa: F401
        import transformers  # noqa: F401
    except ImportError as exc:
        raise BackendNotAvailableError("hf", extra="hf", hint=str(exc)) from exc


class HFDifferentialBackend:
    """Differential backend over a transformers causal LM with a PEFT LoRA adapter.

    Implements ``DifferentialBackend``, ``ScalableDifferentialBackend``,
    ``NullCalibratedBackend``, ``PreflightCheckable``, ``ContextWindow`` and
    ``LoadDiagnostics``. Views share one set of weights, so only one may be
    open at a time.

    An adapter that only partly loads (file tensors peft ignored, or attached
    modules with no tensor) is a :class:`BackendLoadError`, unless
    ``allow_partial_adapter`` is set: then it loads and reports a health error.
    """

    safe_for_concurrent_views = False

    def __init__(
        self,
        base: str,
        adapter: str | Path,
        *,
        dtype: str = "auto",
        device: str = "auto",
        gguf_file: str | None = None,
        trust_remote_code: bool = False,
        batch_size: int = 16,
        cache_size: int = 4096,
        allow_partial_adapter: bool = False,
    ) -> None:
        require_hf_stack()
        from dlm_sway.backends import hf_load
        from dlm_sway.backends.hf_views import HFScorer

        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        # Cheapest checks first: nothing heavy loads before device, base and adapter files pass.
        torch_device = hf_load.resolve_device(device)
        location = hf_load.resolve_base(base, gguf_file)
        adapter_info = hf_load.inspect_adapter(adapter)
        torch_dtype = hf_load.resolve_dtype(dtype, torch_device)

        tokenizer = hf_load.load_tokenizer(
            location, adapter_info, trust_remote_code=trust_remote_code
        )
        model = hf_load.load_model(
            location,
            adapter_info,
            dtype=torch_dtype,
            device=torch_device,
            trust_remote_code=trust_remote_code,
            base_tokenizer=None if hf_load.ships_tokenizer(adapter_info) else tokenizer,
        )
        problem = hf_load.coverage_problem(
            *hf_load.adapter_coverage(model, adapter_info), adapter_info
        )
        if problem is not None and not allow_partial_adapter:
            raise BackendLoadError(
                f"{problem} (to score it anyway, with a health error on the result, set "
                "models.ft.options: {allow_partial_adapter: true})"
            )
        self._load_health: tuple[HealthCheck, ...] = ()
        if problem is not None:
            self._load_health = (
                HealthCheck(
                    "error",
                    "adapter_partial_load",
                    problem,
                    "load the adapter on the base it was trained on, or re-save it; "
                    "verdicts on a partly loaded adapter do not describe the trained one",
                ),
            )
        #: bf16/fp16 on CPU: its measured drift from fp32 is in every report, never silent.
        self._dtype_health = hf_load.floor_health(hf_load.dtype_floor(model))
        self._context_limit = hf_load.context_limit(model, tokenizer)
        self.base_id = location.source + (f"/{location.gguf_file}" if location.gguf_file else "")
        self.adapter_path = adapter_info.path
        self.dtype = hf_load.dtype_name(torch_dtype)
        self.device = str(torch_device)
        self._adapter_sha256 = adapter_info.weights_sha256
        self._adapter_info = adapter_info
        self._instr = Instrumentation(cache_size)
        self._model: PeftModel | None = model
        self._scorer: HFScorer | None = HFScorer(
            model,
            tokenizer,
            device=torch_device,
            batch_size=batch_size,
            instrumentation=self._instr,
        )
        self._read_adapter_state(model)
        self._allow_partial = allow_partial_adapter
        #: Base-only results that bypass the forward cache (noise floor, preflight), kept
        #: across adapter swaps: the base weights never change.
        self._base_memo: dict[tuple[object, ...], Any] = {}
        self._active: str | None = None
        self._token: object | None = None

    def _read_adapter_state(self, model: PeftModel) -> None:
        """Read at load and after each swap: views later rewrite the live weights and scalings."""
        from dlm_sway.backends import hf_adapter_weights, hf_lora, hf_weights

        self._weight_slots: list[WeightSlot] = [
            *hf_adapter_weights.dora_slots(model),
            *hf_adapter_weights.saved_module_slots(model),
        ]
        self._plain_slots = hf_lora.plain_lora_slots(model)
        self._scalings = [slot.scaling for slot in self._plain_slots]
        self._switches = hf_lora.adapter_switches(model)
        self._sweep: Sweep | None = None
        #: Set when a batched null generation failed on this model (then never retried).
        self._unmixable = False
        self._draw_memo: OrderedDict[str, list[tuple[torch.Tensor, torch.Tensor]]] = OrderedDict()
        self._norms = {
            **hf_lora.adapter_norms(model),
            **hf_weights.slot_norms(self._weight_slots),
        }
        self._summary = hf_lora.adapter_summary(model)
        self._covered = tuple(hf_adapter_weights.covered_prefixes(model))
        #: ``init_scale`` draws LoRA factors: meaningless for a weight-space slot.
        self.null_constructions: tuple[NullConstruction, ...] = (
            hf_weights.WEIGHT_NULL_CONSTRUCTIONS if self._weight_slots else NULL_CONSTRUCTIONS
        )

    def swap_adapter(self, path: str | Path) -> None:
        """Replace the trained adapter in place, keeping the base (``AdapterSwappable``).

        Adapter views' cached results are dropped, the base view's kept; the cache
        identity follows the new adapter's content hash (see :mod:`hf_swap`).
        """
        from dlm_sway.backends import hf_swap
        from dlm_sway.backends.base_cache import BASE_NS

        if self._active is not None:
            raise ViewError(f"cannot swap the adapter while view {self._active!r} is open")
        if getattr(self, "_sweep", None) is not None:
            raise ViewError("cannot swap the adapter inside a sweep (it shares the old one's rows)")
        info, problem = hf_swap.swap(
            self.peft_model, self._adapter_info, path, allow_partial=self._allow_partial
        )
        self._read_adapter_state(self.peft_model)
        self.adapter_path = info.path
        self._adapter_sha256 = info.weights_sha256
        self._adapter_info = info
        self._load_health = (
            ()
            if problem is None
            else (
                HealthCheck(
                    "error",
                    "adapter_partial_load",
                    problem,
                    "load the adapter on the base it was trained on, or re-save it; "
                    "verdicts on a partly loaded adapter do not describe the trained one",
                ),
            )
        )
        scorer = self._live_scorer()
        for instr in (self._instr, scorer.full_instr):
            instr.cache.drop_views(lambda ns: ns == BASE_NS)

    # ------------------------------------------------------------------ state

    @property
    def stats(self) -> BackendStats:
        return self._instr.stats

    @property
    def instrumentation(self) -> Instrumentation:
        return self._instr

    @property
    def peft_model(self) -> PeftModel:
        """The live model, for inspection; mutate it only through views."""
        if self._model is None:
            raise ViewError("the HF backend is closed")
        return self._model

    @property
    def tokenizer(self) -> PreTrainedTokenizerBase:
        return self._live_scorer().tokenizer

    @property
    def batch_size(self) -> int:
        return self._live_scorer().batch_size

    def _live_scorer(self) -> HFScorer:
        if self._scorer is None:
            raise ViewError("the HF backend is closed; build a new one to keep scoring")
        return self._scorer

    # ------------------------------------------------------------------ views

    def _scorer_for(self, view_id: str) -> HFScorer:
        """The scorer that runs ``view_id`` (one model here; the two-model backend has two)."""
        return self._live_scorer()

    @contextmanager
    def _claim(self, view_id: str, cache_ns: str) -> Iterator[HFView]:
        """Mark a view active (refusing a second one) and release it whatever happens."""
        from dlm_sway.backends.hf_views import HFView

        scorer = self._scorer_for(view_id)
        if self._active is not None:
            raise ViewError(
                f"cannot open view {view_id!r} while view {self._active!r} is active: views "
                "share one set of weights; exit the open view first"
            )
        token = object()
        self._active, self._token = view_id, token
        sweep = getattr(self, "_sweep", None)
        try:
            yield HFView(scorer, view_id, cache_ns, lambda: self._token is token, sweep)
        finally:
            self._active, self._token = None, None

    @contextmanager
    def _base_view(self) -> Iterator[ScoringModel]:
        from dlm_sway.backends import hf_lora

        with self._claim("base", "base") as view, hf_lora.adapters_off(self._switches):
            yield view

    @contextmanager
    def _ft_view(self) -> Iterator[ScoringModel]:
        with self._claim("ft", "ft") as view:
            yield view

    def as_base(self) -> AbstractContextManager[ScoringModel]:
        """Adapter disabled through PEFT's toggle: exactly the base model's forward."""
        return self._base_view()

    def as_finetuned(self) -> AbstractContextManager[ScoringModel]:
        return self._ft_view()

    def as_scaled_adapter(self, lam: float) -> AbstractContextManager[ScoringModel]:
        """LoRA term × λ (0 = base, 1 = fine-tune); scalings restored on exit.

        DoRA and ``modules_to_save`` modules interpolate in weight space,
        W₀ + λ·(W − W₀): the same straight line a LoRA's λ draws.
        """
        if not math.isfinite(lam):
            raise ValueError(f"lam must be finite, got {lam!r}")
        return self._scaled_view(float(lam))

    @contextmanager
    def _scaled_view(self, lam: float) -> Iterator[ScoringModel]:
        from dlm_sway.backends import hf_adapter_weights, hf_lora, hf_weights

        with (
            self._claim(f"scaled_{lam:g}", f"scaled_{lam!r}") as view,
            hf_lora.scaled_lora(self.peft_model, lam),
            hf_adapter_weights.dora_off(self.peft_model),
            hf_weights.weight_view(self._weight_slots, hf_weights.interpolated(lam), memoize=True),
        ):
            yield view

    def as_null_adapter(
        self,
        seed: int,
        *,
        init_scale: float = 0.02,
        rank_scale: float = 1.0,
        construction: NullConstruction = "init_scale",
    ) -> AbstractContextManager[ScoringModel]:
        """The adapter's structure with seeded random weights.

        ``init_scale``: A, B ~ N(0, (init_scale·√rank_scale)²) (the reference null);
        ``norm_matched``: random A, B rescaled per module to the trained ‖scaling·B·A‖_F;
        ``permuted``: the trained B rows / A columns shuffled. DoRA and
        ``modules_to_save`` tensors get the weight-space null of the same name
        (W₀ + a random direction with ‖W − W₀‖_F, or D shuffled); they have no
        ``init_scale`` null, so such an adapter refuses it.
        """
        draw = NullDraw(int(seed), init_scale, rank_scale, construction)
        view_id, cache_ns, weights = self._named_null(draw)
        return self._null_view(
            draw.seed,
            weights,
            view_id,
            cache_ns,
            "permuted" if construction == "permuted" else "norm_matched",
            rank_scale,
        )

    def _named_null(self, draw: NullDraw) -> tuple[str, str, NullWeights]:
        """View id, cache namespace and LoRA construction of one seeded null."""
        from dlm_sway.backends import hf_lora

        construction = draw.construction
        if construction not in self.null_constructions:
            raise ViewError(
                f"null construction {construction!r} is not defined for this adapter: its DoRA "
                "or modules_to_save weights have no LoRA factors to draw at a fixed std; use "
                f"null: {' or '.join(self.null_constructions)}"
            )
        init, rank = draw.init_scale, draw.rank_scale
        weights = hf_lora.null_weights(construction, init_scale=init, rank_scale=rank)
        tag = {"init_scale": "", "norm_matched": "_nm", "permuted": "_perm"}[construction]
        return (
            f"null{tag}_{draw.seed}_s{init:g}_r{rank:g}",
            f"null{tag}_{draw.seed}_s{init!r}_r{rank!r}",
            weights,
        )

    def prefetch_null_generations(
        self,
        nulls: Sequence[NullDraw],
        prompts: Sequence[str | Conversation],
        settings: GenerationSettings,
    ) -> list[list[Generation]] | None:
        """Generations of ``prompts`` under every null in ``nulls``, those not cached yet
        decoded in one mixed batch (:mod:`.hf_null_generate`) and stored in each null
        view's cache. None (nothing done) for DoRA or ``modules_to_save`` adapters, when
        only one null lacks them, or when they would not fit the cache until asked for."""
        from dlm_sway.backends import hf_mixed, hf_null_generate
        from dlm_sway.backends.gen_batches import generation_op

        if len(nulls) < 2 or not prompts or self._weight_slots or self._unmixable:
            return None
        if not hf_mixed.mixable(self._plain_slots):
            return None
        if hf_mixed.stack_bytes(self._plain_slots, len(nulls)) > hf_mixed.MAX_STACK_BYTES:
            return None
        scorer = self._live_scorer()
        cache = scorer.instr.cache
        op, keys = generation_op(settings), [prompt_cache_key(p) for p in prompts]
        named = [self._named_null(n) for n in nulls]
        todo = [
            i
            for i, (_, ns, _) in enumerate(named)
            if not all(cache.key(op, ns, k, 0) in cache for k in keys)
        ]
        if len(todo) == 1 or len(todo) * len(keys) > cache.maxsize // 2:
            return None
        fresh: dict[int, list[Generation]] = {}
        if todo:
            draws = [self._null_draws(named[i][1], nulls[i].seed, named[i][2]) for i in todo]
            try:
                with self._claim("null_prefetch", "null_prefetch"):
                    texts = hf_null_generate.generate_mixed(
                        self._plain_slots,
                        draws,
                        self._scalings,
                        scorer.generator(),
                        prompts,
                        settings,
                    )
            except RuntimeError:
                self._unmixable = True  # this model's LoRA inputs: not again in this run
                raise
            fresh = dict(zip(todo, texts, strict=True))
        return [
            scorer.instr.cached_batch(op, ns, keys, 0, functools.partial(_pick, fresh.get(i, [])))
            for i, (_, ns, _) in enumerate(named)
        ]

    @contextmanager
    def sweep(self, members: Sequence[SweepMember]) -> Iterator[None]:
        """Members' identical requests share forwards while open (``ScoringSweep``,
        :mod:`.hf_sweep`). Plain LoRA only; DoRA and ``modules_to_save`` views, and
        more views than :data:`.hf_mixed.MAX_STACK_BYTES` holds, score as usual. The
        innermost block names who asks: one with fewer than two views pauses any
        enclosing sweep (rewordings only the base writes are not decoded for K nulls)."""
        from dlm_sway.backends import hf_mixed
        from dlm_sway.backends.hf_sweep import Sweep

        if self._active is not None:
            raise ViewError(f"open a sweep outside views (view {self._active!r} is open)")
        slots = self._plain_slots
        plain = not (self._weight_slots or self._unmixable) and hf_mixed.mixable(slots)
        fits = hf_mixed.stack_bytes(slots, len(members)) <= hf_mixed.MAX_STACK_BYTES
        resolved = self._sweep_members(members) if plain and fits else None
        outer = self._sweep
        if resolved is None:
            self._sweep = None
            try:
                yield
            finally:
                self._sweep = outer
            return
        self._sweep = Sweep(
            self._live_scorer(), self._plain_slots, self._scalings, resolved[0], resolved[1]
        )
        try:
            yield
        finally:
            self._sweep = outer

    def _sweep_members(
        self, members: Sequence[SweepMember]
    ) -> tuple[list[tuple[str, Group]], list[Callable[[], Factors]]] | None:
        """Each distinct member's cache namespace and LoRA group, and the factor blocks
        (drawn when first mixed); None when fewer than two distinct views remain."""
        from dlm_sway.backends.hf_mixed import Group

        blocks: list[Callable[[], Factors]] = []
        trained: list[int] = []  # the trained factors' block, once some member needs it

        def ft_block() -> int:
            if not trained:
                frozen = [(s.a.detach().clone(), s.b.detach().clone()) for s in self._plain_slots]
                blocks.append(lambda: frozen)
                trained.append(len(blocks) - 1)
            return trained[0]

        out: dict[str, Group] = {}
        for m in members:
            if m.kind == "base":
                out.setdefault("base", Group(None, 0.0))
            elif m.kind == "finetuned":
                out.setdefault("ft", Group(ft_block()))
            elif m.kind == "scaled":
                out.setdefault(f"scaled_{float(m.lam)!r}", Group(ft_block(), float(m.lam)))
            elif m.null is not None and m.null.construction in self.null_constructions:
                _, ns, weights = self._named_null(m.null)
                if ns not in out:
                    seed = m.null.seed
                    blocks.append(functools.partial(self._null_draws, ns, seed, weights))
                    out[ns] = Group(len(blocks) - 1)
        return (list(out.items()), blocks) if len(out) >= 2 else None

    def null_view(
        self, seed: int, weights: NullWeights, *, view_id: str, cache_ns: str | None = None
    ) -> AbstractContextManager[ScoringModel]:
        """A null view with a custom per-module weight construction (e.g. norm-matched).

        ``cache_ns`` (default ``view_id``) must identify ``weights`` and ``seed``
        exactly: results are memoised under it for the backend's lifetime. DoRA and
        ``modules_to_save`` tensors get norm-matched weight-space nulls.
        """
        return self._null_view(
            int(seed), weights, view_id, cache_ns or view_id, "norm_matched", 1.0
        )

    @contextmanager
    def _null_view(
        self,
        seed: int,
        weights: NullWeights,
        view_id: str,
        cache_ns: str,
        weight_construction: str,
        rank_scale: float,
    ) -> Iterator[ScoringModel]:
        from dlm_sway.backends import hf_adapter_weights, hf_lora, hf_weights

        null = hf_weights.null_weight(seed, weight_construction, rank_scale, self._norms)
        with (
            self._claim(view_id, cache_ns) as view,
            hf_lora.swapped_lora(self._plain_slots, self._null_draws(cache_ns, seed, weights)),
            hf_adapter_weights.dora_off(self.peft_model),
            hf_weights.weight_view(self._weight_slots, null, memoize=True),
        ):
            yield view

    def _null_draws(
        self, cache_ns: str, seed: int, weights: NullWeights
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """A null's LoRA factors, drawn once per run: calibration opens each null once per
        calibrated entry, and a norm-matched draw costs more than the swap itself.
        ``cache_ns`` identifies seed and construction exactly; kept within a byte budget."""
        from dlm_sway.backends import hf_lora

        memo = self._draw_memo
        if cache_ns in memo:
            memo.move_to_end(cache_ns)
            return list(memo[cache_ns])
        draws = hf_lora.draw_null(self._plain_slots, seed, weights)
        size = sum(a.nbytes + b.nbytes for a, b in draws)
        if size <= NULL_DRAW_CACHE_BYTES:
            memo[cache_ns] = draws
            while sum(a.nbytes + b.nbytes for d in memo.values() for a, b in d) > (
                NULL_DRAW_CACHE_BYTES
            ):
                memo.popitem(last=False)
        return draws

    def weight_slots(self) -> list[WeightSlot]:
        """The DoRA and ``modules_to_save`` tensors whose views are built in weight space."""
        return list(self._weight_slots)

    def _ft_label(self) -> str:
        return f"adapter: {self.adapter_path}"

    # ------------------------------------------------------------------ checks

    def load_health(self) -> tuple[HealthCheck, ...]:
        """Problems found while loading that were allowed through (partial adapter), and
        the half-precision floor when the base runs in bf16/fp16 on CPU."""
        return self._load_health + getattr(self, "_dtype_health", ())

    def max_context_tokens(self) -> int | None:
        """Positions the model was built for (config first, else the tokenizer's limit)."""
        return self._context_limit

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        """Tokens each text becomes when scored (special tokens included), in one call."""
        items = list(texts)
        if not items:
            return []
        ids = self.tokenizer(items, verbose=False)["input_ids"]
        return [len(row) for row in ids]

    def preflight_finite_check(self) -> tuple[bool, str]:
        """One uncached forward per view on a fixed prompt; NaN/inf means broken weights."""
        for opener, label in ((self.as_base, "base"), (self.as_finetuned, "fine-tuned")):
            scorer = self._scorer_for("base" if label == "base" else "ft")
            with opener():
                try:
                    memo, key = self._base_results(), ("preflight",) if label == "base" else None
                    dist = (
                        memo[key]
                        if key in memo
                        else scorer.next_token_dists([PREFLIGHT_PROMPT], 8, batched=False)[0]
                    )
                    if key is not None:
                        memo[key] = dist
                except (RuntimeError, ValueError) as exc:
                    return (
                        False,
                        f"{label} view: forward pass failed on the preflight prompt: {exc}",
                    )
            tail_bad = dist.tail_logprob is not None and not math.isfinite(dist.tail_logprob)
            if not np.all(np.isfinite(dist.logprobs)) or tail_bad:
                culprit = "adapter" if label == "fine-tuned" else "base model"
                return False, (
                    f"{label} view produced non-finite log-probs (NaN/inf) on the preflight "
                    f"prompt: the {culprit} weights likely contain NaN or inf values "
                    f"({self._ft_label()}). Re-export or retrain it; "
                    "no probe results would be meaningful"
                )
        return True, "base and fine-tuned views give finite log-probs"

    def base_layout_pairs(
        self, prompts: Sequence[str], top_k: int
    ) -> list[tuple[TokenDist, TokenDist]]:
        """Base dists from padded batches and from one prompt per forward, outside the
        views' caches (both layouts must really run), but in the disk base cache: they
        are base-view results, so a second run on the same base reads them back.

        Whole-vocabulary dists (``top_k`` is moot), as the divergence probes see them.
        """
        from dlm_sway.backends import base_cache

        memo, key = self._base_results(), ("layout_pairs", tuple(prompts))
        if key in memo:  # the base never changes, not even across adapter swaps
            return list(memo[key])
        scorer, prompts = self._live_scorer(), list(prompts)
        disk = base_cache.for_scorer(scorer)

        def stored(
            op: str, requests: list[str], compute: Callable[[list[int]], list[TokenDist]]
        ) -> list[TokenDist]:
            return (
                compute(list(range(len(requests))))
                if disk is None
                else disk.fetch(op, requests, 0, compute)
            )

        # A batched dist depends on its whole batch: the request names batch and size.
        together = [json.dumps([scorer.batch_size, prompts, p]) for p in prompts]
        with self.as_base():
            batched = stored(
                "layout_batched",
                together,
                lambda idx: _pick(scorer.next_token_full(prompts, batched=True), idx),
            )
            single = stored(
                "layout_single",
                prompts,
                lambda idx: [scorer.next_token_full([prompts[i]], batched=False)[0] for i in idx],
            )
        pairs = list(zip(batched, single, strict=True))
        memo[key] = tuple(pairs)
        return pairs

    def _base_results(self) -> dict[tuple[object, ...], Any]:
        """The base-only memo (subclasses that build their own state get one lazily)."""
        if not hasattr(self, "_base_memo"):
            self._base_memo = {}
        return self._base_memo

    def cache_identity(self) -> str:
        """Changes whenever the adapter's weights or config (rank, alpha, targets) change,
        even at the same path: both decide what a null adapter of this adapter is."""
        config = json.dumps(self._adapter_info.config, sort_keys=True, default=str)
        config_hash = hashlib.sha256(config.encode("utf-8")).hexdigest()[:12]
        # DoRA/modules_to_save nulls are weight-space nulls: never reuse stats drawn otherwise.
        scheme = ":ws1" if self._weight_slots else ""
        return f"hf:{self.base_id}:{self._adapter_sha256[:16]}:{config_hash}:{self.dtype}{scheme}"

    def adapter_norms(self) -> dict[str, float]:
        """Per LoRA module, ‖scaling·B·A‖_F of the trained adapter (computed at load)."""
        return dict(self._norms)

    def null_coverage(self) -> list[str]:
        """Adapter tensors a null adapter does not replace. DoRA magnitudes and
        ``modules_to_save`` modules are covered: their nulls are weight-space nulls."""
        from safetensors import safe_open

        path = self._adapter_info.weights_file
        if path.suffix != ".safetensors":
            return []
        with safe_open(str(path), framework="pt") as fh:
            keys = list(fh.keys())
        covered = ("lora_A", "lora_B", "lora_embedding_", "lora_magnitude_vector")
        return [
            k
            for k in keys
            if not any(c in k for c in covered) and not any(p in k for p in self._covered)
        ]

    def adapter_summary(self) -> dict[str, Any]:
        """num_modules, ranks, alphas, target_modules, total_params of the adapter."""
        return dict(self._summary)

    # ------------------------------------------------------------------ lifecycle

    def close(self) -> None:
        """Drop the model and free accelerator memory; safe to call twice."""
        if self._active is not None:
            raise ViewError(f"cannot close the backend while view {self._active!r} is open")
        if self._model is None:
            return
        device = self.device
        self._model = None
        if self._scorer is not None:
            self._scorer.full_instr.cache.clear()
        self._scorer = None
        self._instr.cache.clear()
        gc.collect()
        if device.startswith("cuda"):
            import torch

            torch.cuda.empty_cache()

    def __enter__(self) -> HFDifferentialBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"HFDifferentialBackend(base={self.base_id!r}, adapter={str(self.adapter_path)!r}, "
            f"dtype={self.dtype!r}, device={self.device!r})"
        )


def _pick(values: Sequence[T], idx: list[int]) -> list[T]:
    return [values[i] for i in idx]


__all__ = ["HFDifferentialBackend", "require_hf_stack"]
