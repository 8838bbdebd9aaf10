"""YAML reading that refuses what ``yaml.safe_load`` silently accepts.

* A key given twice in one mapping is an error naming both lines: PyYAML keeps the
  last one, so a second ``suite:`` could drop the ``null_adapter`` and let a gate pass.
  (Merge keys, ``<<: *anchor``, may still be overridden: that is what they are for.)
* An integer too long to convert is an error at its line, not a ``ValueError``.
* :func:`unusable_values` finds strings no encoder can write (an unpaired UTF-16
  surrogate, which a JSON-syntax spec yields for ``"\\ud83d"``, crashes the
  tokenizer, the terminal and every report long after the spec "validated") and
  recursive aliases.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any

import yaml
from yaml.constructor import ConstructorError
from yaml.nodes import MappingNode, Node, ScalarNode

_MERGE_TAG = "tag:yaml.org,2002:merge"


class StrictLoader(yaml.SafeLoader):
    """``SafeLoader`` whose mappings reject duplicate keys."""

    def construct_mapping(self, node: MappingNode, deep: bool = False) -> dict[Hashable, Any]:
        seen: dict[Hashable, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == _MERGE_TAG:
                continue
            if not isinstance(key_node, ScalarNode):
                continue  # complex keys: SafeLoader's own checks apply
            key = self.construct_object(key_node, deep=False)
            try:
                first = seen.get(key)
            except TypeError:
                continue  # unhashable: SafeLoader reports it
            line = key_node.start_mark.line + 1
            if first is not None:
                raise ConstructorError(
                    "while reading a mapping",
                    node.start_mark,
                    f"duplicate key {key!r}: first at line {first}, again at line {line} "
                    "(YAML would silently keep only the last one; merge the two or rename one)",
                    key_node.start_mark,
                )
            seen[key] = line
        mapping = super().construct_mapping(node, deep=deep)
        if None in mapping and any(_is_null_word(k) for k, _ in node.value):
            # ``null: permuted`` is null_adapter's documented field; YAML 1.1 reads the
            # bare word as a None key. A spec has no None keys, so the word is meant.
            mapping["null"] = mapping.pop(None)
        return mapping

    def construct_yaml_int(self, node: Node) -> int:
        _refuse_base60(node)
        try:
            value: int = super().construct_yaml_int(node)  # type: ignore[arg-type]
        except ValueError:
            raise ConstructorError(
                None,
                None,
                f"an integer of {len(str(node.value))} characters is too long to read; "
                "no setting in a spec needs more than a few digits",
                node.start_mark,
            ) from None
        return value

    def construct_yaml_float(self, node: Node) -> float:
        _refuse_base60(node)
        value: float = super().construct_yaml_float(node)  # type: ignore[arg-type]
        return value

    def construct_yaml_str(self, node: Node) -> str:
        """Join escaped surrogate pairs into their character, as a JSON parser would.

        ``json.dumps`` writes 😀 as ``"\\ud83d\\ude00"``; PyYAML reads that as two
        lone surrogates. A valid pair becomes the character; a lone one stays and
        :func:`unusable_values` reports it with its path.
        """
        value: str = super().construct_yaml_str(node)
        if not _has_lone_surrogate(value):
            return value
        try:
            return value.encode("utf-16-le", "surrogatepass").decode("utf-16-le")
        except UnicodeDecodeError:
            return value


StrictLoader.add_constructor("tag:yaml.org,2002:int", StrictLoader.construct_yaml_int)
StrictLoader.add_constructor("tag:yaml.org,2002:float", StrictLoader.construct_yaml_float)
StrictLoader.add_constructor("tag:yaml.org,2002:str", StrictLoader.construct_yaml_str)


def _is_null_word(node: Node) -> bool:
    return isinstance(node, ScalarNode) and node.tag == _NULL_TAG and node.value in _NULL_WORDS


_NULL_TAG = "tag:yaml.org,2002:null"
_NULL_WORDS = frozenset({"null", "Null", "NULL"})


def _refuse_base60(node: Node) -> None:
    """YAML 1.1 reads ``1:30`` as the base-60 number 90: a silent surprise, refused."""
    if isinstance(node, ScalarNode) and ":" in str(node.value):
        raise ConstructorError(
            None,
            None,
            f"{node.value!r} is a base-60 number to YAML 1.1 (1:30 means 90); write the "
            "number itself, or quote it if you meant text",
            node.start_mark,
        )


def strict_load(text: str) -> Any:
    """Parse one YAML document with :class:`StrictLoader` (raises ``yaml.YAMLError``)."""
    return yaml.load(text, Loader=StrictLoader)  # noqa: S506 — a SafeLoader subclass


def _has_lone_surrogate(text: str) -> bool:
    return any("\ud800" <= ch <= "\udfff" for ch in text)


_SURROGATE = (
    "holds an unpaired UTF-16 surrogate (such as a lone \\ud83d escape), which no "
    "tokenizer or report can encode; write the character itself, or its full surrogate pair"
)
_CYCLE = "contains itself (a recursive YAML alias, &x ... *x); write the value out"


def unusable_values(data: Any, path: str = "") -> list[str]:
    """``"<path>: <problem>"`` for every value no later stage could use.

    * a string (or key) holding an unpaired surrogate, at its path
      (``suite[1] (name).prompts[3]``);
    * a container that contains itself (a recursive alias): pydantic, JSON and
      every report would recurse forever on it.

    Each container is walked once, so anchors shared many times cost nothing extra.
    """
    found: list[str] = []
    done: set[int] = set()
    active: set[int] = set()

    def visit(value: Any, where: str) -> None:
        shown = where or "<root>"
        if isinstance(value, str):
            if _has_lone_surrogate(value):
                found.append(f"{shown}: {_SURROGATE}")
            return
        if not isinstance(value, Mapping | list | tuple):
            return
        if id(value) in active:
            found.append(f"{shown}: {_CYCLE}")
            return
        if id(value) in done:
            return
        active.add(id(value))
        if isinstance(value, Mapping):
            for key, item in value.items():
                if isinstance(key, str) and _has_lone_surrogate(key):
                    found.append(f"{where + '.' if where else ''}<key {ascii(key)}>: {_SURROGATE}")
                    continue
                visit(item, f"{where}.{key}" if where else str(key))
        else:
            for i, item in enumerate(value):
                visit(item, f"{where}{_entry_label(where, i, item)}")
        active.discard(id(value))
        done.add(id(value))

    visit(data, path)
    if not found:
        size = expanded_size(data)
        if size > MAX_EXPANDED_VALUES:
            found.append(
                f"{path or '<root>'}: expands to {size:,} values through YAML aliases (more than "
                f"{MAX_EXPANDED_VALUES:,}; an alias bomb?); write the values out instead"
            )
    return found


#: A spec that expands past this many values through aliases is refused before validation
#: walks it (nine levels of nine-fold aliases would otherwise take minutes and gigabytes).
MAX_EXPANDED_VALUES = 1_000_000


def expanded_size(data: Any) -> int:
    """How many values ``data`` holds once every alias is written out (shared containers
    counted each time they are referenced, computed once each). Call on acyclic data."""
    memo: dict[int, int] = {}

    def size(value: Any) -> int:
        if isinstance(value, Mapping):
            children: Any = value.values()
        elif isinstance(value, list | tuple):
            children = value
        else:
            return 1
        key = id(value)
        if key not in memo:
            memo[key] = 1 + sum(size(item) for item in children)
        return memo[key]

    return size(data)


def _entry_label(where: str, i: int, item: Any) -> str:
    """``[i]``, plus `` (name)`` for a suite entry with a printable name."""
    label = f"[{i}]"
    if where == "suite" and isinstance(item, Mapping):
        name = item.get("name")
        if isinstance(name, str) and name.isprintable() and not _has_lone_surrogate(name):
            label += f" ({name})"
    return label


__all__ = ["MAX_EXPANDED_VALUES", "StrictLoader", "expanded_size", "strict_load", "unusable_values"]
