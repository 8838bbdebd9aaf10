"""Stylometric features of a text and a Delta-style distance between two sets of texts.

Why these features: authorship attribution (Burrows' Delta and its successors)
shows that style lives in sentence shape, vocabulary richness, punctuation habits
and, most of all, the rates of function words, which a writer uses without
choosing them. Every feature is a *rate* (per word or per sentence), so a
64-token generation and a 3,000-word document are comparable; vocabulary
richness is the moving-average type-token ratio (MATTR), because the plain ratio
falls with text length and would make every short generation look "richer" than
its document.

Distance: each feature is standardised by a yardstick SD (the caller passes the
samples that define it), the mean absolute z-difference is taken within each
feature group, and the groups are averaged, so the ~40 function words do not
outvote the dozen other features. Pure numpy, no NLP models.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

#: Window of the moving-average type-token ratio (words).
MATTR_WINDOW = 25
#: Features whose yardstick SD is below this carry no information and are left out.
MIN_SD = 1e-9

_WORD = re.compile(r"[^\W\d_](?:[\w'’-]*\w)?")
_NUMBER = re.compile(r"\d+(?:[.,]\d+)*")
_SENTENCE_SPLIT = re.compile(r"(?<=[.!?])[\"'”’)\]]*\s+|\n+")

#: Common English function words (closed-class): the core of Burrows' Delta profiles.
FUNCTION_WORDS: tuple[str, ...] = (
    "the", "of", "and", "to", "a", "in", "is", "that", "it", "for", "was", "on", "with",
    "as", "by", "be", "at", "this", "are", "from", "or", "an", "not", "his", "her",
    "they", "we", "you", "i", "he", "she", "which", "but", "have", "has", "had", "will",
    "would", "can", "every", "all", "no", "their", "its", "there", "when", "who", "until",
)  # fmt: skip

#: Punctuation marks counted per 100 words: name → characters (dashes include "--").
PUNCTUATION: dict[str, str] = {
    "comma": ",",
    "period": ".",
    "semicolon": ";",
    "colon": ":",
    "dash": "—–",
    "paren": "()",
    "quote": '"“”',
    "exclamation": "!",
    "question": "?",
}

#: Feature groups, each weighing the same in the distance.
GROUPS: tuple[str, ...] = ("sentences", "vocabulary", "punctuation", "function_words")


def feature_names() -> list[tuple[str, str]]:
    """(group, feature) for every coordinate of :func:`features`, in order."""
    out = [
        ("sentences", "words_per_sentence"),
        ("sentences", "sentence_length_sd"),
        ("sentences", "line_breaks_per_100_words"),
        ("vocabulary", "mattr"),
        ("vocabulary", "mean_word_chars"),
        ("vocabulary", "long_word_share"),
        ("vocabulary", "capitalised_share"),
        ("vocabulary", "numbers_per_100_words"),
    ]
    out += [("punctuation", f"{name}_per_100_words") for name in PUNCTUATION]
    out += [("function_words", f"fw_{w}") for w in FUNCTION_WORDS]
    return out


def words(text: str) -> list[str]:
    return _WORD.findall(text)


def sentences(text: str) -> list[str]:
    """Pieces ending in . ! ? (or a line break) that contain at least one word."""
    return [s for s in _SENTENCE_SPLIT.split(text) if words(s)]


def mattr(tokens: Sequence[str], window: int = MATTR_WINDOW) -> float:
    """Mean type-token ratio over every window of ``window`` words (plain TTR if shorter)."""
    if not tokens:
        return 0.0
    lowered = [t.lower() for t in tokens]
    if len(lowered) <= window:
        return len(set(lowered)) / len(lowered)
    counts: dict[str, int] = {}
    for t in lowered[:window]:
        counts[t] = counts.get(t, 0) + 1
    total = len(counts)
    for i in range(window, len(lowered)):
        new, old = lowered[i], lowered[i - window]
        counts[new] = counts.get(new, 0) + 1
        counts[old] -= 1
        if counts[old] == 0:
            del counts[old]
        total += len(counts)
    return total / (len(lowered) - window + 1) / window


def features(text: str) -> NDArray[np.float64] | None:
    """The feature vector of one text (order: :func:`feature_names`), None without words."""
    toks = words(text)
    if not toks:
        return None
    n = len(toks)
    per100 = 100.0 / n
    lengths = np.array([len(words(s)) for s in sentences(text)] or [n], dtype=np.float64)
    lowered = [t.lower() for t in toks]
    # A capital not at a sentence start marks names and titles (a strong register cue).
    first_words = {words(s)[0] for s in sentences(text)}
    capitalised = sum(1 for t in toks if t[:1].isupper() and t not in first_words)
    row = [
        float(lengths.mean()),
        float(lengths.std()),
        text.count("\n") * per100,
        mattr(toks),
        float(np.mean([len(t) for t in toks])),
        sum(1 for t in toks if len(t) >= 7) / n,
        capitalised / n,
        len(_NUMBER.findall(text)) * per100,
    ]
    row += [sum(text.count(c) for c in chars) * per100 for chars in PUNCTUATION.values()]
    fw_counts = dict.fromkeys(FUNCTION_WORDS, 0)
    for t in lowered:
        if t in fw_counts:
            fw_counts[t] += 1
    row += [fw_counts[w] / n for w in FUNCTION_WORDS]
    return np.asarray(row, dtype=np.float64)


def chunks(text: str, words_per_chunk: int) -> list[str]:
    """``text`` cut at sentence ends into pieces of about ``words_per_chunk`` words.

    The document is compared piecewise, at the length of the generations, so its
    own spread is measured on texts of the same size.
    """
    out: list[str] = []
    cur: list[str] = []
    count = 0
    for line in text.splitlines(keepends=True):
        for sent in re.split(r"(?<=[.!?])(?=\s)", line):
            cur.append(sent)
            count += len(words(sent))
            if count >= words_per_chunk:
                out.append("".join(cur))
                cur, count = [], 0
    if count:
        if out and count < words_per_chunk // 2:
            out[-1] += "".join(cur)
        else:
            out.append("".join(cur))
    return [c for c in out if words(c)]


def matrix(texts: Sequence[str]) -> NDArray[np.float64]:
    """One feature row per text that has words (texts without words are left out)."""
    rows = [f for f in (features(t) for t in texts) if f is not None]
    if not rows:
        return np.zeros((0, len(feature_names())), dtype=np.float64)
    return np.vstack(rows)


@dataclass(frozen=True, slots=True)
class Yardstick:
    """Per-feature SDs that turn feature differences into z units (NaN: feature unused)."""

    sd: NDArray[np.float64]

    @classmethod
    def from_samples(cls, rows: NDArray[np.float64]) -> Yardstick:
        if rows.shape[0] < 2:
            raise ValueError("a yardstick needs at least 2 samples")
        sd = rows.std(axis=0, ddof=1)
        return cls(np.where(sd > MIN_SD, sd, np.nan))

    @property
    def used(self) -> int:
        return int(np.sum(np.isfinite(self.sd)))


def delta(a: NDArray[np.float64], b: NDArray[np.float64], yard: Yardstick) -> float:
    """Group-averaged mean |z|-difference between two mean feature vectors."""
    z = np.abs(a - b) / yard.sd
    names = feature_names()
    per_group = []
    for group in GROUPS:
        idx = [i for i, (g, _) in enumerate(names) if g == group and np.isfinite(z[i])]
        if idx:
            per_group.append(float(np.mean(z[idx])))
    return float(np.mean(per_group)) if per_group else 0.0


__all__ = [
    "FUNCTION_WORDS",
    "GROUPS",
    "MATTR_WINDOW",
    "PUNCTUATION",
    "Yardstick",
    "chunks",
    "delta",
    "feature_names",
    "features",
    "matrix",
    "mattr",
    "sentences",
    "words",
]
