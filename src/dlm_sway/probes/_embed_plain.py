"""A sentence-transformers folder whose pipeline is a bare encoder, run by transformers.

Most embedding folders, the bundled all-MiniLM-L6-v2 among them, describe in their
``modules.json`` the same three steps: the transformer's last hidden states, the
mean (or the first token) of them over the real tokens, and an optional L2
normalisation. Importing sentence-transformers to run that costs about 2 s on
CPU (it imports scikit-learn and its training stack), more than the embedding it
serves; transformers and torch are already loaded by then. A folder that asks for
anything else (another module, a prompt prefix, lower-casing, model arguments) is
left to sentence-transformers (:mod:`._embed`). The bundled model's embeddings
equal sentence-transformers' within 1e-7 (tests/unit/test_embed_plain.py).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray

_TRANSFORMER = "sentence_transformers.models.Transformer"
_POOLING = "sentence_transformers.models.Pooling"
_NORMALIZE = "sentence_transformers.models.Normalize"
#: Pooling switches a plain pipeline may set: exactly one of the two modes.
_MODES: dict[str, Literal["mean", "cls"]] = {
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_cls_token": "cls",
}
#: sentence_bert_config.json keys a plain pipeline may hold (lower-casing off).
_SETTINGS = frozenset({"max_seq_length", "do_lower_case"})
_OTHER_MODES = (
    "pooling_mode_max_tokens",
    "pooling_mode_mean_sqrt_len_tokens",
    "pooling_mode_weightedmean_tokens",
    "pooling_mode_lasttoken",
)


@dataclass(frozen=True, slots=True)
class Plain:
    """What the folder's pipeline does after the encoder."""

    pooling: Literal["mean", "cls"]
    normalize: bool
    max_seq_length: int | None


def _json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def plain_pipeline(folder: Path) -> Plain | None:
    """The folder's pipeline when it is encoder → mean/CLS pooling → optional
    normalisation with no other setting; None for anything else (or unreadable)."""
    modules = _json(folder / "modules.json")
    if not isinstance(modules, list) or not 2 <= len(modules) <= 3:
        return None
    kinds = [m.get("type") if isinstance(m, dict) else None for m in modules]
    if kinds[:2] != [_TRANSFORMER, _POOLING] or kinds[2:] not in ([], [_NORMALIZE]):
        return None
    if modules[0].get("path", "") not in ("", "."):
        return None
    pooling = _json(folder / str(modules[1].get("path", "")) / "config.json")
    settings = _json(folder / "sentence_bert_config.json") or {}
    extra = _json(folder / "config_sentence_transformers.json") or {}
    if not all(isinstance(c, dict) for c in (pooling, settings, extra)):
        return None
    mode = _pooling_mode(pooling)
    if mode is None or pooling.get("include_prompt") is False or not set(settings) <= _SETTINGS:
        return None
    if settings.get("do_lower_case") or extra.get("prompts") or extra.get("default_prompt_name"):
        return None
    length = settings.get("max_seq_length")
    if length is not None and (type(length) is not int or length < 1):
        return None
    return Plain(pooling=mode, normalize=len(modules) == 3, max_seq_length=length)


def _pooling_mode(config: dict[str, Any]) -> Literal["mean", "cls"] | None:
    """Mean or CLS pooling, from the switches (or a newer ``pooling_mode`` name), when
    exactly one of them is on and no other mode is; None otherwise."""
    switches = [config.get(key) for key in (*_MODES, *_OTHER_MODES)]
    if any(v is not None and not isinstance(v, bool) for v in switches):
        return None
    named = config.get("pooling_mode")
    on = [name for key, name in _MODES.items() if config.get(key) is True]
    if any(config.get(key) for key in _OTHER_MODES) or (named is not None and on):
        return None
    if named is not None:
        return "mean" if named == "mean" else "cls" if named == "cls" else None
    return on[0] if len(on) == 1 else None


class PlainEncoder:
    """The folder's tokenizer and encoder, pooled as :class:`Plain` says."""

    def __init__(self, folder: Path, plain: Plain) -> None:
        from transformers import AutoModel, AutoTokenizer

        self.plain = plain
        self.tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
        self.model = AutoModel.from_pretrained(str(folder), local_files_only=True).eval()

    def encode(self, texts: Sequence[str], batch_size: int = 32) -> NDArray[np.float32]:
        import torch

        rows: list[Any] = []
        for start in range(0, len(texts), batch_size):
            batch = self.tokenizer(
                list(texts[start : start + batch_size]),
                padding=True,
                truncation=self.plain.max_seq_length is not None,
                max_length=self.plain.max_seq_length,
                return_tensors="pt",
            )
            with torch.inference_mode():
                hidden = self.model(**batch).last_hidden_state
            if self.plain.pooling == "cls":
                pooled = hidden[:, 0]
            else:
                mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
            if self.plain.normalize:
                pooled = torch.nn.functional.normalize(pooled, p=2.0, dim=1)
            rows.append(pooled.float().numpy())
        if not rows:
            return np.zeros((0, 0), dtype=np.float32)
        out: NDArray[np.float32] = np.concatenate(rows)
        return out


__all__ = ["Plain", "PlainEncoder", "plain_pipeline"]
