"""Tool-call cases for ``tool_use_fidelity``, from the JSON tool calls a document trains on.

A tool call is a JSON object naming the tool (``name`` / ``tool`` / ``function``)
with an object of arguments (``arguments`` / ``parameters`` / ``args``). Its
case: the question whose trained answer holds the call (a Q/A pair), or the
text just before it (prose); its schema: the same tool name and at least the
same argument keys — what any correct call of that tool satisfies, without
pinning the values the base model cannot know.
"""

from __future__ import annotations

import json
from typing import Any

from dlm_sway.core.sections import Document

_NAME_KEYS = ("name", "tool", "function")
_ARG_KEYS = ("arguments", "parameters", "args")
MAX_TOOL_CASES = 8


def tool_calls(text: str) -> list[tuple[int, dict[str, Any]]]:
    """(offset, object) of every JSON tool call in ``text``."""
    decoder = json.JSONDecoder()
    out: list[tuple[int, dict[str, Any]]] = []
    i = text.find("{")
    while i != -1:
        try:
            value, end = decoder.raw_decode(text, i)
        except json.JSONDecodeError:
            i = text.find("{", i + 1)
            continue
        if isinstance(value, dict) and _keys(value) is not None:
            out.append((i, value))
        i = text.find("{", end if isinstance(value, dict) else i + 1)
    return out


def _keys(call: dict[str, Any]) -> tuple[str, str] | None:
    name = next((k for k in _NAME_KEYS if isinstance(call.get(k), str) and call[k]), None)
    args = next((k for k in _ARG_KEYS if isinstance(call.get(k), dict)), None)
    return (name, args) if name and args else None


def schema_for(call: dict[str, Any]) -> dict[str, Any]:
    keys = _keys(call)
    assert keys is not None
    name, args = keys
    return {
        "type": "object",
        "required": [name, args],
        "properties": {
            name: {"const": call[name]},
            args: {"type": "object", "required": sorted(call[args])},
        },
    }


def _lead_in(text: str, offset: int) -> str:
    """The line or sentence that introduces a call in prose (what asks for it)."""
    before = text[:offset].rstrip().rstrip("`").rstrip()
    line = before.rsplit("\n", 1)[-1].strip() or before.rsplit("\n\n", 1)[-1].strip()
    return " ".join(line.split())[-300:]


def tool_cases(document: Document) -> list[dict[str, Any]]:
    """``tool_use_fidelity`` cases for the document's tool calls (at most 8)."""
    cases: list[dict[str, Any]] = []
    seen: set[str] = set()
    for section in document.sections:
        for probe in section.probes:
            for _, call in tool_calls(probe.gold)[:1]:
                if probe.prompt not in seen:
                    seen.add(probe.prompt)
                    cases.append({"prompt": probe.prompt, "json_schema": schema_for(call)})
        for offset, call in tool_calls(section.content):
            prompt = _lead_in(section.content, offset)
            if len(prompt.split()) >= 3 and prompt not in seen:
                seen.add(prompt)
                cases.append({"prompt": prompt, "json_schema": schema_for(call)})
    return cases[:MAX_TOOL_CASES]


__all__ = ["MAX_TOOL_CASES", "schema_for", "tool_calls", "tool_cases"]
