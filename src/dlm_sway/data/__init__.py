"""Packaged text data for the forgetting probes (written for this project; MIT).

* ``general_pack.jsonl``: short (prompt, gold continuation) items of general
  knowledge, one JSON object per line with ``id``, ``category``, ``prompt`` and
  ``gold``. Used by ``calibration_drift``.
* ``general_corpus.md``: plain general-English prose in topic sections, used by
  ``external_perplexity``.

Both are read once and cached; see ``README.md`` in this folder for provenance.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import cache
from importlib import resources

PACK_FILE = "general_pack.jsonl"
CORPUS_FILE = "general_corpus.md"

#: Windows shorter than this are dropped: they carry too few tokens to score.
MIN_CHUNK_CHARS = 64


@dataclass(frozen=True, slots=True)
class PackItem:
    """One general-knowledge item: the base model should continue ``prompt`` with ``gold``."""

    id: str
    category: str
    prompt: str
    gold: str


def _read(name: str) -> str:
    return resources.files(__package__).joinpath(name).read_text(encoding="utf-8")


@cache
def load_general_pack() -> tuple[PackItem, ...]:
    """Every item of the built-in pack, in file order. Malformed lines raise ValueError."""
    items: list[PackItem] = []
    for lineno, line in enumerate(_read(PACK_FILE).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            item = PackItem(
                id=str(row["id"]),
                category=str(row["category"]),
                prompt=str(row["prompt"]),
                gold=str(row["gold"]),
            )
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise ValueError(f"{PACK_FILE} line {lineno}: malformed item ({exc})") from exc
        if not item.prompt.strip() or not item.gold.strip():
            raise ValueError(f"{PACK_FILE} line {lineno}: empty prompt or gold")
        items.append(item)
    return tuple(items)


def pack_categories() -> tuple[str, ...]:
    """Categories of the built-in pack, in first-seen order."""
    return tuple(dict.fromkeys(item.category for item in load_general_pack()))


@cache
def corpus_sections() -> tuple[tuple[str, tuple[str, ...]], ...]:
    """(topic, paragraphs) per ``##`` section of the corpus; comments are dropped."""
    text = re.sub(r"<!--.*?-->", "", _read(CORPUS_FILE), flags=re.DOTALL)
    sections: list[tuple[str, list[str]]] = []
    for block in re.split(r"\n\s*\n", text):
        para = " ".join(block.split())
        if not para:
            continue
        if para.startswith("#"):
            sections.append((para.lstrip("#").strip(), []))
        elif sections:
            sections[-1][1].append(para)
        else:
            sections.append(("", [para]))
    return tuple((topic, tuple(paras)) for topic, paras in sections if paras)


def _units(paragraph: str, max_chars: int) -> list[str]:
    """A paragraph's sentences; a sentence longer than ``max_chars`` is cut at spaces."""
    out: list[str] = []
    for sentence in re.split(r"(?<=[.!?])\s+", paragraph):
        if len(sentence) <= max_chars:
            out.append(sentence)
            continue
        current = ""
        for word in sentence.split(" "):
            if current and len(current) + 1 + len(word) > max_chars:
                out.append(current)
                current = word
            else:
                current = f"{current} {word}" if current else word
        if current:
            out.append(current)
    return out


def _chunk_section(paragraphs: tuple[str, ...], max_chars: int) -> list[str]:
    """Pack whole sentences into chunks of at most ``max_chars`` (paragraph breaks kept)."""
    chunks: list[str] = []
    current = ""
    for para in paragraphs:
        for i, unit in enumerate(_units(para, max_chars)):
            sep = " " if i else "\n\n"
            candidate = f"{current}{sep}{unit}" if current else unit
            if len(candidate) <= max_chars:
                current = candidate
            else:
                chunks.append(current)
                current = unit
    if current:
        chunks.append(current)
    return [c for c in chunks if len(c) >= MIN_CHUNK_CHARS]


def load_general_corpus_chunks(n: int, max_chars: int) -> list[str]:
    """Up to ``n`` chunks of at most ``max_chars`` characters, spread over the topics.

    Chunks never straddle two topics and end at sentence boundaries (a sentence
    longer than ``max_chars`` is cut between words). They are taken round-robin across topics (first chunk of each
    topic, then the second...), so a small ``n`` still covers many subjects.
    Deterministic.
    """
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    if max_chars < MIN_CHUNK_CHARS:
        raise ValueError(f"max_chars must be at least {MIN_CHUNK_CHARS}, got {max_chars}")
    per_topic = [_chunk_section(paras, max_chars) for _, paras in corpus_sections()]
    out: list[str] = []
    depth = 0
    while len(out) < n and any(depth < len(chunks) for chunks in per_topic):
        for chunks in per_topic:
            if depth < len(chunks) and len(out) < n:
                out.append(chunks[depth])
        depth += 1
    return out


__all__ = [
    "CORPUS_FILE",
    "MIN_CHUNK_CHARS",
    "PACK_FILE",
    "PackItem",
    "corpus_sections",
    "load_general_corpus_chunks",
    "load_general_pack",
    "pack_categories",
]
