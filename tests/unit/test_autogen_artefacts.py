"""`sway autogen`: training-artefact probes when their files exist, portable relative paths."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from dlm_sway.cli.app import app
from dlm_sway.core.documents import load_document
from dlm_sway.core.sections import Document, Section, SectionProbe
from dlm_sway.probes.base import registry
from dlm_sway.suite.autogen import plan_suite
from dlm_sway.suite.loader import load_spec

pytest.importorskip("safetensors")

REPO = Path(__file__).resolve().parents[2]
DEMO_DOC = REPO / "src" / "dlm_sway" / "demo" / "data" / "document.md"
STRONG = REPO / "src" / "dlm_sway" / "demo" / "adapters" / "strong"


def _project(root: Path, *, trainer_state: bool) -> tuple[Path, Path]:
    """A training project: the document, an output dir with the adapter (and its log)."""
    doc = root / "data" / "handbook.md"
    doc.parent.mkdir(parents=True)
    shutil.copy(DEMO_DOC, doc)
    adapter = root / "out" / "final"
    shutil.copytree(STRONG, adapter)
    if trainer_state:
        history = [{"loss": 3.0 * 0.95**i + 0.4, "step": 5 * (i + 1)} for i in range(40)]
        (root / "out" / "trainer_state.json").write_text(json.dumps({"log_history": history}))
    return doc, adapter


def _autogen(doc: Path, adapter: Path, out: Path) -> str:
    res = CliRunner().invoke(app, ["autogen", str(doc), "--adapter", str(adapter), "-o", str(out)])
    assert res.exit_code == 0, res.output
    return out.read_text(encoding="utf-8")


def test_training_probes_are_added_when_their_files_exist(tmp_path: Path) -> None:
    doc, adapter = _project(tmp_path, trainer_state=True)
    text = _autogen(doc, adapter, tmp_path / "specs" / "sway.yaml")
    raw = yaml.safe_load(text)
    kinds = [e["kind"] for e in raw["suite"]]
    assert kinds[:2] == ["gradient_ghost", "training_drift"]
    # the comments say what each reads, relative to the spec
    assert "reads ../out/final/adapter_model.safetensors (no optimizer.pt" in text
    assert "reads ../out/trainer_state.json" in text
    # no paths in the entries: at run time they look next to models.ft.adapter
    assert {k for e in raw["suite"][:2] for k in e} == {"name", "kind"}


def test_missing_training_log_is_left_out_with_the_reason(tmp_path: Path) -> None:
    doc, adapter = _project(tmp_path, trainer_state=False)
    text = _autogen(doc, adapter, tmp_path / "sway.yaml")
    assert "kind: training_drift" not in text
    assert "#   training_drift: no trainer_state.json next to the adapter" in text
    assert "kind: gradient_ghost" in text


def test_paths_are_relative_and_the_spec_moves_with_its_files(tmp_path: Path) -> None:
    project = tmp_path / "project"
    doc, adapter = _project(project, trainer_state=True)
    out = project / "ci" / "sway.yaml"
    raw = yaml.safe_load(_autogen(doc, adapter, out))
    assert raw["dlm_source"] == "../data/handbook.md"
    assert raw["models"]["ft"]["adapter"] == "../out/final"
    assert str(tmp_path) not in out.read_text(encoding="utf-8").split("\nmodels:")[1]
    moved = tmp_path / "elsewhere" / "checkout"
    shutil.move(str(project), str(moved))
    loaded = load_spec(moved / "ci" / "sway.yaml")
    assert loaded.document is not None
    assert loaded.spec.models.ft.adapter == str((moved / "out" / "final").resolve())
    # run it (model swapped for the dummy backend): the artefact probes read the moved files
    raw["models"]["ft"] = {"kind": "dummy", "base": "dummy-base", "adapter": "../out/final"}
    raw["suite"] = [e for e in raw["suite"] if e["kind"] in ("gradient_ghost", "training_drift")]
    raw["suite"].append({"name": "shift", "kind": "delta_kl", "prompts": ["The keeper said"]})
    dummy = moved / "ci" / "dummy.yaml"
    dummy.write_text(yaml.safe_dump(raw), encoding="utf-8")
    res = CliRunner().invoke(app, ["run", str(dummy), "--json", str(moved / "run.json")])
    assert res.exit_code == 0, res.output
    probes = {p["kind"]: p for p in json.loads((moved / "run.json").read_text())["probes"]}
    assert probes["gradient_ghost"]["verdict"] == "pass"
    assert probes["training_drift"]["verdict"] == "pass"
    assert str(moved / "out") in probes["training_drift"]["message"]
    assert probes["delta_kl"]["verdict"] in ("pass", "warn", "fail")


def test_generation_probes_that_fit_the_document_or_why_not() -> None:
    plan = plan_suite(load_document(DEMO_DOC))
    kinds = [e["kind"] for e in plan.suite]
    skipped = dict(plan.skipped)
    reg = registry()
    for kind in ("leakage", "style_fingerprint"):  # any prose document
        assert (kind in kinds) == (kind in reg) and (kind in kinds or kind in skipped)
    # the demo handbook has no Q/A and no JSON tool calls
    assert "adapter_revert" not in kinds and "Q/A" in skipped["adapter_revert"]
    assert "tool_use_fidelity" not in kinds and "tool_use_fidelity" in skipped
    null = plan.suite[kinds.index("null_adapter")]
    calibrated = {k for k in kinds if reg[k].calibrated} - {"calibration_drift"}
    assert set(null["calibrate_kinds"]) == calibrated


def test_json_tool_calls_in_the_document_add_tool_use_fidelity() -> None:
    if "tool_use_fidelity" not in registry():
        pytest.skip("tool_use_fidelity is not registered in this build")
    call = '{"name": "get_tide", "arguments": {"harbour": "Vell", "day": "today"}}'
    doc = Document(
        source="tools.md",
        sections=(
            Section("a", "prose", "The keepers log the tide twice a day at every light. " * 3),
            Section(
                "b",
                "instruction",
                "",
                probes=(SectionProbe("When is high tide in Vell today?", f" {call}"),),
            ),
            Section("c", "prose", f"To look up the tide at a harbour, call the tool:\n{call}\n"),
        ),
    )
    plan = plan_suite(doc)
    entry = next(e for e in plan.suite if e["kind"] == "tool_use_fidelity")
    prompts = [c["prompt"] for c in entry["cases"]]
    assert prompts == [
        "When is high tide in Vell today?",
        "To look up the tide at a harbour, call the tool:",
    ]
    schema = entry["cases"][0]["json_schema"]
    assert schema["properties"]["name"] == {"const": "get_tide"}
    assert schema["properties"]["arguments"]["required"] == ["day", "harbour"]
    # the derived schema accepts the trained call and refuses another tool
    import jsonschema

    jsonschema.validate(json.loads(call), schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(
            {"name": "ring_bell", "arguments": {"harbour": "x", "day": "y"}}, schema
        )


def test_a_dlm_documents_store_logs_feed_training_drift(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    guild = Path(__file__).parent / "data" / "guild.dlm"
    dlm_id = next(
        ln.split(":", 1)[1].strip() for ln in guild.read_text().splitlines() if "dlm_id" in ln
    )
    store = tmp_path / "home" / "store" / dlm_id
    shutil.copytree(STRONG, store / "adapter" / "versions" / "v0001")
    (store / "adapter" / "current.txt").write_text("adapter/versions/v0001\n")
    (store / "logs").mkdir()
    steps = [
        json.dumps({"type": "step", "step": i + 1, "loss": 3.0 * 0.95**i + 0.4, "val_loss": None})
        for i in range(40)
    ]
    (store / "logs" / "train-000001-20260418T101523.jsonl").write_text("\n".join(steps) + "\n")
    monkeypatch.setenv("DLM_HOME", str(tmp_path / "home"))
    doc = tmp_path / "guild.dlm"
    shutil.copy(guild, doc)
    out = tmp_path / "sway.yaml"
    res = CliRunner().invoke(app, ["autogen", str(doc), "-o", str(out)])
    assert res.exit_code == 0, res.output
    text = out.read_text(encoding="utf-8")
    assert f"reads home/store/{dlm_id}/logs" in text
    raw = yaml.safe_load(text)
    raw["models"]["ft"] = {"kind": "dummy", "base": "dummy-base"}  # the .dlm supplies the adapter
    raw["suite"] = [e for e in raw["suite"] if e["kind"] in ("gradient_ghost", "training_drift")]
    out.write_text(yaml.safe_dump(raw), encoding="utf-8")
    res = CliRunner().invoke(app, ["run", str(out), "--json", str(tmp_path / "run.json")])
    assert res.exit_code == 0, res.output
    probes = {p["kind"]: p for p in json.loads((tmp_path / "run.json").read_text())["probes"]}
    assert (
        probes["training_drift"]["verdict"] == "pass"
        and "dlm_jsonl" in probes["training_drift"]["message"]
    )
    assert probes["gradient_ghost"]["verdict"] == "pass"
