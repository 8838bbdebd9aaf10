"""Inputs a user hands sway by file: a saved run for ``sway report``, a prompts file for ``check``.

``sway report`` renders whatever it accepts as if a live run produced it, so a
hand-edited or corrupted run file must be refused (exit 2 naming the JSON path
and the problem), never rendered with a garbage number and exit 0, never a
traceback. ``check --prompts`` must refuse anything that is not a UTF-8 text
file of prompts, naming the file and the fix.
"""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tests.unit.conftest import saved_gate_run
from typer.testing import CliRunner

from dlm_sway.cli.app import app
from dlm_sway.core.result import Verdict, band_for

ENV = {"COLUMNS": "100", "NO_COLOR": "1", "FORCE_COLOR": None, "TTY_COMPATIBLE": None}
PROMPTS = ["The quick brown fox", "Alpha beta gamma delta", "Hello world", "Once upon a time"]
RUNNER = CliRunner()


def invoke(*args: str | Path) -> Any:
    return RUNNER.invoke(app, [str(a) for a in args], env=ENV)


def usage_error(result: Any, *needles: str) -> None:
    assert result.exit_code == 2, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(
        result.exception
    )
    assert "Traceback" not in result.output
    assert "error:" in result.output
    text = " ".join(result.output.split())
    for needle in needles:
        assert needle in text, f"{needle!r} missing from:\n{result.output}"


@pytest.fixture(scope="module")
def saved_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A real `sway gate --json` file (with a gate decision) as parsed JSON."""
    return saved_gate_run(
        tmp_path_factory.mktemp("saved_run"),
        [
            {"name": "calib", "kind": "null_adapter", "runs": 10},
            {"name": "topic", "kind": "delta_kl", "prompts": PROMPTS},
            {"name": "scale", "kind": "adapter_ablation", "prompts": PROMPTS[:2]},
            {"name": "off", "kind": "delta_kl", "prompts": PROMPTS, "enabled": False},
        ],
    )


def put(data: dict[str, Any], path: tuple[Any, ...], value: Any) -> dict[str, Any]:
    out = copy.deepcopy(data)
    node: Any = out
    for part in path[:-1]:
        node = node[part]
    node[path[-1]] = value
    return out


def drop(data: dict[str, Any], path: tuple[Any, ...]) -> dict[str, Any]:
    out = copy.deepcopy(data)
    node: Any = out
    for part in path[:-1]:
        node = node[part]
    del node[path[-1]]
    return out


def report_of(tmp_path: Path, data: Any, *, fmt: str = "md", raw: str | None = None) -> Any:
    path = tmp_path / "run.json"
    path.write_text(raw if raw is not None else json.dumps(data), encoding="utf-8")
    return invoke("report", path, "--format", fmt)


# --- 6. every malformed field: exit 2 naming its JSON path ----------------------------------

BAD_FIELDS: list[tuple[str, tuple[Any, ...], Any, tuple[str, ...]]] = [
    ("overall above 1", ("score", "overall"), 7.5, ("score.overall", "out of range")),
    ("overall null", ("score", "overall"), None, ("score.overall", "null")),
    ("overall string", ("score", "overall"), "0.9", ("score.overall", "expected a number")),
    ("overall negative", ("score", "overall"), -0.1, ("score.overall", "out of range")),
    ("overall bool", ("score", "overall"), True, ("score.overall", "expected a number")),
    ("band not a band", ("score", "band"), "excellent", ("score", "excellent")),
    ("component above 1", ("score", "components", "adherence"), 3.0, ("score.components",)),
    ("weight negative", ("score", "weights", "adherence"), -1, ("score.weights.adherence",)),
    ("probes not a list", ("probes",), {"a": 1}, ("probes", "expected a list")),
    ("verdict unknown", ("probes", 1, "verdict"), "great", ("probes[1].verdict", "great")),
    ("verdict number", ("probes", 1, "verdict"), 1, ("probes[1].verdict", "expected a string")),
    ("empty name", ("probes", 1, "name"), "", ("probes[1].name", "empty")),
    ("duplicate name", ("probes", 2, "name"), "topic", ("probes", "'topic'", "twice")),
    ("probe score above 1", ("probes", 1, "score"), 1.5, ("probes[1].score", "out of range")),
    ("p-value above 1", ("probes", 1, "p_value"), 2, ("probes[1].p_value",)),
    ("raw string", ("probes", 1, "raw"), "0.5", ("probes[1].raw", "expected a number or null")),
    ("negative duration", ("probes", 1, "duration_s"), -3, ("probes[1].duration_s",)),
    ("ci reversed", ("probes", 1, "ci_95"), [2.0, 1.0], ("probes[1].ci_95", "above")),
    ("ci short", ("probes", 1, "ci_95"), [1.0], ("probes[1].ci_95", "[lo, hi]")),
    ("health level", ("health",), [{"level": "panic"}], ("health[0].level",)),
    ("timings string", ("timings", "total_s"), "fast", ("timings.total_s",)),
    ("clock backwards", ("started_at",), "2999-01-01T00:00:00+00:00", ("finished_at",)),
    ("gate contradiction", ("gate", "passed"), "yes", ("gate.passed",)),
    ("gate exit code", ("gate", "exit_code"), 7, ("gate.exit_code",)),
    ("gate overall", ("gate", "overall"), 0.123456, ("gate.overall", "score.overall")),
    ("schema as string", ("schema_version",), "1", ("schema_version '1'",)),
    ("surrogate", ("probes", 1, "message"), "\ud800", ("probes[1].message", "surrogate")),
]


@pytest.mark.parametrize(
    ("path", "value", "needles"), [c[1:] for c in BAD_FIELDS], ids=[c[0] for c in BAD_FIELDS]
)
@pytest.mark.parametrize("fmt", ["terminal", "md", "junit", "json"])
def test_malformed_fields_exit_2_naming_the_json_path(
    saved_run: dict[str, Any],
    tmp_path: Path,
    path: tuple[Any, ...],
    value: Any,
    needles: tuple[str, ...],
    fmt: str,
) -> None:
    usage_error(report_of(tmp_path, put(saved_run, path, value), fmt=fmt), "run.json", *needles)


@pytest.mark.parametrize(
    ("path", "needles"),
    [
        (("score", "overall"), ("score.overall", "missing")),
        (("score",), ("score", "missing")),
        (("probes",), ("probes", "missing")),
        (("probes", 0, "verdict"), ("probes[0].verdict", "missing")),
        (("probes", 0, "name"), ("probes[0].name", "missing")),
        (("probes", 0, "kind"), ("probes[0].kind", "missing")),
    ],
)
def test_missing_required_fields_exit_2(
    saved_run: dict[str, Any], tmp_path: Path, path: tuple[Any, ...], needles: tuple[str, ...]
) -> None:
    usage_error(report_of(tmp_path, drop(saved_run, path)), *needles)


@pytest.mark.parametrize("token", ["NaN", "Infinity", "-Infinity"])
@pytest.mark.parametrize("field", ['"overall"', '"raw"', '"p_value"'])
def test_nan_and_infinity_tokens_exit_2(
    saved_run: dict[str, Any], tmp_path: Path, token: str, field: str
) -> None:
    """Python's json module reads NaN/Infinity tokens; sway never writes them."""
    text = json.dumps(put(put(saved_run, ("probes", 1, "raw"), 0.5), ("probes", 1, "p_value"), 0.5))
    head, sep, tail = text.partition(f"{field}: ")
    assert sep, field
    number_end = min(i for i in (tail.find(","), tail.find("}")) if i >= 0)
    raw = f"{head}{sep}{token}{tail[number_end:]}"
    usage_error(report_of(tmp_path, None, raw=raw), field.strip('"'), "finite")


def test_deeply_nested_json_is_refused_cleanly(tmp_path: Path) -> None:
    usage_error(report_of(tmp_path, None, raw="[" * 100_000 + "]" * 100_000), "run.json")


def test_a_valid_run_still_renders_in_every_format(
    saved_run: dict[str, Any], tmp_path: Path
) -> None:
    assert saved_run["gate"]["exit_code"] in (0, 1)  # a gate run records its decision
    for fmt in ("terminal", "md", "junit", "json"):
        result = report_of(tmp_path, saved_run, fmt=fmt)
        assert result.exit_code == 0, result.output
    again = json.loads(report_of(tmp_path, saved_run, fmt="json").stdout)
    assert again == saved_run


# --- fuzz: render, or exit 2 with "error:", never a traceback, never garbage ----------------

JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=6,
)


def paths_of(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix] if prefix else []
    if isinstance(value, dict):
        for key, item in value.items():
            out += paths_of(item, (*prefix, key))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            out += paths_of(item, (*prefix, i))
    return out


#: The fields a report shows as the verdict: mutated half the time, so the fuzz reaches them.
KEY_FIELDS = ("overall", "band", "verdict", "score", "name", "p_value", "p_adjusted", "probes")
PLAUSIBLE = st.sampled_from([7.5, -0.25, 1.0000001, 0, 1, None, "0.9", "PASS", "", [], {}, True])


@st.composite
def mutations(draw: st.DrawFn, base: dict[str, Any]) -> dict[str, Any]:
    data = copy.deepcopy(base)
    for _ in range(draw(st.integers(1, 3))):
        paths = paths_of(data)
        key_paths = [p for p in paths if p and p[-1] in KEY_FIELDS]
        if key_paths and draw(st.booleans()):
            data = put(data, draw(st.sampled_from(key_paths)), draw(PLAUSIBLE | JSON_VALUES))
            continue
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        if draw(st.booleans()) and len(path) > 0:
            parent: Any = data
            for part in path[:-1]:
                parent = parent[part]
            if isinstance(parent, dict):
                del parent[path[-1]]
                continue
        data = put(data, path, draw(JSON_VALUES))
    return data


def looks_valid(data: Any) -> bool:
    """An independent check of what a rendered run must satisfy to be shown as valid."""
    score = data["score"]
    overall = score["overall"]
    if type(overall) not in (int, float) or not 0 <= overall <= 1:
        return False
    if "band" in score and score["band"] is not None and score["band"] != band_for(overall):
        return False
    verdicts = {v.value for v in Verdict}
    for probe in data["probes"]:
        if str(probe["verdict"]).lower() not in verdicts or not probe["name"]:
            return False
        for key in ("score", "p_value", "p_adjusted"):
            value = probe.get(key)
            if value is not None and (
                type(value) not in (int, float) or not 0 <= value <= 1 or math.isnan(value)
            ):
                return False
    return True


@settings(
    max_examples=250,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(data=st.data(), fmt=st.sampled_from(["terminal", "md", "junit", "json"]))
def test_fuzzed_run_files_render_or_exit_2(
    saved_run: dict[str, Any], tmp_path: Path, data: st.DataObject, fmt: str
) -> None:
    mutated = data.draw(mutations(saved_run))
    raw = json.dumps(mutated, allow_nan=True)
    result = report_of(tmp_path, None, fmt=fmt, raw=raw)
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(
        result.exception
    )
    assert result.exit_code in (0, 2), result.output
    if result.exit_code == 2:
        assert "error:" in result.output
    else:
        assert looks_valid(mutated), f"rendered an invalid run:\n{raw[:2000]}"


# --- 7. check --prompts: only a UTF-8 text file of prompts ----------------------------------

BAD_PROMPTS: dict[str, bytes | None] = {
    "png": b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00",
    "nul bytes": b"first prompt\x00second\n",
    "latin-1": "caf\xe9 au lait\n".encode("latin-1"),
    "encoded surrogate": b"a prompt \xed\xa0\x80 here\n",
    "truncated utf-8": "na\u00efve\n".encode()[:3],
    "control char": b"ring \x07 the bell\n",
    "empty": b"",
    "blank lines": b"\n   \n\t\n",
    "folder": None,
}


@pytest.mark.parametrize("kind", list(BAD_PROMPTS))
def test_check_refuses_a_prompts_file_that_is_not_text(tmp_path: Path, kind: str) -> None:
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(
        json.dumps({"base_model_name_or_path": "./no-base"})
    )
    prompts = tmp_path / "prompts.bin"
    content = BAD_PROMPTS[kind]
    if content is None:
        prompts.mkdir()
    else:
        prompts.write_bytes(content)
    result = invoke("check", adapter, "--prompts", prompts)
    usage_error(result, "prompts.bin", "UTF-8 text file with one prompt per line")


def test_check_reads_a_utf8_prompts_file_with_a_bom(tmp_path: Path) -> None:
    from dlm_sway.cli.check import read_prompts

    path = tmp_path / "p.txt"
    path.write_bytes("\ufefffirst ünïcode prompt\r\n\r\nsecond\n".encode())
    assert read_prompts(path) == ["first ünïcode prompt", "second"]
