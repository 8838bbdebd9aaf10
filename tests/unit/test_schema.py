"""Versioned run files: v2 carries every typed field, has a JSON Schema, and v1 still reads.

A saved run is a record: re-reading it must not depend on which probes are
installed (categories come from the file, or for v1 from a frozen table), a
version sway does not know is refused naming it (exit 2), and the schema
``sway schema`` prints accepts every file sway writes.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tests.unit.conftest import saved_gate_run
from typer.testing import CliRunner

from dlm_sway.cli.app import app
from dlm_sway.core.errors import SpecValidationError
from dlm_sway.core.result import Direction, Verdict
from dlm_sway.report.json_read import run_json_schema
from dlm_sway.report.json_report import read_run, to_json, to_json_dict
from dlm_sway.report.json_v1 import V1_CATEGORIES, upgrade_v1
from dlm_sway.report.markdown import to_markdown

V1_FILE = Path(__file__).parent / "data" / "run_v1.json"
ENV = {"COLUMNS": "120", "NO_COLOR": "1", "FORCE_COLOR": None, "TTY_COMPATIBLE": None}
PROMPTS = ["The quick brown fox", "Alpha beta gamma delta", "Hello world", "Once upon a time"]
RUNNER = CliRunner()


def invoke(*args: str | Path) -> Any:
    return RUNNER.invoke(app, [str(a) for a in args], env=ENV)


def v1_data() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(V1_FILE.read_text(encoding="utf-8"))
    return data


def validator() -> Any:
    jsonschema = pytest.importorskip("jsonschema")
    schema = run_json_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


@pytest.fixture(scope="module")
def live_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A real ``sway gate --json`` file from the dummy backend (calibrated, with a gate)."""
    return saved_gate_run(
        tmp_path_factory.mktemp("live_run"),
        [
            {"name": "calib", "kind": "null_adapter", "runs": 4},
            {"name": "topic", "kind": "delta_kl", "prompts": PROMPTS},
            {"name": "scale", "kind": "adapter_ablation", "prompts": PROMPTS[:2]},
        ],
    )


# --- v2: what is written ------------------------------------------------------------------


def test_a_live_run_writes_version_2_with_typed_fields(live_run: dict[str, Any]) -> None:
    assert live_run["schema_version"] == 2
    calib, topic, scale = live_run["probes"]
    assert calib["calibration"]["primary"] == "rank_1.00"
    assert "topic" in calib["calibration"]["by_rank"]["rank_1.00"]
    assert topic["null"]["k"] == 4 and len(topic["null"]["samples"]) == 4
    assert (topic["category"], scale["category"], calib["category"]) == (
        "adherence",
        "ablation",
        "baseline",
    )
    assert topic["config"]["kind"] == "delta_kl" and topic["direction"] == "effect"
    assert live_run["score"]["band_reason"]
    assert "gate" in live_run


def test_a_live_run_validates_against_the_exported_schema(live_run: dict[str, Any]) -> None:
    errors = sorted(validator().iter_errors(live_run), key=str)
    assert errors == []


def test_v2_round_trip_of_a_live_run_is_exact(live_run: dict[str, Any]) -> None:
    suite, score, gate = read_run(live_run)
    again = json.loads(to_json(suite, score, gate=gate))
    assert again == live_run
    suite2, score2, _ = read_run(again)
    assert suite2 == suite and score2 == score


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (("score", "overall"), 1.5),
        (("probes", 1, "verdict"), "maybe"),
        (("probes", 1, "direction"), "sideways"),
        (("probes", 1, "null", "k"), -1),
        (("probes", 1, "weight"), -2.0),
        (("probes", 1, "p_value"), 2.0),
        (("schema_version",), 1),
    ],
)
def test_the_schema_rejects_what_the_reader_rejects(
    live_run: dict[str, Any], path: tuple[Any, ...], value: Any
) -> None:
    bad = copy.deepcopy(live_run)
    node: Any = bad
    for part in path[:-1]:
        node = node[part]
    node[path[-1]] = value
    assert list(validator().iter_errors(bad)), path
    if path != ("schema_version",):  # version 1 is readable: through the v1 path
        with pytest.raises(Exception, match=str(path[-1])):
            read_run(bad)


# --- sway schema --------------------------------------------------------------------------


def test_sway_schema_prints_the_exported_json_schema() -> None:
    result = invoke("schema")
    assert result.exit_code == 0, result.output
    printed = json.loads(result.stdout)
    assert printed == run_json_schema()
    validator()  # check_schema: a valid draft 2020-12 schema
    assert printed["properties"]["schema_version"]["const"] == 2
    for field in ("null", "calibration", "category", "weight", "direction", "headline"):
        assert field in printed["$defs"]["ProbeIn"]["properties"], field


def test_sway_schema_output_writes_the_file(tmp_path: Path) -> None:
    target = tmp_path / "out" / "run.schema.json"
    result = invoke("schema", "--output", target)
    assert result.exit_code == 0, result.output
    assert json.loads(target.read_text(encoding="utf-8")) == run_json_schema()


def test_sway_schema_output_to_a_folder_is_exit_2_naming_it(tmp_path: Path) -> None:
    result = invoke("schema", "--output", tmp_path)
    assert result.exit_code == 2
    text = " ".join(result.output.split())
    assert "error:" in text and "is a folder" in text and str(tmp_path) in text
    assert "Traceback" not in result.output


def test_sway_schema_help_imports_nothing_heavy() -> None:
    """Like every command's help (tests/unit/test_startup.py); typer itself may load pydantic."""
    script = textwrap.dedent(
        """
        import sys
        import dlm_sway.cli.app as cli_app
        assert "pydantic" not in sys.modules
        from typer.testing import CliRunner
        result = CliRunner().invoke(cli_app.app, ["schema", "--help"])
        assert result.exit_code == 0, result.output
        assert "--output" in result.output
        heavy = {"numpy", "scipy", "torch", "transformers", "yaml"}
        loaded = sorted({m.split(".")[0] for m in sys.modules} & heavy)
        loaded += sorted(m for m in sys.modules if m.startswith("dlm_sway.report"))
        print(",".join(loaded) or "none")
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "none"


# --- version 1 ----------------------------------------------------------------------------


def test_v1_evidence_is_lifted_into_the_typed_fields() -> None:
    suite, score, gate = read_run(v1_data())
    assert gate is None and score.band == "healthy"
    by = {p.name: p for p in suite.probes}
    topic = by["topic"]
    assert topic.weight == 2.0 and topic.category == "adherence"
    assert topic.null is not None
    assert (topic.null.construction, topic.null.k, topic.null.z_threshold) == (
        "norm_matched",
        10,
        3.0,
    )
    assert topic.null.log_scale is True and topic.null.statistic == 5.12
    assert dict(topic.null.z_by_rank) == {"rank_0.50": 6.02, "rank_1.00": 4.41}
    forget = by["forget"]
    assert forget.direction is Direction.HARM and forget.category == "calibration"
    assert forget.null is not None and forget.null.z_threshold == 2.5
    assert by["scale"].weight == 0.5 and by["scale"].category == "ablation"
    assert by["gone"].category == "attribution" and by["gone"].verdict is Verdict.SKIP
    # A kind v1 did not ship scored as adherence then, and still does.
    assert by["style"].category == "adherence"
    cal = by["calibrate"].calibration
    assert cal is not None and cal.primary == "rank_1.00"
    assert set(cal.by_rank) == {"rank_0.50", "rank_1.00"}
    assert cal.stats["topic"].n == 10 and cal.stats["topic"].construction == "norm_matched"
    # v1 listed opt-outs and failures together; only the failure lacks a null it wanted.
    assert dict(cal.failures) == {"topic_b": "no finite raw: seed 1003: ProbeError: empty"}
    assert suite.by_name("topic_b").null is None


def test_v1_categories_match_the_kinds_v1_shipped() -> None:
    """The frozen table is right for every kind it names (checked against today's classes)."""
    from dlm_sway.probes.base import registry

    for kind, category in V1_CATEGORIES.items():
        assert registry()[kind].category == category, kind


@pytest.mark.parametrize("fmt", ["terminal", "md", "junit", "json"])
def test_v1_file_re_renders_without_loading_any_probe(fmt: str, tmp_path: Path) -> None:
    """In a fresh interpreter: `sway report` of a v1 file renders and never loads a probe."""
    script = textwrap.dedent(
        f"""
        import sys
        from typer.testing import CliRunner
        import dlm_sway.cli.app as cli_app
        result = CliRunner().invoke(
            cli_app.app, ["report", {str(V1_FILE)!r}, "--format", {fmt!r}]
        )
        assert result.exit_code == 0, result.output
        import dlm_sway.probes.base as base
        loaded = [m for m in sys.modules if m.startswith("dlm_sway.probes.")
                  and m.rsplit(".", 1)[1] in {set(V1_CATEGORIES)!r}]
        print(repr((loaded, base._LOADED, len(base._REGISTRY))))
        print("OUTPUT-START")
        print(result.stdout)
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, "COLUMNS": "200", "NO_COLOR": "1"},
    )
    assert proc.returncode == 0, proc.stderr
    head, _, output = proc.stdout.partition("OUTPUT-START\n")
    assert head.strip() == "([], False, 0)"  # no built-in probe imported, registry untouched
    flat = " ".join(output.split())
    if fmt == "json":
        upgraded = json.loads(output)
        assert upgraded["schema_version"] == 2
        assert not list(validator().iter_errors(upgraded))
        assert upgraded["probes"][1]["null"]["k"] == 10
    elif fmt == "junit":
        assert 'name="component.ablation" value="0.4500"' in flat
    else:
        assert "norm×10" in flat
        assert "rank profile: +6.02σ @ 0.5x / +4.41σ @ 1x" in flat
        assert "p=0.0014 (Holm 0.0028)" in flat
        assert "topic_b (delta_kl): no finite raw: seed 1003: ProbeError: empty" in flat


def test_v1_upgraded_once_renders_the_same_as_v1() -> None:
    suite, score, _ = read_run(v1_data())
    upgraded = json.loads(to_json(suite, score))
    assert upgraded["schema_version"] == 2
    suite2, score2, _ = read_run(upgraded)
    assert suite2 == suite
    assert to_markdown(suite2, score2) == to_markdown(suite, score)


def test_v1_upgrade_does_not_change_the_input() -> None:
    data = v1_data()
    before = copy.deepcopy(data)
    upgrade_v1(data)
    assert data == before


@pytest.mark.parametrize(
    ("path", "value", "needle"),
    [
        (("probes", 1, "evidence", "null", "k"), "ten", "probes[1].evidence.null.k"),
        (("probes", 1, "evidence", "weight"), -1, "probes[1].evidence.weight"),
        (("probes", 1, "evidence", "z_by_rank"), {"r": "x"}, "probes[1].evidence.z_by_rank.r"),
        (("probes", 0, "evidence", "null_stats"), {"t": {"n": 1}}, "probes[0].evidence.null_stats"),
    ],
)
def test_a_broken_v1_field_is_exit_2_naming_its_v1_path(
    tmp_path: Path, path: tuple[Any, ...], value: Any, needle: str
) -> None:
    data = v1_data()
    node: Any = data
    for part in path[:-1]:
        node = node[part]
    node[path[-1]] = value
    if path[-1] == "null_stats":
        del data["probes"][0]["evidence"]["null_stats_by_rank"]
    target = tmp_path / "old.json"
    target.write_text(json.dumps(data), encoding="utf-8")
    result = invoke("report", target, "--format", "md")
    assert result.exit_code == 2, result.output
    text = " ".join(result.output.split())
    assert "old.json" in text and needle in text, text
    assert "Traceback" not in result.output


@pytest.mark.parametrize("version", [0, 3, 99, -1])
@pytest.mark.parametrize("fmt", ["terminal", "md"])
def test_an_unknown_version_is_exit_2_naming_it(tmp_path: Path, version: int, fmt: str) -> None:
    data = v1_data()
    data["schema_version"] = version
    target = tmp_path / "future.json"
    target.write_text(json.dumps(data), encoding="utf-8")
    result = invoke("report", target, "--format", fmt)
    assert result.exit_code == 2, result.output
    text = " ".join(result.output.split())
    assert f"schema_version {version} is not supported" in text
    assert "versions 1 and 2" in text and "future.json" in text
    assert "Traceback" not in result.output


def test_to_json_dict_of_a_v1_read_is_plain_v2() -> None:
    suite, score, _ = read_run(v1_data())
    data = to_json_dict(suite, score)
    assert data["schema_version"] == 2
    assert not list(validator().iter_errors(data))


JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**40), 2**40)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=6),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=6), children, max_size=3)
    ),
    max_leaves=8,
)
V1_EVIDENCE_KEYS = st.sampled_from(
    ["null", "weight", "z_by_rank", "null_stats", "null_stats_by_rank", "skipped_kinds"]
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    index=st.integers(min_value=0, max_value=6),
    key=V1_EVIDENCE_KEYS,
    subkey=st.sampled_from(["k", "construction", "z_threshold", "direction", "rank_1.00", None]),
    value=JSON,
)
def test_any_v1_evidence_reads_or_is_a_clear_error(
    index: int, key: str, subkey: str | None, value: Any
) -> None:
    """What v1 kept in evidence was free-form: reading it renders or names the problem."""
    data = v1_data()
    evidence = data["probes"][index]["evidence"]
    if subkey is not None and isinstance(evidence.get(key), dict):
        evidence[key][subkey] = value
    else:
        evidence[key] = value
    try:
        suite, score, _ = read_run(data)
    except SpecValidationError as exc:
        assert "evidence" in str(exc) or "probes" in str(exc), str(exc)
        return
    to_markdown(suite, score)  # and whatever was accepted renders
    assert json.loads(to_json(suite, score))["schema_version"] == 2
