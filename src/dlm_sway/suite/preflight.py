"""Checks on a loaded suite that need the model but no forward pass.

:func:`check_context` refuses a suite whose texts do not fit the model's
context window. Without it a 20,000-token prompt against 512 positions runs
(for minutes), scores positions the model never saw, and can still PASS.

The walk is generic, not per probe: every string in an enabled probe entry is
a text some probe may score, and a mapping with a ``prompt`` is scored as the
prompt followed by each of its completion fields (that concatenation is what
the model reads). A ``context_lengths`` field pads each prompt by up to its
largest value in tokens. With ``dlm_source``, section Q/A pairs and
preference triples are checked the same way, and section content up to the
longest ``max_prose_chars`` an enabled entry declares.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from dlm_sway.core.errors import SpecValidationError
from dlm_sway.core.scoring import ContextWindow, DifferentialBackend
from dlm_sway.core.sections import Section
from dlm_sway.suite.loader import LoadedSpec

#: Fields scored as a completion after the ``prompt`` next to them.
COMPLETION_FIELDS = ("gold", "chosen", "rejected", "completion", "answer", "response", "target")
#: Entry metadata that no probe scores.
_META_FIELDS = frozenset({"name", "kind"})


@dataclass(frozen=True, slots=True)
class ScoredText:
    """A text the suite will score: where it comes from, and extra tokens added to it."""

    where: str
    text: str
    padding: int = 0


def check_context(loaded: LoadedSpec, backend: DifferentialBackend) -> None:
    """Raise when any text the suite scores is longer than the model's context window."""
    if not isinstance(backend, ContextWindow):
        return
    limit = backend.max_context_tokens()
    if limit is None:
        return
    items = scored_texts(loaded)
    if not items:
        return
    counts = backend.count_tokens([item.text for item in items])
    over = [(item, n) for item, n in zip(items, counts, strict=True) if n + item.padding > limit]
    if not over:
        return
    item, n = max(over, key=lambda pair: pair[1] + pair[0].padding)
    padding = f" + {item.padding} padding tokens (context_lengths)" if item.padding else ""
    more = f"; {len(over) - 1} more text(s) are too long as well" if len(over) > 1 else ""
    raise SpecValidationError(
        f"{item.where} is {n} tokens{padding}, but the model reads at most {limit} tokens "
        f"(its maximum positions){more}. Scoring it would run on positions the model never "
        "saw; shorten the text"
        + (" or lower context_lengths" if item.padding else "")
        + " or use a model with a longer context",
        source=loaded.path,
    )


def scored_texts(loaded: LoadedSpec) -> list[ScoredText]:
    """Every text the enabled entries (and, with ``dlm_source``, the document) will score."""
    out: list[ScoredText] = []
    prose_chars = 0
    for index, (_, spec) in enumerate(loaded.probes):
        if not spec.enabled:
            continue
        data = spec.model_dump(mode="python")
        padding = _max_int(data.get("context_lengths"))
        label = f"suite[{index}] {spec.name!r} ({spec.kind})"
        for key, value in data.items():
            if key not in _META_FIELDS:
                _walk(value, f"{label}: {key}", padding, out)
        chars = data.get("max_prose_chars")
        if isinstance(chars, int) and not isinstance(chars, bool):
            prose_chars = max(prose_chars, chars)
    if loaded.document is not None:
        for section in loaded.document.sections:
            out.extend(_section_texts(section, prose_chars))
    return out


def _walk(node: Any, where: str, padding: int, out: list[ScoredText]) -> None:
    if isinstance(node, str):
        out.append(ScoredText(where, node, padding))
    elif isinstance(node, Mapping):
        for key, value in node.items():
            _walk(value, f"{where}.{key}", padding, out)
        prompt = node.get("prompt")
        if isinstance(prompt, str):
            prompts = [("prompt", prompt)] + [
                (f"{key}[{i}]", p)
                for key, value in node.items()
                if isinstance(value, list)
                for i, p in enumerate(value)
                if isinstance(p, str)
            ]
            for field in COMPLETION_FIELDS:
                completion = node.get(field)
                if isinstance(completion, str):
                    for key, p in prompts:
                        out.append(ScoredText(f"{where}.{key} + {field}", p + completion, padding))
    elif isinstance(node, list | tuple):
        for i, value in enumerate(node):
            _walk(value, f"{where}[{i}]", padding, out)


def _section_texts(section: Section, prose_chars: int) -> list[ScoredText]:
    where = f"dlm_source section {section.id!r}"
    out: list[ScoredText] = []
    for i, probe in enumerate(section.probes):
        out.append(ScoredText(f"{where} probes[{i}].prompt + gold", probe.prompt + probe.gold))
    for i, pref in enumerate(section.preferences):
        for field, completion in (("chosen", pref.chosen), ("rejected", pref.rejected)):
            out.append(
                ScoredText(f"{where} preferences[{i}].prompt + {field}", pref.prompt + completion)
            )
    if prose_chars and section.content.strip() and not (section.probes or section.preferences):
        out.append(
            ScoredText(
                f"{where} content (first {prose_chars} chars, max_prose_chars)",
                section.content[:prose_chars],
            )
        )
    return out


def _max_int(value: Any) -> int:
    if isinstance(value, Sequence) and not isinstance(value, str):
        ints = [v for v in value if isinstance(v, int) and not isinstance(v, bool)]
        return max(ints, default=0)
    return 0


__all__ = ["COMPLETION_FIELDS", "ScoredText", "check_context", "scored_texts"]
