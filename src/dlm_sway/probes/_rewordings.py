"""Rewordings of a training prompt that really differ from it, and how close each one is.

A rewording that still contains the prompt ("Answer the following. <prompt>")
tests framing, not rewording: a model that memorised the exact token sequence
still sees it. So every rewording is measured by its **lexical overlap** with
the original, the share of the original's word bigrams (lower-cased, punctuation
dropped) that reappear in it: 1.0 for any rewording that contains the prompt,
≈ 0 for a real paraphrase. Rewordings above the probe's ``max_prompt_overlap``
are reported and left out of every "rewording" statistic.

Sources, in the order probes try them:

* the user's own ``paraphrases``;
* the document: instruction pairs that share one answer are rewordings of each
  other (authors often ask the same thing twice);
* the base model, asked to rephrase the question (greedy, then seeded samples);
  when the MiniLM embedder is installed, a generated rewording must also keep
  the meaning (cosine ≥ ``MIN_MEANING``), since a small model's "rephrasing" is
  sometimes another question.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from dlm_sway.core.scoring import (
    BASE_ONLY,
    ChatTurn,
    DifferentialBackend,
    GenerationSettings,
    ScoringModel,
    shared_forwards,
)
from dlm_sway.core.sections import Section
from dlm_sway.probes import _embed
from dlm_sway.probes._textgen import CannotGenerateError, write_batches

Source = Literal["spec", "document", "base_model"]
SOURCES: tuple[Source, ...] = ("spec", "document", "base_model")

REWORD_REQUEST = (
    "Rewrite the following question using different words, keeping exactly the same "
    "meaning. Reply with the rewritten question only.\n\nQuestion: {prompt}"
)
#: Cosine (MiniLM) a base-generated rewording must keep with the original.
MIN_MEANING = 0.5
_TOKEN = re.compile(r"\w+", re.UNICODE)
_LABEL = re.compile(
    r"^\s*(?:[-*>#\d.)\s]+)?(?:rewritten question|rephrased question|question|rewording)"
    r"\s*[:\-]\s*",
    re.IGNORECASE,
)
_QUOTES = "\"'“”‘’`*"


@dataclass(frozen=True, slots=True)
class Rewording:
    text: str
    overlap: float
    source: Source


def _tokens(text: str) -> list[str]:
    return [t.lower() for t in _TOKEN.findall(text)]


def overlap(original: str, rewording: str) -> float:
    """Share of ``original``'s word bigrams found in ``rewording`` (unigrams for one word)."""
    a, b = _tokens(original), _tokens(rewording)
    if not a:
        return 1.0
    n = 2 if len(a) >= 2 else 1
    grams = {tuple(a[i : i + n]) for i in range(len(a) - n + 1)}
    theirs = {tuple(b[i : i + n]) for i in range(len(b) - n + 1)}
    return len(grams & theirs) / len(grams)


def match_ending(original: str, rewording: str) -> str:
    """``rewording`` ending like ``original`` (same closing mark and trailing whitespace),
    so an answer appended to either is tokenised at the same kind of boundary."""
    core_orig = original.rstrip()
    tail_ws = original[len(core_orig) :]
    text = rewording.strip()
    mark = core_orig[-1:] if core_orig[-1:] in "?.:!" else ""
    if mark:
        text = text.rstrip("?.:!").rstrip() + mark
    return text + tail_ws


def from_document(sections: Iterable[Section]) -> dict[str, list[str]]:
    """Prompt → the document's other prompts that share its answer."""
    by_gold: dict[str, list[str]] = {}
    for section in sections:
        if section.kind != "instruction":
            continue
        for probe in section.probes:
            key = " ".join(_tokens(probe.gold))
            if key and probe.prompt.strip():
                by_gold.setdefault(key, []).append(probe.prompt)
    out: dict[str, list[str]] = {}
    for prompts in by_gold.values():
        for p in prompts:
            others = [q for q in dict.fromkeys(prompts) if q != p]
            if others:
                out.setdefault(p, []).extend(others)
    return out


def clean(generated: str, original: str) -> str | None:
    """The rewording in a generation (first line, labels and quotes stripped), or None."""
    for line in generated.splitlines():
        text = _LABEL.sub("", line).strip().strip(_QUOTES).strip()
        if not _tokens(text):
            continue
        if _tokens(text) == _tokens(original):
            return None
        return match_ending(original, text)
    return None


def from_base_model(
    view: ScoringModel,
    prompts: Sequence[str],
    *,
    per_prompt: int,
    max_new_tokens: int,
    seed: int,
    probe: str,
) -> dict[str, list[str]]:
    """Prompt → rewordings the base model wrote (greedy first, then seeded samples)."""
    requests = [(ChatTurn("user", REWORD_REQUEST.format(prompt=p.strip())),) for p in prompts]
    found: dict[str, list[str]] = {p: [] for p in prompts}
    batches = [
        (
            requests,
            GenerationSettings(
                max_new_tokens=max_new_tokens,
                temperature=0.0 if i == 0 else 0.8,
                seed=seed + i,
                stop=("\n\n",),
            ),
        )
        for i in range(per_prompt)
    ]
    for texts in write_batches(view, batches, probe=probe):
        for p, text in zip(prompts, texts, strict=True):
            got = clean(text, p)
            if got is not None and got not in found[p]:
                found[p].append(got)
    return found


def keeps_meaning(original: str, candidates: Sequence[str]) -> list[bool] | None:
    """Per candidate, whether MiniLM puts it within :data:`MIN_MEANING` of ``original``;
    None when no embedder is installed (the meaning then goes unchecked)."""
    if not candidates or _embed.missing_dependencies(need_kmeans=False):
        return None
    emb = _embed.embed([original, *candidates])
    sims = emb[1:] @ emb[0]
    return [bool(s >= MIN_MEANING) for s in np.asarray(sims)]


def screen(
    original: str, candidates: Sequence[str], source: Source, max_overlap: float
) -> tuple[list[Rewording], list[Rewording]]:
    """(distinct, too close): candidates at most / above ``max_overlap``."""
    keep: list[Rewording] = []
    close: list[Rewording] = []
    for text in dict.fromkeys(candidates):
        r = Rewording(text=text, overlap=overlap(original, text), source=source)
        (keep if r.overlap <= max_overlap else close).append(r)
    return keep, close


DerivedSource = Literal["document", "base_model"]
DERIVED_SOURCES: tuple[DerivedSource, ...] = ("document", "base_model")


@dataclass(frozen=True, slots=True)
class Search:
    """Where and how to look for rewordings of derived prompts."""

    sources: tuple[DerivedSource, ...] = DERIVED_SOURCES
    per_prompt: int = 2
    max_new_tokens: int = 48
    max_overlap: float = 0.5
    seed: int = 0


def gather(
    prompts: Sequence[str],
    given: Sequence[Sequence[str]] | None,
    search: Search,
    *,
    sections: Iterable[Section],
    backend: DifferentialBackend,
    probe: str,
) -> tuple[list[tuple[list[Rewording], list[Rewording]]], list[str]]:
    """Per prompt (distinct, too close) rewordings, and notes on what could not be done.

    ``given`` (the user's paraphrases, one list per prompt) is used as is; without
    it the search's sources are tried in order for each prompt still lacking a
    distinct rewording.
    """
    found: list[list[tuple[str, Source]]] = [[] for _ in prompts]
    notes: list[str] = []
    if given is not None:
        for i, texts in enumerate(given):
            found[i] += [(t, "spec") for t in texts]
    else:
        sections = tuple(sections)
        for source in search.sources:
            need = [
                i
                for i, p in enumerate(prompts)
                if not any(overlap(p, t) <= search.max_overlap for t, _ in found[i])
            ]
            if not need:
                break
            if source == "document":
                doc = from_document(sections)
                for i in need:
                    found[i] += [
                        (match_ending(prompts[i], q), "document") for q in doc.get(prompts[i], [])
                    ]
                continue
            asked = list(dict.fromkeys(prompts[i] for i in need))
            try:
                with shared_forwards(backend, BASE_ONLY), backend.as_base() as view:
                    made = from_base_model(
                        view,
                        asked,
                        per_prompt=search.per_prompt,
                        max_new_tokens=search.max_new_tokens,
                        seed=search.seed,
                        probe=probe,
                    )
            except CannotGenerateError as exc:
                notes.append(f"no base-model rewordings: {exc}")
                continue
            kept: dict[str, list[str]] = {}
            for p, texts in made.items():
                ok = keeps_meaning(p, texts)
                if ok is None:
                    notes.append("base-model rewordings kept without a meaning check (no embedder)")
                    ok = [True] * len(texts)
                kept[p] = [t for t, good in zip(texts, ok, strict=True) if good]
            for i in need:
                found[i] += [(t, "base_model") for t in kept.get(prompts[i], [])]
    out = []
    for i, p in enumerate(prompts):
        distinct: list[Rewording] = []
        close: list[Rewording] = []
        for kind in SOURCES:
            k, cl = screen(p, [t for t, s in found[i] if s == kind], kind, search.max_overlap)
            distinct += k
            close += cl
        out.append((distinct, close))
    return out, list(dict.fromkeys(notes))


__all__ = [
    "DERIVED_SOURCES",
    "DerivedSource",
    "Search",
    "gather",
    "MIN_MEANING",
    "REWORD_REQUEST",
    "SOURCES",
    "Rewording",
    "Source",
    "clean",
    "from_base_model",
    "from_document",
    "keeps_meaning",
    "match_ending",
    "overlap",
    "screen",
]
