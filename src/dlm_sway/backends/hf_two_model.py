"""Full fine-tunes and merged models: two checkpoints, the same views as the HF backend.

``models.ft: {kind: two_model, base: ..., finetuned: ...}``. The base and the
fine-tuned checkpoint (each an HF directory, a ``.gguf`` file, a cached hub id or
``builtin:``) load once each. Views:

- base / fine-tuned: a forward on the base / fine-tuned model as loaded;
- scaled λ: W₀ + λ·(W_ft − W₀) for every tensor that differs (weight-space
  interpolation);
- null (``norm_matched``): W₀ + a seeded random direction with ‖W_ft − W₀‖_F per
  tensor; (``permuted``): W₀ + (W_ft − W₀) with rows and columns shuffled. Tensors
  the fine-tune left unchanged get no noise: the null is restricted to what changed.

Memory: the two checkpoints plus one module's W(view) at a time. The scaled and
null views write nothing: forward hooks on the base model hand each module its
W(view), computed from the two live tensors, for the length of that module's
call (see :mod:`hf_weights`). Interpolating in place instead would need a saved
copy of every touched matrix to restore W₀ bit-exactly, i.e. a third full copy
for a full fine-tune, because W₀ cannot be recovered exactly from
fl(W₀ + λ·D) and W_ft in floating point.
"""

from __future__ import annotations

import gc
import hashlib
import math
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dlm_sway.backends.hf import HFDifferentialBackend, require_hf_stack
from dlm_sway.backends.instrumentation import Instrumentation
from dlm_sway.core.errors import BackendLoadError, ViewError
from dlm_sway.core.scoring import NullConstruction, ScoringModel, SweepMember

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from dlm_sway.backends.hf_load import BaseLocation, DtypeFloor
    from dlm_sway.backends.hf_lora import NullWeights
    from dlm_sway.backends.hf_views import HFScorer
    from dlm_sway.backends.hf_weights import WeightSlot


class TwoModelBackend(HFDifferentialBackend):
    """Differential backend over two full checkpoints of one architecture.

    Implements the same protocols as :class:`HFDifferentialBackend` (scaled and
    constructed null views, preflight, noise floor, context window, norms).
    """

    def __init__(  # noqa: PLR0913 - mirrors the spec's model fields
        self,
        base: str,
        finetuned: str,
        *,
        dtype: str = "auto",
        device: str = "auto",
        trust_remote_code: bool = False,
        batch_size: int = 16,
        cache_size: int = 4096,
    ) -> None:
        require_hf_stack()
        from dlm_sway.backends import hf_load, hf_weights
        from dlm_sway.backends.hf_views import HFScorer

        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        torch_device = hf_load.resolve_device(device)
        base_loc = hf_load.resolve_base(base, None)
        ft_loc = hf_load.resolve_base(finetuned, None)
        torch_dtype = hf_load.resolve_dtype(dtype, torch_device)
        tokenizer = _load_tokenizer(ft_loc, base_loc, trust_remote_code=trust_remote_code)
        base_model, floor = _load_plain(
            base_loc, torch_dtype, torch_device, trust_remote_code, measure_floor=True
        )
        ft_model, _ = _load_plain(ft_loc, torch_dtype, torch_device, trust_remote_code)
        self._weight_slots: list[WeightSlot] = weight_slots(base_model, ft_model)
        self._norms = hf_weights.slot_norms(self._weight_slots)
        self.null_constructions: tuple[NullConstruction, ...] = hf_weights.WEIGHT_NULL_CONSTRUCTIONS
        self._load_health = ()
        #: bf16/fp16 on CPU: the base's measured drift from fp32, in every report.
        self._dtype_health = hf_load.floor_health(floor)
        self._context_limit = _context_limit(base_model, tokenizer)
        self.base_id = _label(base_loc)
        self.finetuned_id = _label(ft_loc)
        self._locations = (base_loc, ft_loc)
        self._hashes: tuple[str, str] | None = None
        self.adapter_path = Path(ft_loc.source)
        self.dtype = hf_load.dtype_name(torch_dtype)
        self.device = str(torch_device)
        self._instr = Instrumentation(cache_size)
        self._model = None  # no PEFT model: views run on the two plain models below
        self._base_model: PreTrainedModel | None = base_model
        self._ft_model: PreTrainedModel | None = ft_model
        self._scorer: HFScorer | None = HFScorer(
            base_model,
            tokenizer,
            device=torch_device,
            batch_size=batch_size,
            instrumentation=self._instr,
        )
        self._ft_scorer: HFScorer | None = HFScorer(
            ft_model,
            tokenizer,
            device=torch_device,
            batch_size=batch_size,
            instrumentation=self._instr,
        )
        self._ft_scorer.full_instr = self._scorer.full_instr  # one full-dist LRU per backend
        total = sum(1 for _ in base_model.parameters())
        self._summary = {
            "kind": "two_model",
            "num_modules": len(self._weight_slots),
            "changed_tensors": len(self._weight_slots),
            "total_tensors": total,
            "changed_params": sum(s.base.numel() for s in self._weight_slots),
        }
        self._active: str | None = None
        self._token: object | None = None

    # ------------------------------------------------------------------ views

    def prefetch_null_generations(self, *_: Any) -> None:
        """No batched null generation: these nulls are built in weight space, one at a time."""
        return

    @contextmanager
    def sweep(self, members: Sequence[SweepMember]) -> Iterator[None]:
        """No shared forwards: the views are two models and weight-space nulls."""
        yield

    @property
    def peft_model(self) -> Any:
        raise ViewError("the two-model backend has no PEFT model: it compares two checkpoints")

    def _scorer_for(self, view_id: str) -> HFScorer:
        if view_id == "ft":
            if self._ft_scorer is None:
                raise ViewError("the two-model backend is closed; build a new one to keep scoring")
            return self._ft_scorer
        return self._live_scorer()

    @contextmanager
    def _base_view(self) -> Iterator[ScoringModel]:
        with self._claim("base", "base") as view:
            yield view

    def as_base(self) -> AbstractContextManager[ScoringModel]:
        """The base checkpoint as loaded."""
        return self._base_view()

    def as_finetuned(self) -> AbstractContextManager[ScoringModel]:
        """The fine-tuned checkpoint as loaded."""
        return self._ft_view()

    @contextmanager
    def _scaled_view(self, lam: float) -> Iterator[ScoringModel]:
        from dlm_sway.backends import hf_weights

        with (
            self._claim(f"scaled_{lam:g}", f"scaled_{lam!r}") as view,
            hf_weights.weight_view(self._weight_slots, hf_weights.interpolated(lam)),
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
        """W₀ + a random change of the fine-tune's per-tensor size (``norm_matched``) or
        its change shuffled (``permuted``). ``init_scale`` (fixed-std LoRA factors) has
        no meaning for a full fine-tune and is refused."""
        if construction not in self.null_constructions:
            raise ViewError(
                f"null construction {construction!r} is not defined for a full fine-tune "
                f"(there are no LoRA factors); use null: {' or '.join(self.null_constructions)}"
            )
        if not math.isfinite(rank_scale) or rank_scale <= 0:
            raise ValueError(f"rank_scale must be a finite number > 0, got {rank_scale!r}")
        tag = "_nm" if construction == "norm_matched" else "_perm"
        return self._weight_null(
            int(seed),
            construction,
            rank_scale,
            f"null{tag}_{seed}_r{rank_scale:g}",
            f"null{tag}_{seed}_r{rank_scale!r}",
        )

    @contextmanager
    def _weight_null(
        self, seed: int, construction: str, rank_scale: float, view_id: str, cache_ns: str
    ) -> Iterator[ScoringModel]:
        from dlm_sway.backends import hf_weights

        null = hf_weights.null_weight(seed, construction, rank_scale, self._norms)
        with (
            self._claim(view_id, cache_ns) as view,
            hf_weights.weight_view(self._weight_slots, null),
        ):
            yield view

    def null_view(
        self, seed: int, weights: NullWeights, *, view_id: str, cache_ns: str | None = None
    ) -> AbstractContextManager[ScoringModel]:
        raise ViewError(
            "custom LoRA-factor nulls do not apply to a full fine-tune; use "
            "as_null_adapter(seed, construction='norm_matched' or 'permuted')"
        )

    def _ft_label(self) -> str:
        return f"fine-tuned checkpoint: {self.finetuned_id}"

    # ------------------------------------------------------------------ checks

    def cache_identity(self) -> str:
        """Content hashes of both checkpoints' weight files (hashed once, on first use)."""
        if self._hashes is None:
            self._hashes = (_content_hash(self._locations[0]), _content_hash(self._locations[1]))
        base, ft = self._hashes
        return f"two_model:{base[:16]}:{ft[:16]}:{self.dtype}"

    def null_coverage(self) -> list[str]:
        """Nothing: every tensor that differs gets a null of its own."""
        return []

    def weight_slots(self) -> list[WeightSlot]:
        """The tensors the fine-tune changed (the only ones views touch)."""
        return list(self._weight_slots)

    # ------------------------------------------------------------------ lifecycle

    def close(self) -> None:
        if self._active is not None:
            raise ViewError(f"cannot close the backend while view {self._active!r} is open")
        if self._base_model is None:
            return
        self._base_model = self._ft_model = None
        self._weight_slots = []
        if self._scorer is not None:
            self._scorer.full_instr.cache.clear()
        self._scorer = self._ft_scorer = None
        self._instr.cache.clear()
        gc.collect()
        if self.device.startswith("cuda"):
            import torch

            torch.cuda.empty_cache()

    def __enter__(self) -> TwoModelBackend:
        return self

    def __repr__(self) -> str:
        return (
            f"TwoModelBackend(base={self.base_id!r}, finetuned={self.finetuned_id!r}, "
            f"dtype={self.dtype!r}, device={self.device!r})"
        )


def weight_slots(base: torch.nn.Module, ft: torch.nn.Module) -> list[WeightSlot]:
    """One slot per tensor the fine-tune changed, grouped by (base tensor, ft tensor).

    Checkpoints of different architectures or sizes are a :class:`BackendLoadError`.
    A weight tied in the base but not in the fine-tune splits into one slot per site.
    """
    import torch

    from dlm_sway.backends.hf_weights import WeightSlot

    base_named = dict(base.named_parameters(remove_duplicate=False))
    ft_named = dict(ft.named_parameters(remove_duplicate=False))
    if set(base_named) != set(ft_named):
        only = sorted(set(base_named) ^ set(ft_named))
        raise BackendLoadError(
            f"the base and fine-tuned checkpoints have different parameters (e.g. {only[0]}): "
            "they are not the same architecture; two_model compares a model with a fine-tune of it"
        )
    groups: dict[tuple[int, int], list[str]] = {}
    for name, param in base_named.items():
        other = ft_named[name]
        if other.shape != param.shape:
            raise BackendLoadError(
                f"parameter {name} is {tuple(param.shape)} in the base but "
                f"{tuple(other.shape)} in the fine-tuned checkpoint (resized vocabulary or "
                "another model size): weight-space views need equal shapes"
            )
        groups.setdefault((id(param), id(other)), []).append(name)
    slots: list[WeightSlot] = []
    with torch.no_grad():
        for names in groups.values():
            w0, w1 = base_named[names[0]], ft_named[names[0]]
            if not w0.is_floating_point() or torch.equal(w0, w1):
                continue
            sites = tuple(_site(base, n) for n in names)

            def delta(a: torch.Tensor = w1, b: torch.Tensor = w0) -> torch.Tensor:
                return a.detach().float() - b.detach().float()

            slots.append(WeightSlot(names[0], sites, w0, delta))
    return slots


def _site(root: torch.nn.Module, name: str) -> tuple[torch.nn.Module, str]:
    module_name, _, pname = name.rpartition(".")
    return root.get_submodule(module_name), pname


def _label(loc: BaseLocation) -> str:
    return loc.source + (f"/{loc.gguf_file}" if loc.gguf_file else "")


def _load_plain(
    loc: BaseLocation,
    dtype: torch.dtype,
    device: torch.device,
    trust_remote_code: bool,
    *,
    measure_floor: bool = False,
) -> tuple[PreTrainedModel, DtypeFloor | None]:
    """One checkpoint, inference only. A half dtype on CPU loads in fp32 and is cast
    weight by weight (fp32 pages handed back); ``measure_floor`` also measures its
    drift from fp32 first, as the adapter backend does for its base."""
    import torch
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    from dlm_sway.backends import hf_load
    from dlm_sway.backends.hf_pages import cast_releasing_pages

    hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    half = hf_load.is_half_on_cpu(dtype, device)
    kwargs: dict[str, Any] = {
        "dtype": torch.float32 if half else dtype,
        "trust_remote_code": trust_remote_code,
        "local_files_only": True,
    }
    if loc.gguf_file is not None:
        kwargs["gguf_file"] = loc.gguf_file
    try:
        model = AutoModelForCausalLM.from_pretrained(loc.source, **kwargs)
    except (OSError, ValueError, ImportError) as exc:
        raise BackendLoadError(f"could not load model from {_label(loc)!r}: {exc}") from exc
    floor = None
    if half and measure_floor:
        floor = hf_load.half_on_cpu(model, dtype, hf_load.floor_tokenizer(loc))
    elif half:
        cast_releasing_pages(model, dtype)
    torch.nn.Module.to(model, device)
    torch.nn.Module.train(model, False)
    model.requires_grad_(False)
    loaded: PreTrainedModel = model
    return loaded, floor


def _load_tokenizer(
    ft: BaseLocation, base: BaseLocation, *, trust_remote_code: bool
) -> PreTrainedTokenizerBase:
    """The fine-tune's tokenizer when its directory ships one (chat template), else the base's."""
    from transformers import AutoTokenizer

    has_own = ft.gguf_file is None and Path(ft.source, "tokenizer_config.json").is_file()
    loc = ft if has_own else base
    kwargs: dict[str, Any] = {"trust_remote_code": trust_remote_code, "local_files_only": True}
    if loc.gguf_file is not None:
        kwargs["gguf_file"] = loc.gguf_file
    try:
        tokenizer = AutoTokenizer.from_pretrained(loc.source, **kwargs)
    except (OSError, ValueError) as exc:
        raise BackendLoadError(f"could not load the tokenizer from {_label(loc)!r}: {exc}") from exc
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise BackendLoadError(f"tokenizer from {_label(loc)!r} has no pad or eos token")
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    return tokenizer


def _context_limit(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> int | None:
    config = model.config
    text_config = getattr(config, "get_text_config", lambda: config)()
    for attr in ("max_position_embeddings", "n_positions", "max_sequence_length", "n_ctx"):
        value = getattr(text_config, attr, None)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    limit = getattr(tokenizer, "model_max_length", None)
    return limit if isinstance(limit, int) and 0 < limit < 10_000_000 else None


def _content_hash(loc: BaseLocation) -> str:
    """sha256 over a checkpoint's weight files (and config), in name order."""
    from dlm_sway.backends.hf_load import sha256_file

    root = Path(loc.source)
    if loc.gguf_file is not None:
        files = [root / loc.gguf_file]
    elif root.is_dir():
        files = sorted(
            p
            for p in root.iterdir()
            if p.suffix in (".safetensors", ".bin") or p.name == "config.json"
        )
    else:  # a cached hub id: its snapshot directory
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(loc.source, "config.json")
        snap = Path(cached).parent if isinstance(cached, str) else root
        files = sorted(p for p in snap.iterdir() if p.suffix in (".safetensors", ".bin"))
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.name.encode())
        digest.update(sha256_file(path).encode())
    return digest.hexdigest()


__all__ = ["TwoModelBackend", "weight_slots"]
