"""A torch-free, deterministic backend implementing every protocol, for tests.

Each text maps (via md5, so across processes too) to pseudo-random logits over
a small vocabulary. The fine-tune adds a logit shift of norm ``strength·√V``
along a per-text direction drawn from ``adapter_seed``; λ-scaling scales it.
With ``planted=0`` that direction is statistically just a random one, so the
"trained" adapter is exactly a null (what a false-positive test needs);
``planted>0`` mixes in a real signal (mass moved off each prompt's top token),
which a random direction of the same norm does not produce (what a power test
needs). Null views: ``init_scale`` adds a random shift of norm
``null_scale·init_scale·√rank_scale·√V``; ``norm_matched`` a random shift of the
trained norm (×√rank_scale); ``permuted`` the trained shift with its
coordinates shuffled. Strength 0 is a no-op adapter.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from dlm_sway.core.errors import ProbeError, ViewError
from dlm_sway.core.scoring import (
    NULL_CONSTRUCTIONS,
    Conversation,
    Generation,
    GenerationError,
    GenerationSettings,
    NullConstruction,
    RollingLogprob,
    ScoringModel,
    TokenDist,
    cut_at_stop,
    plain_text,
    prompt_cache_key,
)

VOCAB = 256
_ADAPTER_SEED = 7


def _text_seed(text: str) -> int:
    return int(hashlib.md5(text.encode("utf-8")).hexdigest()[:8], 16)


def _unit(seed: int, salt: int) -> NDArray[np.float64]:
    v: NDArray[np.float64] = np.random.default_rng([seed, salt]).standard_normal(VOCAB)
    out: NDArray[np.float64] = v / np.linalg.norm(v) * math.sqrt(VOCAB)
    return out


@dataclass
class _Counters:
    forward_passes: int = 0
    scored_tokens: int = 0
    extra: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"forward_passes": self.forward_passes, "scored_tokens": self.scored_tokens}


class DummyView:
    """One view: logits = base(text) + shift(text)."""

    def __init__(self, owner: DummyDifferentialBackend, view_id: str, shift_fn: Any) -> None:
        self._owner = owner
        self._id = view_id
        self._shift = shift_fn

    @property
    def id(self) -> str:
        return self._id

    def _logprobs(self, context: str) -> NDArray[np.float64]:
        self._owner.stats.forward_passes += 1
        seed = _text_seed(context)
        logits = 3.0 * _unit(seed, 0) / math.sqrt(VOCAB) * 4.0 + self._shift(seed)
        if self._owner.nan and self._id != "base":
            logits = logits * float("nan")
        m = float(np.max(logits))
        out: NDArray[np.float64] = logits - (m + math.log(float(np.sum(np.exp(logits - m)))))
        return out

    def next_token_dist(self, prompt: str, top_k: int = 256) -> TokenDist:
        lp = self._logprobs(prompt)
        k = min(top_k, VOCAB)
        order = np.argsort(-lp, kind="stable")[:k]
        tail: float | None = None
        if k < VOCAB:
            rest = float(1.0 - np.exp(lp[order]).sum())
            tail = math.log(rest) if rest > 1e-12 else 0.0
        return TokenDist(
            token_ids=order.astype(np.int64),
            logprobs=lp[order].astype(np.float32),
            vocab_size=VOCAB,
            tail_logprob=tail,
        )

    def next_token_dist_batch(self, prompts: Sequence[str], top_k: int = 256) -> list[TokenDist]:
        return [self.next_token_dist(p, top_k=top_k) for p in prompts]

    def _token_id(self, word: str) -> int:
        return _text_seed("tok:" + word) % VOCAB

    def rolling_logprob(self, text: str) -> RollingLogprob:
        words = text.split()
        ids = np.array([self._token_id(w) for w in words], dtype=np.int64)
        lps = [float(self._logprobs(" ".join(words[:i]))[ids[i]]) for i in range(1, len(words))]
        self._owner.stats.scored_tokens += len(lps)
        arr = np.asarray(lps, dtype=np.float32)
        return RollingLogprob(ids, arr, len(words), float(np.sum(arr, dtype=np.float64)))

    def token_pieces(self, text: str) -> list[str]:
        """One piece per word of :meth:`rolling_logprob`, with its leading whitespace."""
        pieces = re.findall(r"\s*\S+", text)
        if pieces:
            pieces[-1] += text[sum(map(len, pieces)) :]
        return pieces

    def completion_token_count(self, prompt: str, completion: str) -> int:
        return len(completion.split())

    def logprob_of(self, prompt: str, completion: str) -> float:
        head = prompt.split()
        tail = completion.split()
        if not tail:
            raise ProbeError("logprob_of", "completion has no tokens")
        total = 0.0
        for i, w in enumerate(tail):
            total += float(self._logprobs(" ".join(head + tail[:i]))[self._token_id(w)])
        self._owner.stats.scored_tokens += len(tail)
        return total

    def generate(
        self,
        prompt: str,
        max_new_tokens: int,
        *,
        temperature: float = 0.0,
        top_p: float = 1.0,
        seed: int = 0,
    ) -> str:
        if max_new_tokens == 0:
            return ""
        settings = GenerationSettings(
            max_new_tokens, temperature=temperature, top_p=top_p, seed=seed, chat=False
        )
        return self.generate_batch([prompt], settings)[0].text

    def generate_batch(
        self, prompts: Sequence[str | Conversation], settings: GenerationSettings
    ) -> list[Generation]:
        """One word ``w<id>`` per token; seeded draws per (seed, prompt). No chat template."""
        if settings.chat is True:
            raise GenerationError(
                "chat: true needs a chat template, but the dummy backend has none; "
                "set chat: false or leave it unset"
            )
        return [self._generate_one(p, settings) for p in prompts]

    def _generate_one(self, prompt: str | Conversation, settings: GenerationSettings) -> Generation:
        context = plain_text(prompt)
        rng = np.random.default_rng([settings.seed, _text_seed(prompt_cache_key(prompt))])
        words: list[str] = []
        for _ in range(settings.max_new_tokens):
            lp = self._logprobs(" ".join([context, *words]))
            if settings.greedy:
                token = int(np.argmax(lp))
            else:
                p = np.exp((lp - lp.max()) / settings.temperature)
                order = np.argsort(-p, kind="stable")
                cum = np.cumsum(p[order] / p.sum())
                cut = min(int(np.searchsorted(cum, settings.top_p)), VOCAB - 1)
                token = int(
                    order[min(int(np.searchsorted(cum[: cut + 1], rng.random() * cum[cut])), cut)]
                )
            words.append(f"w{token}")
            text, hit = cut_at_stop(" ".join(words), settings.stop)
            if hit:
                return Generation(text, len(words), "stop", False)
        return Generation(" ".join(words), len(words), "length", False)


#: Options ``models.ft.options`` may give the dummy backend: name → what it must be.
OPTIONS: dict[str, str] = {
    "strength": "a finite number",
    "null_scale": "a finite number",
    "planted": "a finite number",
    "nan": "true or false",
    "adapter_seed": "a non-negative integer",
}


def option_problems(options: dict[str, Any]) -> list[tuple[str, str]]:
    """``(key, problem)`` for each bad option, so the spec layer can name the field."""
    out: list[tuple[str, str]] = []
    for key, value in options.items():
        if key not in OPTIONS:
            known = ", ".join(OPTIONS)
            out.append((key, f"unknown dummy backend option; known: {known}"))
            continue
        want = OPTIONS[key]
        if key == "nan":
            ok = isinstance(value, bool)
        elif key == "adapter_seed":
            ok = isinstance(value, int) and not isinstance(value, bool) and value >= 0
        else:
            ok = (
                isinstance(value, (int, float))
                and not isinstance(value, bool)
                and math.isfinite(value)
            )
        if not ok:
            out.append((key, f"must be {want}, got {value!r}"))
    return out


class DummyDifferentialBackend:
    """Deterministic synthetic backend.

    Defaults stand in for a trained adapter (a planted signal that norm-matched
    nulls do not reproduce); ``planted=0`` makes the adapter a pure random
    direction (a null in disguise); ``strength=0`` a no-op adapter.
    """

    null_constructions: tuple[NullConstruction, ...] = NULL_CONSTRUCTIONS

    def __init__(
        self,
        *,
        base: str = "dummy-base",
        adapter: str | None = "dummy-adapter",
        strength: float = 0.5,
        null_scale: float = 10.0,
        nan: bool = False,
        planted: float = 1.0,
        adapter_seed: int = _ADAPTER_SEED,
    ) -> None:
        if not math.isfinite(strength) or not math.isfinite(null_scale):
            raise ValueError("dummy backend: strength and null_scale must be finite")
        self.base_id = base
        self.adapter_id = adapter or ""
        self.strength = strength
        self.null_scale = null_scale
        self.nan = nan
        self.planted = planted
        self.adapter_seed = adapter_seed
        self.stats = _Counters()
        self._active: str | None = None
        self._given = {k: getattr(self, k) for k in ("strength", "planted", "adapter_seed")}
        self._given["null_scale"] = null_scale
        self._apply_adapter_file(self.adapter_id)

    #: A file in an adapter folder that sets the dummy adapter's options, so tests can
    #: make several distinct "adapters" on disk (``--adapters``, ``sway diff``).
    ADAPTER_FILE = "dummy_adapter.json"

    def _apply_adapter_file(self, adapter: str) -> None:
        import json
        from pathlib import Path

        from dlm_sway.core.errors import BackendLoadError

        path = Path(adapter) / self.ADAPTER_FILE if adapter else None
        if path is None or not path.is_file():
            return
        try:
            options = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise BackendLoadError(f"{path}: unreadable dummy adapter options: {exc}") from None
        problems = option_problems(options) if isinstance(options, dict) else [("", "not a map")]
        if problems:
            raise BackendLoadError(f"{path}: {problems[0][0]}: {problems[0][1]}")
        for key in ("strength", "planted", "adapter_seed", "null_scale"):
            if key in options:
                setattr(self, key, options[key])

    def swap_adapter(self, path: str) -> None:
        """Become the adapter at ``path`` (its ``dummy_adapter.json`` options, if any).

        Options the file does not set get the constructor's values, exactly as a
        dummy built with the same spec options and this adapter would have them.
        """
        if self._active is not None:
            raise ViewError(f"cannot swap the adapter while view {self._active!r} is open")
        for key, value in self._given.items():
            setattr(self, key, value)
        self.adapter_id = str(path)
        self._apply_adapter_file(self.adapter_id)

    @contextmanager
    def _view(self, view_id: str, shift_fn: Any) -> Iterator[ScoringModel]:
        if self._active is not None:
            raise ViewError(f"cannot open view {view_id!r}: view {self._active!r} is still open")
        self._active = view_id
        try:
            yield DummyView(self, view_id, shift_fn)
        finally:
            self._active = None

    def _direction(self, seed: int) -> NDArray[np.float64]:
        """The trained shift's unit-RMS direction for one text."""
        v = _unit(seed, self.adapter_seed)
        if self.planted:
            base = _unit(seed, 0)
            top, second = np.argsort(-base, kind="stable")[:2]
            signal = np.zeros(VOCAB)
            signal[top], signal[second] = -math.sqrt(VOCAB / 2), math.sqrt(VOCAB / 2)
            v = v + self.planted * signal
            v = v / np.linalg.norm(v) * math.sqrt(VOCAB)
        return v

    def _trained(self, lam: float) -> Any:
        return lambda seed: lam * self.strength * self._direction(seed)

    def adapter_norms(self) -> dict[str, float]:
        return {"dummy": abs(self.strength) * math.sqrt(VOCAB)}

    def as_base(self) -> Any:
        return self._view("base", lambda seed: 0.0)

    def as_finetuned(self) -> Any:
        return self._view("ft", self._trained(1.0))

    def as_scaled_adapter(self, lam: float) -> Any:
        return self._view(f"scaled_{lam:g}", self._trained(lam))

    def as_null_adapter(
        self,
        seed: int,
        *,
        init_scale: float = 0.02,
        rank_scale: float = 1.0,
        construction: NullConstruction = "init_scale",
    ) -> Any:
        if not math.isfinite(rank_scale) or rank_scale <= 0:
            raise ValueError(f"rank_scale must be > 0, got {rank_scale}")
        root = math.sqrt(rank_scale)
        salt = 1_000_003 + seed
        shift: Any
        if construction == "init_scale":
            scale = self.null_scale * init_scale * root
            shift = lambda s: scale * _unit(s, salt)  # noqa: E731
        elif construction == "norm_matched":
            size = self.strength * root
            shift = lambda s: size * _unit(s, salt)  # noqa: E731
        elif construction == "permuted":
            size = self.strength * root

            def shift(s: int) -> NDArray[np.float64]:
                perm = np.random.default_rng([s, salt]).permutation(VOCAB)
                return size * self._direction(s)[perm]
        else:
            raise ValueError(f"unknown null construction {construction!r}")
        return self._view(f"null_{construction}_{seed}_s{init_scale:g}_r{rank_scale:g}", shift)

    def base_layout_pairs(
        self, prompts: Sequence[str], top_k: int
    ) -> list[tuple[TokenDist, TokenDist]]:
        """The dummy has no batching numerics: both layouts agree exactly."""
        with self.as_base() as view:
            return [
                (view.next_token_dist(p, top_k), view.next_token_dist(p, top_k)) for p in prompts
            ]

    def preflight_finite_check(self) -> tuple[bool, str]:
        for opener in (self.as_base, self.as_finetuned):
            with opener() as view:
                dist = view.next_token_dist("hello", top_k=8)
                if not np.all(np.isfinite(dist.logprobs)):
                    return False, f"non-finite logits in the {view.id} view (NaN/inf adapter?)"
        return True, ""

    def close(self) -> None:
        return None


__all__ = ["DummyDifferentialBackend", "DummyView"]
