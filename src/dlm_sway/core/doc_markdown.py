"""Plain markdown / text training documents → :class:`~dlm_sway.core.sections.Document`.

The syntax is deliberately small (``docs/documents.md`` is the user-facing
description):

* A line starting at column 0 with ``#`` or ``##`` and a space is a heading and
  opens a section titled by the heading text. ``###`` and deeper headings are
  ordinary content. Text before the first heading is an untitled prose section;
  a document without headings is one prose section. Headings inside
  triple-backtick code blocks do not count.
* Inside a section, ``Q:`` / ``A:`` lines (or ``### Q`` / ``### A`` sub-headings)
  make it an *instruction* section; ``Prompt:`` / ``Chosen:`` / ``Rejected:``
  lines (or the matching ``###`` sub-headings) make it a *preference* section.
  A field starts with the text after the marker and continues over following
  lines, blank ones included, until the next marker or the end of the section.
  Markers count only at column 0 and outside code blocks, and a section's
  markers are only read when it has an opening one (``Q`` or ``Prompt``), so a
  stray ``A:`` in running prose stays prose.
* An optional YAML front-matter block (``---`` on line 1 up to the next ``---``)
  is read with ``yaml.safe_load``; its mapping lands in ``Document.metadata``.

Section ids hash the kind and the whitespace-normalised content (never the
position or the title), so reordering sections keeps every id.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

import yaml

from dlm_sway.core.errors import SpecValidationError
from dlm_sway.core.sections import (
    Document,
    Section,
    SectionKind,
    SectionPreference,
    SectionProbe,
)

_HEADING = re.compile(r"(#{1,2})[ \t]+(.*?)(?:[ \t]+#+)?[ \t]*")
_COLON_MARKER = re.compile(r"(Q|A|Prompt|Chosen|Rejected):(.*)")
_HASH_MARKER = re.compile(r"### (Q|A|Prompt|Chosen|Rejected)( !probe)?")
_INSTRUCTION_MARKERS = frozenset({"Q", "A"})


def normalise_newlines(text: str) -> str:
    """Drop one leading BOM and turn CRLF and lone CR into LF."""
    if text.startswith("\ufeff"):
        text = text[1:]
    return text.replace("\r\n", "\n").replace("\r", "\n")


def is_code_fence(line: str) -> bool:
    """A column-0 triple-backtick line opens or closes a code block."""
    return line.startswith("```")


def slugify(title: str) -> str | None:
    """``"Rules of the Watch"`` → ``"rules-of-the-watch"``; None when nothing is left."""
    slug = re.sub(r"[^0-9a-z]+", "-", re.sub(r"['\u2019]", "", title.lower())).strip("-")
    return slug or None


def content_id(kind: str, content: str) -> str:
    """First 16 hex characters of SHA-256 over the kind and the normalised content.

    Normalisation: LF newlines, trailing whitespace stripped from every line,
    leading and trailing blank lines dropped. Position and title are not hashed.
    """
    lines = [line.rstrip() for line in normalise_newlines(content).split("\n")]
    normalised = "\n".join(lines).strip("\n")
    return hashlib.sha256(f"{kind}\n{normalised}".encode()).hexdigest()[:16]


def yaml_problem(exc: yaml.YAMLError) -> str:
    """The YAML library's short explanation, without its own (block-relative) line numbers."""
    problem = getattr(exc, "problem", None)
    mark = getattr(exc, "problem_mark", None)
    if isinstance(problem, str) and mark is not None:
        return f"{problem} (column {mark.column + 1})"
    return str(exc)


def strip_blank_edges(lines: list[str]) -> list[str]:
    """Remove whitespace-only lines from both ends."""
    start, end = 0, len(lines)
    while start < end and not lines[start].strip():
        start += 1
    while end > start and not lines[end - 1].strip():
        end -= 1
    return lines[start:end]


@dataclass(frozen=True, slots=True)
class _Marker:
    name: str
    inline: str
    index: int  # index into the section's body lines
    line: int  # 1-based line in the file


@dataclass(slots=True)
class _Block:
    title: str
    level: int
    heading_line: int  # 0 for the untitled leading block
    lines: list[tuple[int, str]]


def parse_markdown(text: str, *, source: str = "<text>") -> Document:
    """Parse markdown/plain text into typed sections. Raises :class:`SpecValidationError`."""
    all_lines = normalise_newlines(text).split("\n")
    front, body_start = _front_matter(all_lines, source)
    blocks = _split_blocks(all_lines, body_start)
    sections = tuple(s for s in (_section(b, source) for b in blocks) if s is not None)
    doc_title = next((b.title for b in blocks if b.level == 1), "")
    metadata: dict[str, object] = {"format": "markdown"}
    if front is not None:
        metadata["front_matter"] = front
        fm_title = front.get("title")
        if isinstance(fm_title, str) and fm_title.strip():
            doc_title = fm_title.strip()
    return Document(source=source, sections=sections, title=doc_title, metadata=metadata)


def _front_matter(lines: list[str], source: str) -> tuple[dict[str, object] | None, int]:
    """Return (mapping or None, index of the first body line)."""
    if not lines or lines[0] != "---":
        return None, 0
    try:
        close = lines.index("---", 1)
    except ValueError:
        return None, 0  # a lone horizontal rule, not front matter
    try:
        loaded = yaml.safe_load("\n".join(lines[1:close]))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 2 if mark is not None else 1
        raise SpecValidationError(
            f"front matter is not valid YAML ({yaml_problem(exc)}); fix the YAML between the two '---' "
            "lines, or remove them if they were meant as horizontal rules",
            source=f"{source}:{line}",
        ) from exc
    if not isinstance(loaded, dict):
        return None, 0  # '---' rules around ordinary text
    return {str(k): v for k, v in loaded.items()}, close + 1


def _split_blocks(lines: list[str], start: int) -> list[_Block]:
    blocks = [_Block(title="", level=0, heading_line=0, lines=[])]
    in_code = False
    for idx in range(start, len(lines)):
        line = lines[idx]
        if is_code_fence(line):
            in_code = not in_code
        elif not in_code and (m := _HEADING.fullmatch(line)):
            blocks.append(
                _Block(
                    title=m.group(2).strip(), level=len(m.group(1)), heading_line=idx + 1, lines=[]
                )
            )
            continue
        blocks[-1].lines.append((idx + 1, line))
    return blocks


def _section(block: _Block, source: str) -> Section | None:
    body = block.lines
    # Trim blank edges while keeping line numbers aligned with the text.
    texts = [t for _, t in body]
    first = next((i for i, t in enumerate(texts) if t.strip()), None)
    if first is None:
        return None  # heading with no text: nothing was trained on
    last = max(i for i, t in enumerate(texts) if t.strip())
    body = body[first : last + 1]
    content = "\n".join(t for _, t in body)
    markers = _markers(body)
    names = {m.name for m in markers}
    where = f"section {block.title!r}" if block.title else "the untitled leading section"
    kind: SectionKind = "prose"
    probes: tuple[SectionProbe, ...] = ()
    prefs: tuple[SectionPreference, ...] = ()
    if "Q" in names and "Prompt" in names:
        raise SpecValidationError(
            f"{where} mixes Q/A pairs and Prompt/Chosen/Rejected triples; put them under "
            "two separate headings",
            source=f"{source}:{block.heading_line or body[0][0]}",
        )
    if "Q" in names:
        kind = "instruction"
        probes = _pairs([m for m in markers if m.name in _INSTRUCTION_MARKERS], body, source)
    elif "Prompt" in names:
        kind = "preference"
        prefs = _triples([m for m in markers if m.name not in _INSTRUCTION_MARKERS], body, source)
    return Section(
        id=content_id(kind, content),
        kind=kind,
        content=content,
        title=block.title,
        probes=probes,
        preferences=prefs,
        tag=slugify(block.title),
    )


def _markers(body: list[tuple[int, str]]) -> list[_Marker]:
    found: list[_Marker] = []
    in_code = False
    for i, (lineno, line) in enumerate(body):
        if is_code_fence(line):
            in_code = not in_code
            continue
        if in_code:
            continue
        if m := _COLON_MARKER.fullmatch(line):
            found.append(_Marker(m.group(1), m.group(2).strip(), i, lineno))
        elif (h := _HASH_MARKER.fullmatch(line.rstrip())) and (
            h.group(2) is None or h.group(1) == "Q"
        ):
            found.append(_Marker(h.group(1), "", i, lineno))
    return found


def _field(marker: _Marker, end: int, body: list[tuple[int, str]]) -> str:
    lines = [marker.inline] if marker.inline else []
    lines += [t for _, t in body[marker.index + 1 : end]]
    return "\n".join(strip_blank_edges(lines)).strip()


def _fields(
    markers: list[_Marker],
    order: tuple[str, ...],
    body: list[tuple[int, str]],
    source: str,
) -> list[list[str]]:
    """Walk markers expecting ``order`` repeatedly; return one list of field texts per group."""
    groups: list[list[str]] = []
    ends = [m.index for m in markers[1:]] + [len(body)]
    for pos, (marker, end) in enumerate(zip(markers, ends, strict=True)):
        expected = order[pos % len(order)]
        if marker.name != expected:
            if pos % len(order) == 0:
                why = f"{marker.name!r} has no {expected!r} before it"
            else:
                prev = order[pos % len(order) - 1]
                why = f"{prev!r} must be followed by {expected!r}, found {marker.name!r}"
            raise SpecValidationError(
                f"{why}; markers go in the order {' → '.join(order)} "
                f"('{expected}: …' or a '### {expected}' sub-heading)",
                source=f"{source}:{marker.line}",
            )
        text = _field(marker, end, body)
        if not text:
            raise SpecValidationError(
                f"{marker.name!r} has no text; write it after the marker or on the lines below",
                source=f"{source}:{marker.line}",
            )
        if pos % len(order) == 0:
            groups.append([])
        groups[-1].append(text)
    if markers and len(markers) % len(order):
        last = markers[-1]
        missing = order[len(markers) % len(order)]
        raise SpecValidationError(
            f"{last.name!r} has no {missing!r} after it; add the {missing!r} part "
            "(or indent the line if it is ordinary prose)",
            source=f"{source}:{last.line}",
        )
    return groups


def _pairs(
    markers: list[_Marker], body: list[tuple[int, str]], source: str
) -> tuple[SectionProbe, ...]:
    groups = _fields(markers, ("Q", "A"), body, source)
    return tuple(SectionProbe(prompt=q, gold=a) for q, a in groups)


def _triples(
    markers: list[_Marker], body: list[tuple[int, str]], source: str
) -> tuple[SectionPreference, ...]:
    groups = _fields(markers, ("Prompt", "Chosen", "Rejected"), body, source)
    return tuple(SectionPreference(prompt=p, chosen=c, rejected=r) for p, c, r in groups)


__all__ = [
    "content_id",
    "is_code_fence",
    "normalise_newlines",
    "parse_markdown",
    "slugify",
    "strip_blank_edges",
    "yaml_problem",
]
