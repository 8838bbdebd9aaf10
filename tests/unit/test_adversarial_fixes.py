"""Regressions from an adversarial pass: autogen output paths, dummy backend options, huge
numbers and control characters in saved runs, and what a truncated run file is told."""

from __future__ import annotations

import copy
import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from dlm_sway.cli.app import app
from dlm_sway.core.errors import SpecValidationError
from dlm_sway.report.format import backend_line, format_raw
from dlm_sway.suite.loader import from_dict

REPO = Path(__file__).resolve().parents[2]
DEMO_DOC = REPO / "src" / "dlm_sway" / "demo" / "data" / "document.md"
STRONG = REPO / "src" / "dlm_sway" / "demo" / "adapters" / "strong"
ENV = {"COLUMNS": "120", "NO_COLOR": "1", "FORCE_COLOR": None, "TTY_COMPATIBLE": None}
PROMPTS = ["a b c", "d e f", "g h i"]


def invoke(*args: str | Path) -> Any:
    return CliRunner().invoke(app, [str(a) for a in args], env=ENV)


def spec_dict(options: dict[str, Any], prompts: list[str] = PROMPTS) -> dict[str, Any]:
    return {
        "version": 1,
        "models": {
            "ft": {"kind": "dummy", "base": "x", "adapter": "builtin:x", "options": options}
        },
        "defaults": {"seed": 0},
        "suite": [
            {"name": "nb", "kind": "null_adapter", "runs": 4},
            {"name": "d", "kind": "delta_kl", "prompts": prompts},
        ],
    }


# --- 1. autogen output path -------------------------------------------------------------------


@pytest.fixture
def doc_and_adapter(tmp_path: Path) -> tuple[Path, Path]:
    doc = tmp_path / "doc.md"
    shutil.copy(DEMO_DOC, doc)
    adapter = tmp_path / "adapter"
    shutil.copytree(STRONG, adapter)
    return doc, adapter


def test_autogen_refuses_to_overwrite_its_document(doc_and_adapter: tuple[Path, Path]) -> None:
    doc, adapter = doc_and_adapter
    before = doc.read_bytes()
    res = invoke("autogen", doc, "-o", doc, "--adapter", adapter, "--force")
    assert res.exit_code == 2
    assert "--out" in res.stderr and "document" in res.stderr
    assert doc.read_bytes() == before


def test_autogen_refuses_to_overwrite_an_adapter_file(doc_and_adapter: tuple[Path, Path]) -> None:
    doc, adapter = doc_and_adapter
    config = adapter / "adapter_config.json"
    before = config.read_bytes()
    res = invoke("autogen", doc, "-o", config, "--adapter", adapter, "--force")
    assert res.exit_code == 2
    assert "--out" in res.stderr and "adapter" in res.stderr
    assert config.read_bytes() == before


def test_autogen_refuses_a_fifo_and_a_folder(
    doc_and_adapter: tuple[Path, Path], tmp_path: Path
) -> None:
    # A FIFO stands in for a device node (/dev/full): both are not regular files, and a
    # test must never aim a possibly-broken old build at a real device as root.
    doc, adapter = doc_and_adapter
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    res = invoke("autogen", doc, "-o", fifo, "--adapter", adapter, "--force")
    assert res.exit_code == 2 and "not a regular file" in res.stderr
    assert fifo.is_fifo()
    folder = tmp_path / "dir"
    folder.mkdir()
    res = invoke("autogen", doc, "-o", folder, "--adapter", adapter, "--force")
    assert res.exit_code == 2 and "is a folder" in res.stderr and "sway.yaml" in res.stderr
    assert folder.is_dir() and not list(folder.iterdir())


# --- 2. dummy backend options -----------------------------------------------------------------

BAD_OPTIONS = [
    ("strength", float("inf"), "finite"),
    ("strength", float("nan"), "finite"),
    ("null_scale", float("-inf"), "finite"),
    ("planted", float("nan"), "finite"),
    ("strength", "0.5", "finite"),
    ("strength", True, "finite"),
    ("adapter_seed", -1, "non-negative integer"),
    ("adapter_seed", 1.5, "non-negative integer"),
    ("nan", "yes", "true or false"),
    ("bogus", 1, "unknown dummy backend option"),
]


@pytest.mark.parametrize(("key", "value", "why"), BAD_OPTIONS)
def test_bad_dummy_options_are_spec_errors_at_load(key: str, value: object, why: str) -> None:
    with pytest.raises(SpecValidationError) as info:
        from_dict(spec_dict({key: value}), source="s.yaml")
    text = str(info.value)
    assert f"models.ft.options.{key}" in text and why in text


@pytest.mark.parametrize(("key", "value", "why"), BAD_OPTIONS[:7])
def test_bad_dummy_options_exit_2_on_dry_run_and_run(
    key: str, value: object, why: str, tmp_path: Path
) -> None:
    spec = tmp_path / "s.yaml"
    spec.write_text(yaml.safe_dump(spec_dict({key: value})), encoding="utf-8")
    for args in (("run", spec, "--dry-run"), ("run", spec)):
        res = invoke(*args)
        assert res.exit_code == 2, res.output
        assert f"models.ft.options.{key}" in res.stderr and "Traceback" not in res.output


@settings(max_examples=150, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(["strength", "null_scale", "planted", "nan", "adapter_seed", "other"]),
        st.one_of(
            st.floats(allow_nan=True, allow_infinity=True),
            st.integers(min_value=-(10**30), max_value=10**30),
            st.booleans(),
            st.text(max_size=3),
            st.none(),
        ),
        max_size=3,
    )
)
def test_dummy_options_either_load_and_build_or_name_the_field(options: dict[str, Any]) -> None:
    from dlm_sway.suite.build import backend_from_spec

    try:
        spec = from_dict(spec_dict(options), source="s.yaml")
    except SpecValidationError as exc:
        assert "models.ft.options." in str(exc)
        return
    backend = backend_from_spec(spec.spec.models.ft)  # never a ValueError/TypeError
    with backend.as_finetuned() as view:
        view.next_token_dist("a b c")


# --- 3-5. saved runs --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def run_json(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("run")
    spec = tmp / "s.yaml"
    spec.write_text(yaml.safe_dump(spec_dict({})), encoding="utf-8")
    res = invoke("run", spec, "--json", tmp / "run.json")
    assert res.exit_code in (0, 1), res.output
    data: dict[str, Any] = json.loads((tmp / "run.json").read_text(encoding="utf-8"))
    return data


def _report(data: Any, tmp_path: Path, *fmt: str) -> Any:
    path = tmp_path / "r.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    return invoke("report", path, *fmt)


@pytest.mark.parametrize("fmt", [(), ("--format", "markdown"), ("--format", "json")])
def test_huge_integers_in_a_saved_run_do_not_crash_report(
    run_json: dict[str, Any], tmp_path: Path, fmt: tuple[str, ...]
) -> None:
    data = copy.deepcopy(run_json)
    data["backend_stats"]["forward_passes"] = 10**400
    data["backend_stats"]["scored_tokens"] = -(10**400)
    res = _report(data, tmp_path, *fmt)
    assert res.exit_code == 0, res.output
    assert "Traceback" not in res.output


def test_a_huge_integer_in_a_typed_number_names_its_path(
    run_json: dict[str, Any], tmp_path: Path
) -> None:
    data = copy.deepcopy(run_json)
    data["probes"][1]["raw"] = 10**400
    res = _report(data, tmp_path)
    assert res.exit_code == 2
    assert "probes[1].raw" in res.stderr and "too large" in res.stderr


@given(st.integers(min_value=-(10**1000), max_value=10**1000))
@settings(max_examples=100, deadline=None)
def test_number_formatting_is_total_over_ints(value: int) -> None:
    assert isinstance(format_raw(value), str)
    assert isinstance(backend_line({"forward_passes": value, "scored_tokens": value}), str)


@pytest.mark.parametrize("key", ["probes", "score"])
def test_a_run_missing_a_section_names_it(
    run_json: dict[str, Any], tmp_path: Path, key: str
) -> None:
    data = {k: v for k, v in run_json.items() if k != key}
    res = _report(data, tmp_path)
    assert res.exit_code == 2
    assert key in res.stderr and "missing" in res.stderr
    assert "no 'schema_version'" not in res.stderr


def test_a_section_saved_alone_says_what_the_top_level_is(
    run_json: dict[str, Any], tmp_path: Path
) -> None:
    res = _report(run_json["probes"], tmp_path)
    assert res.exit_code == 2 and "top level is a JSON list" in res.stderr


EVIL = "\x1b[2J\x1b[31mOWNED\x07\x9b1m\u202e"


def _poison(data: dict[str, Any]) -> dict[str, Any]:
    data = copy.deepcopy(data)
    probe = data["probes"][1]
    for field in ("message", "measured", "headline"):
        probe[field] = f"{field} {EVIL}"
    probe["evidence"]["note"] = EVIL
    data["score"]["findings"] = [EVIL]
    data["score"]["band_reason"] = EVIL
    data["adapter_id"] = EVIL
    data["spec_path"] = EVIL
    return data


@pytest.mark.parametrize("fmt", [(), ("--format", "markdown")])
def test_report_never_prints_control_characters_from_a_run(
    run_json: dict[str, Any], tmp_path: Path, fmt: tuple[str, ...]
) -> None:
    res = _report(_poison(run_json), tmp_path, *fmt)
    assert res.exit_code == 0, res.output
    for ch in ("\x1b", "\x07", "\x9b", "\u202e"):
        assert ch not in res.stdout
    assert "\\x1b[2J" in res.stdout


def test_live_run_escapes_control_characters_in_prompt_text(tmp_path: Path) -> None:
    spec = tmp_path / "s.yaml"
    spec.write_text(yaml.safe_dump(spec_dict({}, ["x \x1b[2J y", "b c d", "e f g"])), "utf-8")
    res = invoke("run", spec, "--markdown", "-")
    assert res.exit_code in (0, 1), res.output
    assert "\x1b" not in res.stdout


@settings(max_examples=200, deadline=None)
@given(st.text())
def test_visible_leaves_no_control_character(text: str) -> None:
    from dlm_sway.report.format import visible

    shown = visible(text)
    assert not any(
        (ord(c) < 0x20 and c not in "\t\n") or 0x7F <= ord(c) <= 0x9F or c == "\u202e"
        for c in shown
    )
    if all(c.isprintable() or c in "\t\n" for c in text):
        assert shown == text
    assert visible("a\r\nb\rc") == "a\nb\nc"  # a line break, never an overwrite


def test_visible_tree_keeps_types_and_numbers() -> None:
    from dlm_sway.core.result import ProbeResult, Verdict
    from dlm_sway.report.format import visible_tree

    result = ProbeResult(name="n\x1b", kind="k", verdict=Verdict.PASS, raw=1.5, evidence={"a": [1]})
    shown = visible_tree(result)
    assert shown.name == "n\\x1b" and shown.verdict is Verdict.PASS and shown.raw == 1.5
    assert shown.evidence == {"a": [1]}


def test_an_output_through_a_symlink_writes_the_target_and_keeps_the_link(
    tmp_path: Path,
) -> None:
    from dlm_sway.cli.outputs import atomic_write

    target = tmp_path / "real.json"
    target.write_text("old", encoding="utf-8")
    link = tmp_path / "link.json"
    link.symlink_to(target)
    atomic_write("new", link)
    assert link.is_symlink()
    assert target.read_text(encoding="utf-8") == "new"


def test_a_probe_name_with_a_bidi_override_is_refused() -> None:
    from dlm_sway.core.errors import SpecValidationError
    from dlm_sway.suite.loader import from_dict

    with pytest.raises(SpecValidationError, match="invisible formatting"):
        from_dict(
            {
                "models": {"ft": {"kind": "dummy", "base": "x", "adapter": "builtin:x"}},
                "suite": [{"name": "\u202egnp.exe", "kind": "delta_kl", "prompts": ["a"]}],
            }
        )
