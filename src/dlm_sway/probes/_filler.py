"""Neutral padding text for probes that bury a prompt under unrelated context.

The passage is plain descriptive English about nothing in particular: no
instructions, no questions, no named entities a fine-tune is likely to have
seen, and no formatting. Probes cut it to a length in tokens (when the view can
count them) or in whitespace words.
"""

from __future__ import annotations

from collections.abc import Callable

FILLER_PASSAGE = (
    "The morning was mild and the streets were quiet. A few people walked past the row of "
    "shops, some carrying bags and others simply looking at the windows. The bakery on the "
    "corner had opened early, as it did every day, and the smell of bread drifted along the "
    "pavement. Further down the road a man was painting a fence a pale shade of green, "
    "working slowly from one end to the other. Clouds moved across the sky without any hurry, "
    "and now and then the sun came through and lit the tops of the trees. In the small park a "
    "gardener raked leaves into neat piles beside the path. Two children sat on a bench and "
    "shared an apple while a dog waited patiently at their feet. The bus arrived a little "
    "late, stopped for a moment, and then continued toward the station. Inside the library the "
    "tables were mostly empty, and the only sound was the turning of pages and the hum of an "
    "old heater near the door. A woman returned three books and chose two new ones from the "
    "shelf by the window. At noon the bells of the town hall rang twelve times. The market "
    "stalls were being set up for the afternoon, with boxes of apples, onions, and potatoes "
    "stacked on wooden crates. Someone was whistling a tune that nobody else seemed to know. "
    "By the river the water moved steadily under the old stone bridge, carrying a few leaves "
    "along with it. A cyclist stopped to check a map and then rode on. The afternoon passed in "
    "the same unremarkable way, with small errands, short conversations, and the ordinary "
    "noise of a town going about its business."
)

_WORDS: tuple[str, ...] = tuple(FILLER_PASSAGE.split())

#: Put between the padding and the prompt, so the prompt starts a fresh paragraph.
SEPARATOR = "\n\n"


def filler_words(n: int) -> str:
    """The first ``n`` words of the passage, repeated end to end as often as needed."""
    if n <= 0:
        return ""
    reps = -(-n // len(_WORDS))
    return " ".join((_WORDS * reps)[:n])


def filler_for_tokens(target: int, count: Callable[[str], int]) -> tuple[str, int]:
    """The longest word-prefix of the filler whose ``count`` is at most ``target``.

    ``count`` maps a text to its length in the caller's unit (tokens, or words).
    Returns the text and its measured length. Every word costs at least one
    token, so at most ``target`` words are needed; the count grows with the
    number of words, so a binary search finds the cut in ~log2(target) counts.
    """
    if target <= 0:
        return "", 0
    lo, hi = 0, target  # invariant: count(filler_words(lo)) <= target
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if count(filler_words(mid)) <= target:
            lo = mid
        else:
            hi = mid - 1
    text = filler_words(lo)
    return text, count(text) if lo else 0


def with_padding(padding: str, prompt: str) -> str:
    """``prompt`` preceded by ``padding`` and a paragraph break (the prompt alone if none)."""
    return f"{padding}{SEPARATOR}{prompt}" if padding else prompt


__all__ = ["FILLER_PASSAGE", "SEPARATOR", "filler_for_tokens", "filler_words", "with_padding"]
