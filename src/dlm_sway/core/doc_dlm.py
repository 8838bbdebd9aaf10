"""Native reader for ``.dlm`` training documents (DocumentLanguageModel), no ``dlm`` import.

Supported subset (see ``docs/documents.md``):

* Front matter: line 1 ``---`` up to the next exact ``---``, read with
  ``yaml.safe_load``. ``dlm_id`` (26-character Crockford ULID) and ``base_model``
  are required; ``dlm_version`` (1–15), ``training``, ``export`` and
  ``system_prompt`` are checked for type only and kept in ``Document.metadata``.
  Other top-level keys are rejected, as dlm itself does. Training knobs are not
  validated — that is dlm's job.
* Body: ``::prose::``, ``::instruction::``, ``::preference::`` fences with an
  optional ``#adapter`` suffix, column-0 triple-backtick blocks that hide fences,
  and the ``::image …::`` / ``::audio …::`` attribute fences (checked, then
  skipped: sway has no media sections; they are listed in metadata). Leading
  ``<!-- dlm-auto-…: … -->`` provenance lines are lifted from instruction and
  preference sections by shape; their attributes are not validated.
* Instruction (``### Q`` / ``### A``, ``### Q !probe``) and preference
  (``### Prompt`` / ``### Chosen`` / ``### Rejected``) grammars are checked
  eagerly, one paragraph per field as in dlm; errors name the file line.

Section ids follow dlm's own definition (SHA-256 of ``type``, LF, raw content,
first 16 hex), so they match ``section_id`` in a dlm store's manifest.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from dlm_sway.core.dlm_store import dlm_home, dlm_store, find_dlm_adapter, resolve_base_model
from dlm_sway.core.doc_markdown import normalise_newlines, slugify, yaml_problem
from dlm_sway.core.errors import SpecValidationError
from dlm_sway.core.sections import (
    Document,
    Section,
    SectionKind,
    SectionPreference,
    SectionProbe,
)

MAX_DLM_VERSION = 15
_TOP_LEVEL_KEYS = ("dlm_id", "dlm_version", "base_model", "training", "export", "system_prompt")
_ULID = re.compile(r"[0-9A-HJKMNP-TV-Z]{26}")
_ADAPTER_NAME = re.compile(r"[a-z][a-z0-9_]{0,31}")
_BARE_FENCE = re.compile(r"::([A-Za-z0-9_#-]+)::")
_ATTR_FENCE = re.compile(r'::([a-z][a-z0-9_]*)((?:\s+[a-z][a-z0-9_]*="[^"\n]*")+)\s*::')
_ATTR = re.compile(r'([a-z][a-z0-9_]*)="([^"\n]*)"')
_MARKER = re.compile(r'<!-- dlm-auto-(harvest|mined|synth):((?: [a-z][a-z0-9_]*="[^"\n]*")+) -->')
_TEXT_TYPES: tuple[SectionKind, ...] = ("prose", "instruction", "preference")
_MEDIA_ATTRS = {"image": ({"path"}, {"path", "alt"}), "audio": ({"path", "transcript"},) * 2}
_MARKERS_ALLOWED = {"instruction": {"harvest", "synth"}, "preference": {"harvest", "mined"}}
_Q_HEADERS = {"### Q": False, "### Q !probe": True}
_PREF_HEADERS = ("### Prompt", "### Chosen", "### Rejected")


def dlm_section_id(kind: str, content: str) -> str:
    """dlm's text-section id: SHA-256 of ``kind``, LF, content; first 16 hex characters."""
    return hashlib.sha256(f"{kind}\n{normalise_newlines(content)}".encode()).hexdigest()[:16]


@dataclass(slots=True)
class _Open:
    """The section being collected while the body is scanned."""

    type: str
    start: int
    adapter: str | None = None
    attrs: dict[str, str] = field(default_factory=dict)
    lines: list[str] = field(default_factory=list)


def parse_dlm(
    text: str, *, source: str = "<text>", home: str | Path | None = None, find_adapter: bool = True
) -> Document:
    """Parse ``.dlm`` text; optionally locate its trained adapter in the dlm store."""
    lines = normalise_newlines(text).split("\n")
    front, close = _front_matter(lines, source)
    body_start = close + 2  # 1-based line number of the first body line
    body = "\n".join(lines[close + 1 :])
    if body.startswith("\n"):
        body, body_start = body[1:], body_start + 1
    body = body.removesuffix("\n")
    metadata = _metadata(front)
    sections: list[Section] = []
    media: list[dict[str, object]] = []
    adapters: dict[str, str] = {}
    probe_prompts: list[str] = []
    for raw in _tokenise(body.split("\n") if body else [], body_start, source):
        if raw.type in _MEDIA_ATTRS:
            media.append({"type": raw.type, "line": raw.start, **raw.attrs})
            continue
        built = _to_section(raw, source)
        if built is not None:
            section, flagged = built
            sections.append(section)
            probe_prompts += flagged
            if raw.adapter:
                adapters[section.id] = raw.adapter
    metadata["section_adapters"] = adapters
    metadata["probe_prompts"] = probe_prompts
    if media:
        metadata["skipped_media"] = media
    base, note = resolve_base_model(str(front["base_model"]))
    if note:
        metadata["base_model_note"] = note
    title = next((s.title for s in sections if s.kind == "prose" and s.title), "")
    doc = Document(
        source=source, sections=tuple(sections), title=title, base_model=base, metadata=metadata
    )
    if not find_adapter:
        return doc
    adapter = find_dlm_adapter(doc, home=home)
    if adapter is None:
        metadata["adapter_note"] = (
            f"no trained adapter under {dlm_store(doc, home=home)}; run `dlm train` first "
            "or set models.ft.adapter in the spec"
        )
        return doc
    return Document(
        source=source,
        sections=doc.sections,
        title=title,
        base_model=base,
        adapter_path=str(adapter),
        metadata=metadata,
    )


# --- front matter ---------------------------------------------------------------------------


def _front_matter(lines: list[str], source: str) -> tuple[dict[str, object], int]:
    """Validate the front matter; return (mapping, index of the closing '---')."""
    if not lines or lines[0] != "---":
        found = lines[0] if lines else ""
        raise SpecValidationError(
            f"a .dlm file starts with a line that is exactly '---' (found {found!r}); "
            "add the front-matter block with dlm_id and base_model",
            source=f"{source}:1",
        )
    try:
        close = lines.index("---", 1)
    except ValueError:
        raise SpecValidationError(
            "the front matter is never closed; add a line that is exactly '---' after it",
            source=f"{source}:1",
        ) from None
    try:
        loaded = yaml.safe_load("\n".join(lines[1:close]))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 2 if mark is not None else 2
        raise SpecValidationError(
            f"front matter is not valid YAML: {yaml_problem(exc)}", source=f"{source}:{line}"
        ) from exc
    if loaded is None:
        loaded = {}
    if not isinstance(loaded, dict):
        raise SpecValidationError(
            f"front matter must be a YAML mapping, not {type(loaded).__name__}",
            source=f"{source}:2",
        )
    _check_front(loaded, f"{source}:2")
    return {str(k): v for k, v in loaded.items()}, close


def _check_front(fm: dict[object, object], where: str) -> None:
    problems: list[str] = []
    unknown = sorted(str(k) for k in fm if k not in _TOP_LEVEL_KEYS)
    if unknown:
        problems.append(f"unknown key(s) {unknown}; allowed: {', '.join(_TOP_LEVEL_KEYS)}")
    dlm_id = fm.get("dlm_id")
    if dlm_id is None:
        problems.append("dlm_id is required (run `dlm init`, or copy it from the store folder)")
    elif not isinstance(dlm_id, str) or not _ULID.fullmatch(dlm_id):
        problems.append(
            f"dlm_id {dlm_id!r} must be a quoted 26-character ULID "
            "(uppercase Crockford base-32, no I, L, O or U)"
        )
    base = fm.get("base_model")
    if not isinstance(base, str) or not base.strip():
        problems.append(
            "base_model is required: a registry key such as smollm2-135m or hf:org/name"
        )
    version = fm.get("dlm_version")
    if version is not None and (isinstance(version, bool) or not isinstance(version, int)):
        problems.append(f"dlm_version must be an integer, not {type(version).__name__}")
    elif isinstance(version, int) and not 1 <= version <= MAX_DLM_VERSION:
        problems.append(
            f"dlm_version {version} is outside 1..{MAX_DLM_VERSION} "
            "(a newer document needs a newer sway; a version below 1 is invalid)"
        )
    for key in ("training", "export"):
        if key in fm and not isinstance(fm[key], dict):
            problems.append(f"{key} must be a mapping (delete the key to use the defaults)")
    prompt = fm.get("system_prompt")
    if prompt is not None and not isinstance(prompt, str):
        problems.append("system_prompt must be text")
    if problems:
        raise SpecValidationError("; ".join(problems), source=where)


def _metadata(front: dict[str, object]) -> dict[str, object]:
    training = front.get("training")
    declared: list[str] = []
    if isinstance(training, Mapping) and isinstance(training.get("adapters"), Mapping):
        declared = [str(name) for name in training["adapters"]]
    return {
        "format": "dlm",
        "dlm_id": front["dlm_id"],
        "dlm_version": front.get("dlm_version", 1),
        "base_model_key": front["base_model"],
        "system_prompt": front.get("system_prompt"),
        "training": training if isinstance(training, dict) else {},
        "export": front.get("export") if isinstance(front.get("export"), dict) else {},
        "declared_adapters": declared,
    }


# --- body -----------------------------------------------------------------------------------


def _tokenise(lines: list[str], first_line: int, source: str) -> list[_Open]:
    done: list[_Open] = []
    current = _Open(type="prose", start=first_line)
    in_code = False
    for offset, line in enumerate(lines):
        n = first_line + offset
        if line.startswith("```"):
            in_code = not in_code
        elif not in_code and (m := _ATTR_FENCE.fullmatch(line)):
            done.append(current)
            current = _Open(type=m.group(1), start=n, attrs=_media_attrs(m, f"{source}:{n}"))
            continue
        elif not in_code and (m := _BARE_FENCE.fullmatch(line)):
            done.append(current)
            kind, adapter = _bare_fence(m.group(1), f"{source}:{n}")
            current = _Open(type=kind, start=n, adapter=adapter)
            continue
        current.lines.append(line)
    if in_code:
        raise SpecValidationError(
            "a ``` code block opened in this section is never closed; add a closing ``` line",
            source=f"{source}:{current.start}",
        )
    done.append(current)
    return done


def _bare_fence(name: str, where: str) -> tuple[str, str | None]:
    kind, _, adapter = name.partition("#")
    if "#" in name:
        if not adapter:
            raise SpecValidationError(
                f"fence '::{name}::' has an empty adapter name after '#'", source=where
            )
        if not _ADAPTER_NAME.fullmatch(adapter):
            raise SpecValidationError(
                f"adapter name {adapter!r} must be 1-32 characters: a lowercase letter, then "
                "lowercase letters, digits or '_'",
                source=where,
            )
    if kind in _MEDIA_ATTRS:
        raise SpecValidationError(
            f"'::{name}::' needs attributes, e.g. ::{kind} path=\"file\"::", source=where
        )
    if kind not in _TEXT_TYPES:
        raise SpecValidationError(
            f"unknown section type {kind!r} in '::{name}::'; use one of "
            "::prose::, ::instruction::, ::preference:: (or escape the line in a ``` block)",
            source=where,
        )
    return kind, adapter or None


def _media_attrs(m: re.Match[str], where: str) -> dict[str, str]:
    kind = m.group(1)
    if kind in _TEXT_TYPES:
        raise SpecValidationError(f"::{kind}:: does not take attributes", source=where)
    if kind not in _MEDIA_ATTRS:
        raise SpecValidationError(
            f"unknown section type {kind!r}; only image and audio take attributes", source=where
        )
    required, allowed = _MEDIA_ATTRS[kind]
    attrs: dict[str, str] = {}
    for key, value in _ATTR.findall(m.group(2)):
        if key in attrs:
            raise SpecValidationError(f"attribute {key!r} is repeated", source=where)
        if key not in allowed:
            raise SpecValidationError(
                f"{kind} takes only {sorted(allowed)}, not {key!r}", source=where
            )
        if not value.isascii():
            raise SpecValidationError(f"attribute {key!r} must be ASCII", source=where)
        attrs[key] = value
    missing = sorted(required - attrs.keys())
    if missing:
        raise SpecValidationError(f"{kind} fence is missing {missing}", source=where)
    return attrs


def _to_section(raw: _Open, source: str) -> tuple[Section, list[str]] | None:
    """Build the sway section; also return the questions flagged ``!probe``."""
    lines = raw.lines
    lifted = 0
    allowed = _MARKERS_ALLOWED.get(raw.type, set())
    while lifted < len(lines) and (m := _MARKER.fullmatch(lines[lifted])) and m.group(1) in allowed:
        lifted += 1
    content = "\n".join(lines[lifted:])
    kind: SectionKind = "prose" if raw.type == "prose" else _text_kind(raw.type)
    if kind == "prose" and not content.strip():
        return None
    section_id = dlm_section_id(kind, content)
    first_content_line = raw.start + 1 + lifted  # only used for fenced sections
    probes: tuple[SectionProbe, ...] = ()
    prefs: tuple[SectionPreference, ...] = ()
    flagged: list[str] = []
    title = ""
    if kind == "instruction":
        pairs = _instruction(content, first_content_line, source)
        probes = tuple(p for p, _ in pairs)
        flagged = [p.prompt for p, is_probe in pairs if is_probe]
        content = "\n".join(
            "### Q" if ln.strip() == "### Q !probe" else ln for ln in lines[lifted:]
        )
    elif kind == "preference":
        prefs = _preference(content, first_content_line, source)
    else:
        head = next((ln for ln in lines if ln.strip()), "")
        if m := re.fullmatch(r"#{1,6}\s+(.*?)\s*#*\s*", head):
            title = m.group(1)
    section = Section(
        id=section_id,
        kind=kind,
        content=content,
        title=title,
        probes=probes,
        preferences=prefs,
        tag=slugify(title),
    )
    return section, flagged


def _text_kind(name: str) -> SectionKind:
    return "instruction" if name == "instruction" else "preference"


# --- instruction / preference grammars ------------------------------------------------------


class _Fields:
    """Cursor over a section's lines for the one-paragraph-per-field grammars."""

    def __init__(self, content: str, first_line: int, source: str, headers: set[str]) -> None:
        self.lines = content.splitlines()  # Unicode line boundaries, as dlm's grammar uses
        self.i = 0
        self.first_line = first_line
        self.source = source
        self.headers = headers

    def where(self, i: int | None = None) -> str:
        return f"{self.source}:{self.first_line + (self.i if i is None else i)}"

    def at_end(self) -> bool:
        return self.i >= len(self.lines)

    def current(self) -> str:
        return self.lines[self.i].strip()

    def skip_blank(self) -> None:
        while not self.at_end() and not self.current():
            self.i += 1

    def read(self) -> str:
        """Lines up to a blank line (consumed) or a header (kept), joined and trimmed."""
        taken: list[str] = []
        while not self.at_end():
            if not self.current():
                self.i += 1
                break
            if self.current() in self.headers:
                break
            taken.append(self.lines[self.i])
            self.i += 1
        return "\n".join(taken).strip()

    def fail(self, message: str, i: int | None = None) -> SpecValidationError:
        return SpecValidationError(message, source=self.where(i))


_ONE_PARAGRAPH = "each field in a .dlm block is one paragraph: remove the blank line inside it"


def _instruction(content: str, first_line: int, source: str) -> list[tuple[SectionProbe, bool]]:
    cur = _Fields(content, first_line, source, {*_Q_HEADERS, "### A"})
    pairs: list[tuple[SectionProbe, bool]] = []
    cur.skip_blank()
    while not cur.at_end():
        header_at = cur.i
        if cur.current() not in _Q_HEADERS:
            raise cur.fail(
                f"expected '### Q' alone on its line, found {cur.lines[cur.i]!r} "
                f"(question text goes on the next line; {_ONE_PARAGRAPH})"
            )
        is_probe = _Q_HEADERS[cur.current()]
        cur.i += 1
        question = cur.read()
        if not question:
            raise cur.fail("'### Q' has an empty question; write it on the next line", header_at)
        if cur.at_end():
            raise cur.fail("'### Q' has no '### A' after it; add the answer", header_at)
        if cur.current() != "### A":
            raise cur.fail(
                f"'### Q' must be followed by '### A', found {cur.lines[cur.i]!r} "
                f"({_ONE_PARAGRAPH})"
            )
        answer_at = cur.i
        cur.i += 1
        answer = cur.read()
        if not answer:
            raise cur.fail("'### A' has an empty answer; write it on the next line", answer_at)
        pairs.append((SectionProbe(prompt=question, gold=answer), is_probe))
        cur.skip_blank()
    if not pairs:
        raise cur.fail("instruction section has no '### Q' / '### A' pairs; add one", -1)
    return pairs


def _preference(content: str, first_line: int, source: str) -> tuple[SectionPreference, ...]:
    cur = _Fields(content, first_line, source, set(_PREF_HEADERS))
    triples: list[SectionPreference] = []
    cur.skip_blank()
    while not cur.at_end():
        values: list[str] = []
        for header in _PREF_HEADERS:
            if cur.at_end():
                raise cur.fail(f"expected {header!r}, but the section ends; add it", cur.i - 1)
            if cur.current() != header:
                raise cur.fail(
                    f"expected {header!r} alone on its line, found {cur.lines[cur.i]!r} "
                    f"(order is Prompt, Chosen, Rejected; {_ONE_PARAGRAPH})"
                )
            header_at = cur.i
            cur.i += 1
            value = cur.read()
            if not value:
                raise cur.fail(f"{header!r} is empty; write its text on the next line", header_at)
            values.append(value)
        triples.append(SectionPreference(prompt=values[0], chosen=values[1], rejected=values[2]))
        cur.skip_blank()
    if not triples:
        raise cur.fail(
            "preference section has no '### Prompt' / '### Chosen' / '### Rejected' triples; "
            "add one",
            -1,
        )
    return tuple(triples)


__all__ = [
    "MAX_DLM_VERSION",
    "dlm_home",
    "dlm_section_id",
    "dlm_store",
    "find_dlm_adapter",
    "parse_dlm",
    "resolve_base_model",
]
