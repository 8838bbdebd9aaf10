"""Resolve and load a base model, tokenizer and PEFT LoRA adapter for the HF backend.

Every failure a user can cause (wrong path, not an adapter, wrong adapter
type, corrupt weights, adapter for another base, a device this machine lacks,
a hub id that is not cached) becomes a :class:`BackendLoadError` that says
what failed, where, and how to fix it — before the base weights load whenever
it can be known then. sway never downloads: hub ids load from the local HF
cache only. Imports torch/transformers/peft at module level: import this
module only after :func:`require_hf_stack`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
import warnings
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerBase

from dlm_sway.backends.adapter_files import RESAVE, validate_config, weight_names
from dlm_sway.backends.hf_pages import cast_releasing_pages
from dlm_sway.core.errors import BackendLoadError
from dlm_sway.core.result import HealthCheck

_DTYPES: dict[str, torch.dtype] = {
    "fp32": torch.float32,
    "float32": torch.float32,
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
    "fp16": torch.float16,
    "float16": torch.float16,
}
_DTYPE_NAMES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}
_log = logging.getLogger(__name__)
_WEIGHT_FILES = ("adapter_model.safetensors", "adapter_model.bin")
_DEVICE_RE = re.compile(r"(auto|cpu|mps|cuda)(?::(\d+))?")
_OFFLINE_ALTERNATIVES = (
    "use builtin:smollm2-135m-instruct, a local model directory (with config.json) or a "
    ".gguf file (to use this model, download it once elsewhere and pass its local directory)"
)


@dataclass(frozen=True)
class BaseLocation:
    """Where ``from_pretrained`` should look: a directory or hub id, plus an optional GGUF file."""

    source: str
    gguf_file: str | None
    is_local: bool


@dataclass(frozen=True)
class AdapterInfo:
    path: Path
    config: dict[str, Any]
    weights_file: Path
    weights_sha256: str
    #: Tensor names in the weight file, as saved (``base_model.model.…lora_A.weight``).
    tensor_names: tuple[str, ...] = ()


def resolve_device(device: str) -> torch.device:
    """``auto`` picks CUDA, then MPS, then CPU; an explicit device must exist here.

    Checked before anything loads: torch would otherwise fail only when the
    weights move, with a traceback, after the base model was read.
    """
    match = _DEVICE_RE.fullmatch(device.strip().lower())
    if match is None or (match.group(2) is not None and match.group(1) not in ("cuda", "mps")):
        raise BackendLoadError(
            f"unknown device {device!r}: use 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'"
        )
    kind, index = match.group(1), match.group(2)
    if kind == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if kind == "cuda":
        if not torch.cuda.is_available():
            raise BackendLoadError(
                f"CUDA requested (device {device!r}) but torch.cuda.is_available() is False "
                "on this machine (no GPU, no driver, or a CPU-only torch build); use device: "
                "cpu or auto"
            )
        count = torch.cuda.device_count()
        if index is not None and int(index) >= count:
            raise BackendLoadError(
                f"device {device!r} does not exist: this machine has {count} CUDA device(s), "
                f"cuda:0 to cuda:{count - 1}; use one of those, cuda or auto"
            )
    if kind == "mps" and not torch.backends.mps.is_available():
        raise BackendLoadError(
            f"MPS requested (device {device!r}) but torch.backends.mps.is_available() is "
            "False on this machine (MPS needs Apple silicon); use device: cpu or auto"
        )
    return torch.device(f"{kind}:{index}" if index is not None else kind)


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """``auto``: bf16 on CUDA when supported, fp16 on MPS, otherwise fp32 (CPU halves are slow)."""
    if dtype == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
        if device.type == "mps":
            return torch.float16
        return torch.float32
    if dtype not in _DTYPES:
        raise BackendLoadError(f"unknown dtype {dtype!r}: use one of auto, fp32, bf16, fp16")
    return _DTYPES[dtype]


def dtype_name(dtype: torch.dtype) -> str:
    return _DTYPE_NAMES.get(dtype, str(dtype).removeprefix("torch."))


def _looks_like_path(base: str) -> bool:
    """Hub ids are ``name`` or ``org/name``; anything else is meant as a filesystem path."""
    return (
        base.startswith(("/", ".", "~"))
        or base.count("/") > 1
        or "\\" in base
        or base.endswith(".gguf")
    )


def resolve_base(base: str, gguf_file: str | None) -> BaseLocation:
    """Turn the user's ``base`` (dir, hub id, ``.gguf`` file) into from_pretrained arguments."""
    path = Path(base).expanduser()
    if path.is_file():
        if path.suffix != ".gguf":
            raise BackendLoadError(
                f"base model {base!r} is a file but not a .gguf file: pass the model "
                "directory (with config.json) or a .gguf file"
            )
        if gguf_file is not None and gguf_file != path.name:
            raise BackendLoadError(
                f"base {base!r} is a .gguf file but gguf_file={gguf_file!r} names another: "
                "pass either the file path or the directory plus gguf_file"
            )
        return BaseLocation(str(path.parent.resolve()), path.name, is_local=True)
    if path.is_dir():
        if gguf_file is not None and not (path / gguf_file).is_file():
            raise BackendLoadError(f"GGUF file {gguf_file!r} not found in base directory {base!r}")
        if gguf_file is None and not (path / "config.json").is_file():
            raise BackendLoadError(
                f"base model directory {base!r} has no config.json: point base at a "
                "transformers model directory, or at a .gguf file"
            )
        return BaseLocation(str(path.resolve()), gguf_file, is_local=True)
    if _looks_like_path(base):
        raise BackendLoadError(
            f"base model path {base!r} does not exist: check the path (in a spec file, "
            "relative paths resolve against the spec's folder)"
        )
    _require_cached(base, gguf_file or "config.json")
    return BaseLocation(base, gguf_file, is_local=False)


def _require_cached(repo_id: str, filename: str) -> None:
    """A hub id must already be in the local HF cache: sway never downloads.

    Checked up front because transformers would otherwise retry the network
    for about a minute before failing.
    """
    from huggingface_hub import constants, try_to_load_from_cache

    try:
        cached = try_to_load_from_cache(repo_id, filename)
    except ValueError:  # HFValidationError: not even a well-formed hub id
        cached = None
    if not isinstance(cached, str):
        raise BackendLoadError(
            f"base model {repo_id!r} is not a local path, and as a Hugging Face hub id it is "
            f"not in the local HF cache ({constants.HF_HUB_CACHE}, no {filename}); sway never "
            f"downloads models: {_OFFLINE_ALTERNATIVES}"
        )


def inspect_adapter(adapter: str | Path) -> AdapterInfo:
    """Validate the adapter directory before any weights load; hash the weight file."""
    path = Path(adapter).expanduser()
    if not path.exists():
        raise BackendLoadError(
            f"adapter path {str(adapter)!r} does not exist: pass the directory written by "
            "PEFT's save_pretrained (adapter_config.json + adapter_model.safetensors)"
        )
    if path.is_file():
        raise BackendLoadError(
            f"adapter path {str(adapter)!r} is a file: pass the directory that contains "
            "adapter_config.json, not a weight file"
        )
    config_path = path / "adapter_config.json"
    if not config_path.is_file():
        raise BackendLoadError(
            f"{str(path)!r} is not a PEFT adapter: it has no adapter_config.json. Pass the "
            "directory written by PEFT's save_pretrained"
        )
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise BackendLoadError(
            f"cannot read adapter config {config_path}: {exc}; {RESAVE}"
        ) from exc
    if not isinstance(config, dict):
        raise BackendLoadError(f"{config_path} must hold a JSON object")
    peft_type = str(config.get("peft_type", "")).upper()
    if peft_type != "LORA":
        raise BackendLoadError(
            f"unsupported adapter type {config.get('peft_type')!r} in {config_path}: sway "
            "compares LoRA adapters only (peft_type LORA); re-train with a LoraConfig"
        )
    validate_config(config, config_path)
    _peft_accepts(path, config_path)
    weights = next((path / n for n in _WEIGHT_FILES if (path / n).is_file()), None)
    if weights is None:
        raise BackendLoadError(
            f"adapter directory {str(path)!r} has no weights ({' or '.join(_WEIGHT_FILES)}); "
            "re-save the adapter with save_pretrained"
        )
    names = weight_names(weights)
    return AdapterInfo(path.resolve(), config, weights, sha256_file(weights), names)


def _peft_accepts(path: Path, config_path: Path) -> None:
    """Let peft build its LoraConfig now, so its own cross-field checks fail before any load."""
    from peft import LoraConfig

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # unknown keys from other peft versions
            LoraConfig.from_pretrained(str(path))
    except (ValueError, TypeError, AttributeError, KeyError) as exc:
        raise BackendLoadError(
            f"adapter config {config_path} is rejected by peft: {exc}; fix the field or {RESAVE}"
        ) from None


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_tokenizer(
    base: BaseLocation, adapter: AdapterInfo, *, trust_remote_code: bool
) -> PreTrainedTokenizerBase:
    """Adapter's tokenizer when it ships one (it may add chat tokens), else the base's."""
    kwargs: dict[str, Any] = {"trust_remote_code": trust_remote_code, "local_files_only": True}
    if ships_tokenizer(adapter):
        source = str(adapter.path)
    else:
        source = base.source
        if base.gguf_file is not None:
            kwargs["gguf_file"] = base.gguf_file
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
    except (OSError, ValueError) as exc:
        raise BackendLoadError(_load_hint("tokenizer", source, base, exc)) from exc
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise BackendLoadError(
                f"tokenizer from {source!r} has neither a pad nor an eos token; cannot batch"
            )
        tokenizer.pad_token = tokenizer.eos_token
    # Left padding keeps every sequence's last real token at position -1.
    tokenizer.padding_side = "left"
    return tokenizer


def ships_tokenizer(adapter: AdapterInfo) -> bool:
    """Whether the adapter folder carries its own tokenizer (then it is not the base's)."""
    return (adapter.path / "tokenizer_config.json").is_file()


def load_model(
    base: BaseLocation,
    adapter: AdapterInfo,
    *,
    dtype: torch.dtype,
    device: torch.device,
    trust_remote_code: bool,
    base_tokenizer: PreTrainedTokenizerBase | None = None,
) -> PeftModel:
    """Load the base weights once and attach the LoRA adapter (inference only).

    ``base_tokenizer``: the base's own left-padding tokenizer when the caller has one
    already; a half dtype on CPU then measures its floor without loading another.
    """
    from transformers.utils import logging as hf_logging

    # sway draws its own progress; transformers' per-load weight bar is noise in reports.
    hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    kwargs: dict[str, Any] = {
        "dtype": dtype,
        "trust_remote_code": trust_remote_code,
        "local_files_only": True,
    }
    if base.gguf_file is not None:
        kwargs["gguf_file"] = base.gguf_file
    # A half dtype on CPU loads in fp32 first, so its drift from fp32 can be measured.
    measure_floor = is_half_on_cpu(dtype, device)
    if measure_floor:
        kwargs["dtype"] = torch.float32
    try:
        model = AutoModelForCausalLM.from_pretrained(base.source, **kwargs)
    except (OSError, ValueError, ImportError) as exc:
        raise BackendLoadError(_load_hint("base model", base.source, base, exc)) from exc
    floor = None
    if measure_floor:
        tokenizer = floor_tokenizer(base) if base_tokenizer is None else base_tokenizer
        floor = half_on_cpu(model, dtype, tokenizer)
    torch.nn.Module.to(model, device)
    try:
        with warnings.catch_warnings():
            # peft 0.21 touches a property transformers 5 deprecated; not the user's concern.
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")
            # adapter_coverage reports missing (and unused) tensors as an error instead.
            warnings.filterwarnings("ignore", message=".*Found missing adapter keys.*")
            peft_model = PeftModel.from_pretrained(model, str(adapter.path), is_trainable=False)
    except RuntimeError as exc:
        if "size mismatch" in str(exc):
            raise BackendLoadError(
                f"adapter {str(adapter.path)!r} does not fit base model {base.source!r}: its "
                "LoRA tensor shapes differ from the base's layers (it was trained on another "
                "model or model size). Use the base the adapter was trained on "
                f"(adapter_config.json says {adapter.config.get('base_model_name_or_path')!r}). "
                f"Detail: {_first_line(exc, 'size mismatch')}"
            ) from exc
        raise BackendLoadError(f"loading adapter {str(adapter.path)!r} failed: {exc}") from exc
    except (ValueError, KeyError, OSError, TypeError, AttributeError, IndexError) as exc:
        raise BackendLoadError(
            f"adapter {str(adapter.path)!r} cannot be attached to base {base.source!r} "
            f"(target modules missing or config invalid): {type(exc).__name__}: {exc}"
        ) from exc
    peft_model.eval()
    if floor is not None:
        _DTYPE_FLOORS[peft_model] = floor
    return peft_model


@dataclass(frozen=True)
class DtypeFloor:
    """How far a half-precision base moves next-token distributions from fp32, and how
    fast its matmuls run next to fp32's on this CPU.

    Measured at load on :data:`FLOOR_PROMPTS` (one batched forward in each dtype):
    divergences below ``js_max`` may be rounding, not the adapter. ``speed`` is the
    half matmul's throughput over fp32's (:func:`half_speed`): a CPU without native
    half instructions emulates them, several times slower than fp32.
    """

    dtype: str
    js_max: float
    js_mean: float
    prompts: int
    speed: float | None = None

    @property
    def slower(self) -> bool:
        """Whether the half dtype costs this run time instead of saving it."""
        return self.speed is not None and self.speed < SLOW_HALF

    def describe(self) -> str:
        text = (
            f"base model runs in {self.dtype} on CPU: vs fp32 it moves next-token "
            f"distributions by JS ≤ {self.js_max:.2e} (mean {self.js_mean:.2e}, "
            f"{self.prompts} prompts); effects of that size are rounding, not the adapter"
        )
        speed = self.speed
        if speed is not None and speed < SLOW_HALF:
            return (
                f"{text}; and its matmuls run {1 / speed:.1f}× slower than fp32's on "
                f"this CPU (no fast {self.dtype} matmuls here), so the run is slower, not "
                "faster"
            )
        if speed is not None:
            return f"{text}; its matmuls run {speed:.1f}× as fast as fp32's here"
        return text


#: Timed alternations of :func:`half_speed`.
SPEED_ROUNDS = 6
#: Below this throughput ratio (half / fp32) a half run is flagged as slower: well
#: outside timing noise (a CPU without bf16 instructions measured 0.15).
SLOW_HALF = 0.67


def half_speed(dtype: torch.dtype, hidden: int = 576, inner: int = 1536, rows: int = 64) -> float:
    """Throughput of an MLP-shaped matmul (``rows × hidden`` by ``hidden × inner``) in
    ``dtype`` over fp32's: both warmed up, then timed in alternation and each taken at
    its best, so a busy moment or a first call's kernel setup cannot decide it (~0.1 s
    where halves are emulated; the ratio depends on the shape, so it takes the model's)."""
    gen = torch.Generator().manual_seed(0)
    pairs = []
    for dt in (torch.float32, dtype):
        x = torch.randn(rows, hidden, generator=gen).to(dt)
        pairs.append((x, torch.randn(inner, hidden, generator=gen).to(dt)))
    best = [float("inf"), float("inf")]
    with torch.inference_mode():
        for k in range(-2, SPEED_ROUNDS):
            for side, (x, w) in enumerate(pairs):
                t = time.perf_counter()
                torch.nn.functional.linear(x, w)
                if k >= 0:  # two warm-up rounds: kernel selection, JIT, thread start
                    best[side] = min(best[side], time.perf_counter() - t)
    return best[0] / max(best[1], 1e-9)


#: Short, varied prompts for the dtype floor (the floor is a property of the numerics).
FLOOR_PROMPTS = (
    "The quick brown fox",
    "In 1912, the ship",
    "def add(a, b):",
    "The capital of France is",
    "She opened the door and",
    "Water boils at a temperature of",
    "Once upon a time",
    "The best way to learn is",
)
_DTYPE_FLOORS: weakref.WeakKeyDictionary[Any, DtypeFloor] = weakref.WeakKeyDictionary()


def dtype_floor(model: Any) -> DtypeFloor | None:
    """The half-precision floor measured when ``model`` loaded (None for fp32 / GPU)."""
    return _DTYPE_FLOORS.get(model)


def is_half_on_cpu(dtype: torch.dtype, device: torch.device) -> bool:
    """A half dtype on CPU: loaded in fp32 and cast, so its drift from fp32 is measured."""
    return device.type == "cpu" and dtype in (torch.bfloat16, torch.float16)


def floor_health(floor: DtypeFloor | None) -> tuple[HealthCheck, ...]:
    """The floor as a health line: in every report, never silent."""
    if floor is None:
        return ()
    if floor.slower:
        return (
            HealthCheck(
                "warn",
                "dtype_floor",
                floor.describe(),
                "use dtype: fp32 on this CPU: it is faster here and exact",
            ),
        )
    return (
        HealthCheck(
            "info",
            "dtype_floor",
            floor.describe(),
            "use dtype: fp32 for exact numbers; a half-precision run is faster on "
            "CPUs with bf16 matmuls, and its verdicts hold above this floor",
        ),
    )


def half_on_cpu(
    model: Any, dtype: torch.dtype, tokenizer: PreTrainedTokenizerBase | None
) -> DtypeFloor | None:
    """Cast an fp32-loaded model to ``dtype`` in place; measure the drift when possible."""
    enc = None
    if tokenizer is not None:
        enc = tokenizer(list(FLOOR_PROMPTS), return_tensors="pt", padding=True)
    reference = _last_logprobs(model, enc) if enc is not None else None
    cast_releasing_pages(model, dtype)  # the fp32 file pages go back as each weight is cast
    if enc is None or reference is None:
        _log.warning("base model runs in %s on CPU; its drift from fp32 was not measured", dtype)
        return None
    half = _last_logprobs(model, enc)
    m = 0.5 * (reference.exp() + half.exp())
    js = 0.5 * (reference.exp() * (reference - m.log())).sum(-1)
    js = js + 0.5 * (half.exp() * (half - m.log())).sum(-1)
    floor = DtypeFloor(
        dtype_name(dtype),
        float(js.max()),
        float(js.mean()),
        len(FLOOR_PROMPTS),
        speed=half_speed(dtype, *_mlp_shape(model)),
    )
    _log.warning("%s", floor.describe())
    return floor


def _mlp_shape(model: Any) -> tuple[int, int]:
    """(hidden, intermediate) from the model's config; SmolLM2's where it names none."""
    config = getattr(model, "config", None)
    hidden = getattr(config, "hidden_size", None)
    inner = getattr(config, "intermediate_size", None)
    if isinstance(hidden, int) and isinstance(inner, int) and 0 < hidden * inner <= 2**26:
        return hidden, inner
    return 576, 1536


def floor_tokenizer(base: BaseLocation) -> PreTrainedTokenizerBase | None:
    """The base's own tokenizer, left-padding (it matches the base's embeddings)."""
    kwargs: dict[str, Any] = {"local_files_only": True}
    if base.gguf_file is not None:
        kwargs["gguf_file"] = base.gguf_file
    try:
        tokenizer = AutoTokenizer.from_pretrained(base.source, **kwargs)
    except (OSError, ValueError) as exc:
        _log.debug("no tokenizer for the dtype floor: %s", exc)
        return None
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            return None
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    return tokenizer


def _last_logprobs(model: Any, enc: Any) -> torch.Tensor:
    mask = enc["attention_mask"]
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.inference_mode():
        logits = model(
            input_ids=enc["input_ids"], attention_mask=mask, position_ids=positions
        ).logits
    rows: torch.Tensor = logits[:, -1, :].double().log_softmax(-1)
    return rows


def adapter_coverage(peft_model: PeftModel, adapter: AdapterInfo) -> tuple[list[str], list[str]]:
    """(unused, missing): file tensors peft did not load, and attached weights the file lacks.

    peft loads with ``strict=False``: a tensor for a layer or module the base
    does not have (or that ``target_modules`` leaves out) is dropped, and a
    module peft attached without a tensor keeps its initialisation (random
    when ``init_lora_weights`` is false). ``get_peft_model_state_dict`` names
    the attached weights exactly as ``save_pretrained`` would write them
    (no ``.default`` adapter name), so the two sets compare directly.
    """
    from peft import get_peft_model_state_dict

    expected = set(
        get_peft_model_state_dict(peft_model, adapter_name="default", save_embedding_layers=False)
    )
    present = set(adapter.tensor_names)
    return sorted(present - expected), sorted(expected - present)


def coverage_problem(unused: list[str], missing: list[str], adapter: AdapterInfo) -> str | None:
    """One message for a partial load, naming a few tensors and the counts; None when whole."""
    if not unused and not missing:
        return None
    parts = []
    if unused:
        parts.append(
            f"{len(unused)} of {len(adapter.tensor_names)} tensor(s) in "
            f"{adapter.weights_file.name} match no LoRA module attached to the base and are "
            f"ignored (e.g. {', '.join(unused[:3])})"
        )
    if missing:
        init = adapter.config.get("init_lora_weights", True)
        state = "random" if init is False else "initial"
        parts.append(
            f"{len(missing)} attached LoRA weight(s) have no tensor in the file and keep their "
            f"{state} values (e.g. {', '.join(missing[:3])})"
        )
    return (
        f"adapter {str(adapter.path)!r} only partly loads: {'; '.join(parts)}. It was trained "
        "on a different model or with different target_modules/layers than its "
        f"adapter_config.json says: use the base it was trained on, fix the config or {RESAVE}"
    )


def context_limit(model: PeftModel, tokenizer: PreTrainedTokenizerBase) -> int | None:
    """The model's maximum positions: its config's, else a real tokenizer limit, else None.

    Tokenizers without a limit report a huge sentinel (``int(1e30)``), not a length.
    """
    config = model.get_base_model().config
    text_config = getattr(config, "get_text_config", lambda: config)()
    for attr in ("max_position_embeddings", "n_positions", "max_sequence_length", "n_ctx"):
        value = getattr(text_config, attr, None)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    limit = getattr(tokenizer, "model_max_length", None)
    if isinstance(limit, int) and 0 < limit < 10_000_000:
        return limit
    return None


def _first_line(exc: BaseException, needle: str) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if needle in ln]
    return lines[0] if lines else str(exc).splitlines()[0]


def _load_hint(what: str, source: str, base: BaseLocation, exc: BaseException) -> str:
    if not base.is_local:
        return (
            f"could not load {what} {source!r} from the local HF cache (sway never "
            f"downloads models): {_OFFLINE_ALTERNATIVES}. Detail: {exc}"
        )
    return f"could not load {what} from {source!r}: {exc}"
