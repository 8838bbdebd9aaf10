"""A training document as typed sections: what attribution and forgetting probes read.

Format-agnostic: the markdown and ``.dlm`` parsers both produce a
:class:`Document`. Probes never see the file format.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal

SectionKind = Literal["prose", "instruction", "preference"]


@dataclass(frozen=True, slots=True)
class SectionProbe:
    """A question and the answer the adapter was trained to give."""

    prompt: str
    gold: str


@dataclass(frozen=True, slots=True)
class SectionPreference:
    """A prompt with the preferred and the dispreferred completion."""

    prompt: str
    chosen: str
    rejected: str


@dataclass(frozen=True, slots=True)
class Section:
    """One typed section. ``content`` is the text the adapter trained on."""

    id: str
    kind: SectionKind
    content: str
    title: str = ""
    probes: tuple[SectionProbe, ...] = ()
    preferences: tuple[SectionPreference, ...] = ()
    tag: str | None = None


@dataclass(frozen=True, slots=True)
class Document:
    """A parsed training document plus what it says about its model and adapter."""

    source: str
    sections: tuple[Section, ...]
    title: str = ""
    base_model: str | None = None
    adapter_path: str | None = None
    metadata: dict[str, object] = field(default_factory=dict)

    @property
    def text(self) -> str:
        return "\n\n".join(s.content for s in self.sections if s.content)


def filter_kinds(sections: Iterable[Section], kinds: Iterable[SectionKind]) -> tuple[Section, ...]:
    wanted = set(kinds)
    return tuple(s for s in sections if s.kind in wanted)


__all__ = [
    "Document",
    "Section",
    "SectionKind",
    "SectionPreference",
    "SectionProbe",
    "filter_kinds",
]
