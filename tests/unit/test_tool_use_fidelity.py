"""``tool_use_fidelity`` on the dummy backend: JSON extraction, schema checks, harm verdicts.

:class:`ToolBackend` wraps the dummy: each view answers a case with a canned text
chosen per view kind (base, fine-tune, null), so every rate is known in advance.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from dlm_sway.backends.dummy import DummyDifferentialBackend
from dlm_sway.core.errors import SpecValidationError
from dlm_sway.core.result import Direction, Verdict, band_of
from dlm_sway.core.scoring import (
    NULL_CONSTRUCTIONS,
    ChatTurn,
    Conversation,
    Generation,
    GenerationSettings,
    ScoringModel,
)
from dlm_sway.probes.base import RunContext
from dlm_sway.probes.tool_use_fidelity import (
    ToolUseFidelityProbe,
    ToolUseFidelitySpec,
    check_answer,
    extract_json,
)
from dlm_sway.suite.loader import from_dict, load_spec
from dlm_sway.suite.runner import run

WEATHER = {
    "type": "object",
    "properties": {
        "name": {"const": "get_weather"},
        "arguments": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
            "required": ["city"],
        },
    },
    "required": ["name", "arguments"],
}
GOOD = '{"name": "get_weather", "arguments": {"city": "Oslo", "days": 2}}'
CASES = [
    {"prompt": f"Weather in city {i}?", "json_schema": WEATHER, "system": "Answer with JSON."}
    for i in range(6)
]
Answer = Callable[[Conversation], str]


def good(_: Conversation) -> str:
    return f"Sure:\n```json\n{GOOD}\n```"


def broken(_: Conversation) -> str:
    return '{"name": "get_weather", "arguments": {"city": 7'


def prose(_: Conversation) -> str:
    return "I cannot call tools, but Oslo is usually cold."


class ToolView:
    def __init__(self, inner: ScoringModel, answer: Answer, seen: list[Any]) -> None:
        self._inner = inner
        self._answer = answer
        self._seen = seen

    @property
    def id(self) -> str:
        return self._inner.id

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def generate_batch(
        self, prompts: Sequence[str | Conversation], settings: GenerationSettings
    ) -> list[Generation]:
        self._seen.extend((p, settings) for p in prompts)
        return [
            Generation(self._answer(p), 20, "eos", False)  # type: ignore[arg-type]
            for p in prompts
        ]


def _case(prompt: Conversation) -> int:
    return int(prompt[-1].content.split()[-1].rstrip("?"))


def breaking(n: int) -> Answer:
    """Breaks the calls of cases 0 .. n-1, answers the others correctly."""
    return lambda prompt: broken(prompt) if _case(prompt) < n else good(prompt)


class ToolBackend:
    """Canned answers per view; the k-th null view opened answers with ``null(k)``."""

    null_constructions = NULL_CONSTRUCTIONS

    def __init__(
        self,
        *,
        base: Answer = good,
        ft: Answer = good,
        null: Callable[[int], Answer] = lambda k: breaking(k % 3),
    ) -> None:
        self.inner = DummyDifferentialBackend()
        self._answers = {"base": base, "ft": ft}
        self._null = null
        self._nulls_opened = 0
        self.seen: list[Any] = []

    @contextmanager
    def _wrap(self, opener: Any, answer: Answer) -> Iterator[ScoringModel]:
        with opener as view:
            yield ToolView(view, answer, self.seen)  # type: ignore[misc]

    def as_base(self) -> Any:
        return self._wrap(self.inner.as_base(), self._answers["base"])

    def as_finetuned(self) -> Any:
        return self._wrap(self.inner.as_finetuned(), self._answers["ft"])

    def as_null_adapter(self, seed: int, **kw: Any) -> Any:
        self._nulls_opened += 1
        answer = self._null(self._nulls_opened)
        return self._wrap(self.inner.as_null_adapter(seed, **kw), answer)


def _suite(entry: dict[str, Any], *, nulls: int = 0) -> Any:
    suite = [{"name": "null", "kind": "null_adapter", "runs": nulls}] if nulls else []
    return from_dict(
        {
            "models": {"ft": {"kind": "dummy", "base": "b", "adapter": "a"}},
            "suite": [*suite, {"name": "tools", "kind": "tool_use_fidelity", **entry}],
        }
    )


# ---------------------------------------------------------------- extraction and schema


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (GOOD, json.loads(GOOD)),
        ("  [1, 2]  ", [1, 2]),
        (f"Here you go:\n```json\n{GOOD}\n```\nDone.", json.loads(GOOD)),
        ('```\n{"a": 1}\n```', {"a": 1}),
        ('Calling {"a": {"b": "}{"}} now', {"a": {"b": "}{"}}),
        ('oops {"a": } then {"b": "x\\"}"}', {"b": 'x"}'}),
    ],
)
def test_extract_json_finds_the_call(text: str, expected: Any) -> None:
    assert extract_json(text) == (True, expected)


@pytest.mark.parametrize(
    "text",
    ["no json here", '{"a": NaN}', '{"a": Infinity}', '{"unclosed": 1', "```json\n{bad}\n```"],
)
def test_extract_json_rejects_non_json(text: str) -> None:
    assert extract_json(text) == (False, None)


def test_check_answer_validates_against_the_schema() -> None:
    assert check_answer(GOOD, WEATHER).valid
    missing = check_answer('{"name": "get_weather", "arguments": {"days": 2}}', WEATHER)
    assert missing.parsed and not missing.valid and "city" in (missing.error or "")
    wrong = check_answer('{"name": "get_weather", "arguments": {"city": 3}}', WEATHER)
    assert wrong.parsed and not wrong.valid
    assert not check_answer(prose(()), WEATHER).parsed


# ---------------------------------------------------------------- spec


def test_bad_schema_is_a_load_error_naming_the_case() -> None:
    cases = [CASES[0], {"prompt": "x", "json_schema": {"type": "strng"}}]
    with pytest.raises(
        SpecValidationError, match=r"cases\.1\.json_schema.*not a valid JSON Schema"
    ):
        _suite({"cases": cases})


def test_schema_from_a_file(tmp_path: Path) -> None:
    path = tmp_path / "weather.json"
    path.write_text(json.dumps(WEATHER), encoding="utf-8")
    spec = ToolUseFidelitySpec(name="t", cases=[{"prompt": "p", "json_schema": str(path)}])  # type: ignore[list-item]
    assert spec.cases[0].schema_dict == WEATHER
    (tmp_path / "bad.json").write_text("{not json", encoding="utf-8")
    for name, match in [("missing.json", "cannot read schema file"), ("bad.json", "is not JSON")]:
        with pytest.raises(SpecValidationError, match=rf"cases\.0\.json_schema.*{match}"):
            _suite({"cases": [{"prompt": "p", "json_schema": str(tmp_path / name)}]})


def test_a_relative_schema_path_is_read_from_the_spec_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Like every other path in a spec: the same file whatever directory sway runs from,
    never a same-named file that happens to sit in the current directory."""
    project, elsewhere = tmp_path / "project", tmp_path / "elsewhere"
    (project / "schemas").mkdir(parents=True)
    (elsewhere / "schemas").mkdir(parents=True)
    (project / "schemas" / "call.json").write_text(json.dumps(WEATHER), encoding="utf-8")
    decoy = {"type": "object", "required": ["decoy"]}
    (elsewhere / "schemas" / "call.json").write_text(json.dumps(decoy), encoding="utf-8")
    spec_file = project / "sway.yaml"
    spec_file.write_text(
        json.dumps(
            {
                "models": {"ft": {"kind": "dummy", "base": "b", "adapter": "a"}},
                "suite": [
                    {
                        "name": "tools",
                        "kind": "tool_use_fidelity",
                        "cases": [{"prompt": "p", "json_schema": "schemas/call.json"}],
                    }
                ],
            }
        ),
        encoding="utf-8",
    )
    monkeypatch.chdir(elsewhere)
    ((_, pspec),) = load_spec(spec_file).probes
    assert isinstance(pspec, ToolUseFidelitySpec)
    assert pspec.cases[0].schema_dict == WEATHER


@pytest.mark.parametrize(
    "entry",
    [
        {"cases": []},
        {"cases": [{"prompt": "p", "json_schema": WEATHER, "schema": WEATHER}]},
        {"cases": [{"prompt": "  ", "json_schema": WEATHER}]},
        {"cases": CASES, "max_new_tokens": "64"},
        {"cases": CASES, "assert_validity_delta_gte": 0.5},
    ],
)
def test_spec_is_strict(entry: dict[str, Any]) -> None:
    with pytest.raises(SpecValidationError):
        _suite(entry)


# ---------------------------------------------------------------- verdicts


def test_unchanged_calls_pass_and_the_prompts_are_chat_turns() -> None:
    backend = ToolBackend()
    spec = ToolUseFidelitySpec.model_validate({"name": "t", "cases": CASES})
    result = ToolUseFidelityProbe().run(spec, RunContext(backend=backend))
    assert result.verdict is Verdict.PASS and result.direction is Direction.HARM
    assert result.raw == 0.0 and result.base_value == result.ft_value == 1.0
    prompt, settings = backend.seen[0]
    assert prompt == (
        ChatTurn("system", "Answer with JSON."),
        ChatTurn("user", "Weather in city 0?"),
    )
    assert settings.chat is None and settings.greedy
    assert result.generations[0].prompt == "Weather in city 0?"
    assert result.generations[0].finetuned == good(prompt)


def test_broken_calls_fail_against_intact_nulls() -> None:
    result = run(_suite({"cases": CASES}, nulls=10), ToolBackend(ft=broken)).by_name("tools")
    assert result.verdict is Verdict.FAIL, result.message
    assert result.headline == "forgets more than random adapters"
    assert result.raw == -1.0 and result.ft_value == 0.0
    assert result.null is not None and result.null.k == 10 and result.null.degenerate is None
    assert result.evidence["broken_cases"] == list(range(6))
    assert band_of([result], 1.0).name == "harmful"


def test_a_drop_random_adapters_share_is_only_a_warning() -> None:
    backend = ToolBackend(ft=breaking(5), null=lambda k: breaking(4 + k % 3))
    result = run(_suite({"cases": CASES}, nulls=5), backend).by_name("tools")
    assert result.verdict is Verdict.WARN, result.message
    assert result.headline == "forgetting within what random adapters do"


def test_without_nulls_the_limit_decides() -> None:
    result = run(_suite({"cases": CASES}), ToolBackend(ft=broken)).by_name("tools")
    assert result.verdict is Verdict.FAIL and "assert_validity_delta_gte" in result.message


def test_a_base_that_never_calls_cannot_be_judged() -> None:
    result = run(_suite({"cases": CASES}), ToolBackend(base=prose, ft=prose)).by_name("tools")
    assert result.verdict is Verdict.WARN
    assert "nothing the adapter could break" in result.message
