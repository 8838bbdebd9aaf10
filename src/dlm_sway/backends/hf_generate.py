"""Batched, KV-cached generation on a loaded PEFT model (whatever view is active).

A hand-written decode loop rather than ``model.generate`` for two guarantees:

* **Seeded sampling per prompt.** Each prompt draws from its own
  ``torch.Generator`` seeded from ``(seed, prompt)``, so its text does not depend
  on which other prompts share the batch (``generate`` draws one stream for the
  whole batch).
* **Batched = one prompt.** Prompts are left-padded with an attention mask and
  explicit position ids, and rows that finish leave the batch and its KV cache.
  That alone is not exact: a row's logits differ between batch layouts by float
  rounding (≤ 2e-4 on SmolLM2 in fp32, even for unpadded equal-length rows, since
  the GEMM blocking depends on the batch size), which can flip a near-tie. So
  every decision checks its margin (:func:`tie_margin`, 50× the jitter), and a
  near-tie is re-decided on a *canonical* forward (the row alone, unpadded, no
  cache), which depends on the row's tokens only. While the jitter stays under
  half the margin, batched and one-prompt runs pick the same token at every step.

Text is decoded from the new tokens in the context of the prompt's last tokens
(so a SentencePiece leading space survives), with special tokens dropped.
"""

from __future__ import annotations

import hashlib
import inspect
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from transformers import PreTrainedTokenizerBase

from dlm_sway.backends.hf_few_rows import decoding
from dlm_sway.core.scoring import (
    Conversation,
    Generation,
    GenerationError,
    GenerationSettings,
    as_conversation,
    cut_at_stop,
    plain_text,
    prompt_cache_key,
)

#: Prompt tokens decoded with the new ones, so their joining whitespace is right.
_CONTEXT_TOKENS = 4


def has_chat_template(tokenizer: PreTrainedTokenizerBase) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def encode_prompt(
    tokenizer: PreTrainedTokenizerBase, prompt: str | Conversation, chat: bool | None
) -> tuple[list[int], bool]:
    """Token ids of ``prompt`` and whether the chat template made them."""
    template = has_chat_template(tokenizer)
    if chat is True and not template:
        name = getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__
        raise GenerationError(
            f"chat: true needs a chat template, but the tokenizer of {name!r} has none; "
            "set chat: false (plain text) or leave it unset (template when there is one)"
        )
    if chat is False or not template:
        ids: list[int] = list(tokenizer(plain_text(prompt))["input_ids"])
        return ids, False
    turns = [{"role": t.role, "content": t.content} for t in as_conversation(prompt)]
    text = tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=True)
    if not isinstance(text, str):
        raise GenerationError("the tokenizer's chat template did not render to text")
    # The template writes its own special tokens (BOS, turn markers): add none.
    return list(tokenizer(text, add_special_tokens=False)["input_ids"]), True


def row_generator(seed: int, prompt: str | Conversation) -> torch.Generator:
    """The sampling stream of one prompt: a function of (seed, prompt) only."""
    digest = hashlib.sha256(f"{seed}\x00{prompt_cache_key(prompt)}".encode()).digest()
    gen = torch.Generator(device="cpu")
    gen.manual_seed(int.from_bytes(digest[:8], "little"))
    return gen


def tie_margin(dtype: torch.dtype) -> float:
    """Logit margin under which a decision is re-made on the canonical forward.

    Batched and one-prompt forwards differ by float rounding (measured on SmolLM2
    in fp32: up to 2e-4 in a logit, also between two *unpadded* equal-length rows,
    because the GEMM blocking depends on the batch size). A margin 50× that keeps
    every decision either robust to it or re-made identically.
    """
    return 1e-2 if dtype in (torch.float32, torch.float64) else 0.5


def gumbel_noise(vocab: int, gen: torch.Generator) -> torch.Tensor:
    """One step's Gumbel(0, 1) draws, one per token, from the row's own stream."""
    u = torch.rand(vocab, generator=gen, dtype=torch.float64).clamp(1e-300, 1.0 - 1e-16)
    return -torch.log(-torch.log(u))


def choose(
    logits: torch.Tensor, settings: GenerationSettings, gumbel: torch.Tensor | None, margin: float
) -> tuple[int, bool]:
    """The next token from one logit row, and whether ``margin`` of jitter could change it.

    Greedy: the argmax. Sampling: the Gumbel-max trick, ``argmax(logits/T + gumbel)``
    over the top-p nucleus, an exact draw from the temperature-scaled nucleus whose
    near-ties are as rare as greedy ones (an inverse-CDF draw lands near a boundary
    whenever the picked token is unlikely). Robust when the winner leads by
    ``margin`` (``margin/T`` after scaling) and the nucleus cut sits ``margin/T`` of
    probability mass from ``top_p`` (a logit shift of η moves the CDF by ≤ 2η/T).
    """
    if gumbel is None:
        scores = logits.to(torch.float64)
        robust = True
    else:
        scaled = logits.to("cpu", torch.float64) / settings.temperature
        scores = scaled + gumbel
        robust = True
        if settings.top_p < 1.0:
            order = torch.sort(scaled.softmax(dim=-1), descending=True, stable=True)
            cum = order.values.cumsum(dim=-1)
            top_p = torch.tensor([settings.top_p], dtype=torch.float64)
            cut = min(int(torch.searchsorted(cum, top_p)), len(cum) - 1)
            eps = margin / settings.temperature
            robust = abs(float(cum[cut]) - settings.top_p) >= eps and (
                cut == 0 or abs(float(cum[cut - 1]) - settings.top_p) >= eps
            )
            outside = order.indices[cut + 1 :]
            scores = scores.index_fill(0, outside, -math.inf)
        margin = margin / settings.temperature
    if scores.shape[-1] > 1:
        top = torch.topk(scores, 2).values.tolist()
        robust = robust and top[0] - top[1] >= margin
    return int(torch.argmax(scores)), robust


@dataclass
class Row:
    index: int
    prompt_ids: list[int]
    templated: bool
    settings: GenerationSettings
    generator: torch.Generator | None
    group: int = 0  # see ``HFGenerator.generate(groups=...)``
    new: list[int] = field(default_factory=list)
    text: str = ""
    finish: Literal["stop", "eos", "length"] | None = None


class HFGenerator:
    """Generate for many prompts on whatever view of ``model`` is active."""

    def __init__(
        self,
        model: Any,
        tokenizer: PreTrainedTokenizerBase,
        *,
        device: torch.device,
        batch_size: int,
        pad_id: int,
        logits_to_keep: bool,
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        #: Decisions re-made on the canonical forward (near-ties), for benchmarks.
        self.recomputed = 0
        self.margin = tie_margin(next(model.parameters()).dtype)
        self.device = device
        self.batch_size = batch_size
        self.pad_id = pad_id
        self._logits_to_keep = logits_to_keep
        eos = getattr(model, "generation_config", None)
        eos_ids = getattr(eos, "eos_token_id", None)
        if eos_ids is None:
            eos_ids = tokenizer.eos_token_id
        ids = eos_ids if isinstance(eos_ids, list | tuple) else [eos_ids]
        self.eos_ids = frozenset(int(i) for i in ids if i is not None)
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        self.max_positions: int | None = getattr(base.config, "max_position_embeddings", None)
        # transformers 5 renamed ``past_key_values`` to ``cache`` (the old name still warns).
        params = inspect.signature(base.forward).parameters
        self._cache_kw = "cache" if "cache" in params else "past_key_values"

    def generate(
        self,
        prompts: Sequence[str | Conversation],
        settings: GenerationSettings,
        groups: Sequence[int] | None = None,
    ) -> list[Generation]:
        """``groups``: a tag per prompt that :meth:`_forward` and :meth:`_canonical` of a
        subclass may read (rows of several adapters in one batch); plain runs pass none."""
        return self.generate_each(prompts, [settings] * len(prompts), groups)

    def generate_each(
        self,
        prompts: Sequence[str | Conversation],
        settings: Sequence[GenerationSettings],
        groups: Sequence[int] | None = None,
    ) -> list[Generation]:
        """Prompt ``i`` written under ``settings[i]``, all in the same decode batches: a
        greedy and a sampled request of one prompt cost one pass over the weights per
        step instead of two, and each row's text is still the one it gets alone (its
        own sampling stream, its own stop, near-ties re-decided canonically)."""
        if len(settings) != len(prompts):
            raise ValueError(f"{len(settings)} settings for {len(prompts)} prompts")
        if groups is not None and len(groups) != len(prompts):
            raise ValueError(f"{len(groups)} groups for {len(prompts)} prompts")
        rows: list[Row] = []
        for i, (prompt, own) in enumerate(zip(prompts, settings, strict=True)):
            ids, templated = encode_prompt(self.tokenizer, prompt, own.chat)
            if not ids:
                raise GenerationError(
                    f"prompt {i} encodes to zero tokens and the tokenizer adds no BOS token: "
                    "there is nothing to continue; give it some text"
                )
            total = len(ids) + own.max_new_tokens
            if self.max_positions is not None and total > self.max_positions:
                raise GenerationError(
                    f"prompt {i} has {len(ids)} tokens; with max_new_tokens "
                    f"{own.max_new_tokens} that is {total}, past the model's "
                    f"{self.max_positions} positions: shorten the prompt or max_new_tokens"
                )
            gen = None if own.greedy else row_generator(own.seed, prompt)
            rows.append(Row(i, ids, templated, own, gen, 0 if groups is None else groups[i]))
        for chunk in _length_chunks(rows, self._chunk_rows(rows)):
            self._run(chunk)
        return [Generation(r.text, len(r.new), r.finish or "length", r.templated) for r in rows]

    def _chunk_rows(self, rows: Sequence[Row]) -> int:
        """Rows per decode batch (a subclass that mixes views may take more)."""
        return self.batch_size

    def _run(self, rows: list[Row]) -> None:
        """One padded chunk: prefill, then one cached forward per new token. Rows that
        start alike (one prompt under one view, asked greedily and sampled) share one
        prefill row, whose KV cache and logits each of them then gets a copy of."""
        starts: dict[tuple[int, tuple[int, ...]], int] = {}
        firsts: list[Row] = []  # the first row of each distinct start, prefilled
        source: list[int] = []  # per row, the index of its start among ``firsts``
        for row in rows:
            key = (row.group, tuple(row.prompt_ids))
            if key not in starts:
                starts[key] = len(firsts)
                firsts.append(row)
            source.append(starts[key])
        width = max(len(r.prompt_ids) for r in firsts)
        ids = torch.full((len(firsts), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(firsts), width), dtype=torch.long)
        for b, row in enumerate(firsts):
            ids[b, width - len(row.prompt_ids) :] = torch.tensor(row.prompt_ids)
            mask[b, width - len(row.prompt_ids) :] = 1
        positions = (mask.cumsum(dim=-1) - 1).clamp(min=0)
        extra: dict[str, Any] = {"logits_to_keep": 1} if self._logits_to_keep else {}
        live = list(rows)
        with torch.inference_mode(), decoding():
            out = self._forward(
                firsts,
                input_ids=ids.to(self.device),
                attention_mask=mask.to(self.device),
                position_ids=positions.to(self.device),
                use_cache=True,
                **extra,
            )
            cache = _cache_of(out)
            mask = mask.to(self.device)
            next_pos = positions[:, -1:].to(self.device) + 1
            logits = out.logits[:, -1, :]
            if len(firsts) < len(rows):
                index = torch.tensor(source, device=self.device)
                cache.batch_select_indices(index)
                mask, next_pos, logits = mask[index], next_pos[index], logits[index]
            while True:
                last = logits.float()
                keep: list[int] = []
                feed: list[int] = []
                for b, row in enumerate(live):
                    token = self._choose(last[b], row)
                    if self._advance(row, token):
                        keep.append(b)
                        feed.append(token)
                if not keep:
                    return
                if len(keep) < len(live):  # finished rows leave the batch and the cache
                    index = torch.tensor(keep, device=self.device)
                    cache.batch_select_indices(index)
                    mask, next_pos = mask[index], next_pos[index]
                    live = [live[b] for b in keep]
                mask = torch.cat([mask, mask.new_ones((len(live), 1))], dim=-1)
                out = self._forward(
                    live,
                    input_ids=torch.tensor(feed, device=self.device).unsqueeze(-1),
                    attention_mask=mask,
                    position_ids=next_pos,
                    use_cache=True,
                    **{self._cache_kw: cache},
                )
                logits = out.logits[:, -1, :]
                next_pos = next_pos + 1

    def _choose(self, logits: torch.Tensor, row: Row) -> int:
        """Decide on the batched logits; a near-tie is re-decided on the canonical forward.

        The canonical forward (this row alone, unpadded, no KV cache) depends on the
        row's tokens only, so both a batched and a one-prompt run re-decide a near-tie
        identically, and a decision robust to the jitter is the same in both.
        """
        noise, settings = None, row.settings
        if row.generator is not None:  # one draw per step, used or not: streams stay aligned
            noise = gumbel_noise(int(logits.shape[-1]), row.generator)
        token, robust = choose(logits, settings, noise, self.margin)
        if robust:
            return token
        self.recomputed += 1
        return choose(self._canonical(row), settings, noise, 0.0)[0]

    def _forward(self, rows: Sequence[Row], **inputs: Any) -> Any:
        """One batched forward over ``rows`` (in batch order)."""
        return self.model(**inputs)

    def _canonical(self, row: Row) -> torch.Tensor:
        """The row's next-token logits from its tokens alone: unpadded, no KV cache."""
        ids = torch.tensor([row.prompt_ids + row.new], device=self.device)
        extra: dict[str, Any] = {"logits_to_keep": 1} if self._logits_to_keep else {}
        logits: torch.Tensor = self.model(input_ids=ids, use_cache=False, **extra).logits
        return logits[0, -1].float()

    def _advance(self, row: Row, token: int) -> bool:
        """Record ``token``; False once the row is finished."""
        settings = row.settings
        if token in self.eos_ids:
            row.finish = "eos"
            row.text = self._decode(row)
            return False
        row.new.append(token)
        if settings.stop:
            text, hit = cut_at_stop(self._decode(row), settings.stop)
            if hit:
                row.text, row.finish = text, "stop"
                return False
        if len(row.new) >= settings.max_new_tokens:
            row.text, row.finish = self._decode(row), "length"
            return False
        return True

    def _decode(self, row: Row) -> str:
        context = row.prompt_ids[-_CONTEXT_TOKENS:]
        head = self._text(context)
        full = self._text(context + row.new)
        return full[len(head) :] if head and full.startswith(head) else self._text(row.new)

    def _text(self, ids: list[int]) -> str:
        text = self.tokenizer.decode(ids, skip_special_tokens=True)
        return text if isinstance(text, str) else "".join(text)


def _cache_of(out: Any) -> Any:
    cache = getattr(out, "cache", None)
    return cache if cache is not None else out.past_key_values


def _length_chunks(rows: list[Row], batch_size: int) -> list[list[Row]]:
    """Rows sorted by prompt length (little padding), about ``batch_size`` per chunk.

    A last chunk under half the batch size is spread over the others instead (each
    then holds at most 1.5× the batch size): a decode step costs nearly as much at 4
    rows as at 16 on CPU, so 36 rows run faster as one chunk than as 32 + 4.
    """
    ordered = sorted(rows, key=lambda r: len(r.prompt_ids))
    count = -(-len(ordered) // batch_size)
    if count > 1 and len(ordered) - (count - 1) * batch_size < batch_size / 2:
        count -= 1
    size = max(1, -(-len(ordered) // max(count, 1)))
    return [ordered[i : i + size] for i in range(0, len(ordered), size)]


__all__ = [
    "HFGenerator",
    "encode_prompt",
    "has_chat_template",
    "choose",
    "gumbel_noise",
    "row_generator",
    "tie_margin",
]
