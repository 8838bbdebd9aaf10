"""``--adapters``: one model load, one result per adapter, natural checkpoint order, errors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from dlm_sway.backends.dummy import DummyDifferentialBackend
from dlm_sway.cli.app import app
from dlm_sway.suite.many_adapters import expand_adapters, natural_key

ENV = {"COLUMNS": "200", "NO_COLOR": "1"}
PROMPTS = ["The quick brown fox", "Alpha beta gamma delta", "Hello world, once again"]
SUITE = [
    {"name": "calib", "kind": "null_adapter", "runs": 6},
    {"name": "topic", "kind": "delta_kl", "prompts": PROMPTS},
    {"name": "scale", "kind": "adapter_ablation", "prompts": PROMPTS[:2]},
]


def make_adapter(folder: Path, **options: Any) -> Path:
    folder.mkdir(parents=True)
    (folder / "adapter_config.json").write_text('{"peft_type": "LORA"}', "utf-8")
    (folder / DummyDifferentialBackend.ADAPTER_FILE).write_text(json.dumps(options), "utf-8")
    return folder


def write_spec(folder: Path, adapter: Path | str = "builtin:x") -> Path:
    spec = folder / "sway.yaml"
    models = {"ft": {"kind": "dummy", "base": "b", "adapter": str(adapter)}}
    spec.write_text(yaml.safe_dump({"version": 1, "models": models, "suite": SUITE}), "utf-8")
    return spec


def sway(*args: str | Path) -> Any:
    return CliRunner().invoke(app, [str(a) for a in args], env=ENV)


@pytest.fixture
def ckpts(tmp_path: Path) -> Path:
    """checkpoint-1/2/10 of a "training run": the adapter grows stronger with steps."""
    root = tmp_path / "out"
    make_adapter(root / "checkpoint-10", strength=1.0, adapter_seed=10)
    make_adapter(root / "checkpoint-2", strength=0.4, adapter_seed=2)
    make_adapter(root / "checkpoint-1", strength=0.0, adapter_seed=1)
    return root


@pytest.fixture
def constructed(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The adapter of every dummy backend constructed during the test."""
    calls: list[str] = []
    original = DummyDifferentialBackend.__init__

    def counting(self: DummyDifferentialBackend, **kwargs: Any) -> None:
        calls.append(str(kwargs.get("adapter")))
        original(self, **kwargs)

    monkeypatch.setattr(DummyDifferentialBackend, "__init__", counting)
    return calls


def probes(path: Path) -> dict[str, dict[str, Any]]:
    return {p["name"]: p for p in json.loads(path.read_text("utf-8"))["probes"]}


def test_natural_order_and_labels(ckpts: Path) -> None:
    refs = expand_adapters([str(ckpts / "checkpoint-*")])
    assert [r.label for r in refs] == ["checkpoint-1", "checkpoint-2", "checkpoint-10"]
    assert sorted(["a-10", "a-9", "a-100"], key=lambda s: natural_key(Path(s))) == [
        "a-9",
        "a-10",
        "a-100",
    ]
    # An explicit folder and a glob that matches it again: listed once, in given order.
    again = expand_adapters([str(ckpts / "checkpoint-10"), str(ckpts / "checkpoint-*")])
    assert [r.label for r in again] == ["checkpoint-10", "checkpoint-1", "checkpoint-2"]


def test_one_load_one_result_per_adapter_equal_to_separate_runs(
    ckpts: Path, tmp_path: Path, constructed: list[str]
) -> None:
    spec = write_spec(tmp_path)
    out = tmp_path / "reports" / "run.json"
    result = sway("run", spec, "--adapters", ckpts / "checkpoint-*", "--json", out)
    assert result.exit_code == 0, result.output
    assert len(constructed) == 1  # the model was built once, then swapped
    labels = ["checkpoint-1", "checkpoint-2", "checkpoint-10"]
    files = {label: out.with_name(f"run.{label}.json") for label in labels}
    assert all(f.is_file() for f in files.values())
    # The comparison table, in checkpoint order, and its JSON twin.
    assert "sway compare — 3 runs, deltas vs checkpoint-1" in result.stdout
    compare = json.loads(out.with_name("run.compare.json").read_text("utf-8"))
    assert [r["label"] for r in compare["runs"]] == labels
    # Each adapter's result is exactly what a separate run on it gives.
    for label in labels:
        alone = tmp_path / f"alone-{label}"
        alone.mkdir()
        single = write_spec(alone, ckpts / label)
        solo = alone / "run.json"
        assert sway("run", single, "--json", solo).exit_code == 0
        many, one = probes(files[label]), probes(solo)
        for name in ("calib", "topic", "scale"):
            assert many[name]["verdict"] == one[name]["verdict"], (label, name)
            assert many[name]["raw"] == one[name]["raw"], (label, name)
            assert many[name]["z_score"] == one[name]["z_score"], (label, name)
    # The no-op first checkpoint fails, the trained last one passes: they really differ.
    assert probes(files["checkpoint-1"])["topic"]["verdict"] == "fail"
    assert probes(files["checkpoint-10"])["topic"]["verdict"] == "pass"
    # Each report counts its own adapter's work, not the backend's running total.
    stats = [json.loads(files[label].read_text("utf-8"))["backend_stats"] for label in labels]
    assert [s["model_loads"] for s in stats] == [1, 1, 1]
    forwards = [s["forward_passes"] for s in stats]
    assert forwards[0] > 0 and forwards[1] == forwards[2] and forwards[1] <= forwards[0]


def test_gate_fails_when_any_adapter_fails(ckpts: Path, tmp_path: Path) -> None:
    spec = write_spec(tmp_path)
    strong = sway("gate", spec, "--adapters", ckpts / "checkpoint-10")
    assert strong.exit_code == 0, strong.output
    mixed = sway("gate", spec, "--adapters", ckpts / "checkpoint-10", "--adapters", ckpts / "*-1")
    assert mixed.exit_code == 1, mixed.output
    assert "gate FAILED" in mixed.output and "gate passed" in mixed.output


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--adapters", "{root}/nothing-*"], "matches nothing"),
        (["--adapters", "{root}"], "is not a PEFT adapter folder"),
        (["--adapters", "{root}/missing"], "does not exist"),
        (["--adapters", "{root}/checkpoint-*", "--json", "-"], "every adapter gets its own"),
    ],
)
def test_user_mistakes_exit_2_before_anything_loads(
    ckpts: Path, tmp_path: Path, constructed: list[str], args: list[str], needle: str
) -> None:
    spec = write_spec(tmp_path)
    result = sway("run", spec, *[a.format(root=ckpts) for a in args])
    assert result.exit_code == 2, result.output
    assert needle in " ".join(result.output.split())
    assert "Traceback" not in result.output
    assert constructed == []


def test_backend_without_swap_is_loaded_per_adapter_with_a_note(
    ckpts: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from conftest import TwoViewBackend  # base + fine-tuned views only: no swap_adapter

    from dlm_sway.suite import many_adapters
    from dlm_sway.suite.loader import load_spec

    built: list[str] = []

    def build(_loaded: Any, adapter: Path) -> TwoViewBackend:
        built.append(adapter.name)
        return TwoViewBackend(DummyDifferentialBackend(adapter=str(adapter)))

    monkeypatch.setattr(many_adapters, "build_for_adapter", build)
    notes: list[str] = []
    loaded = load_spec(write_spec(tmp_path))
    loaded = type(loaded)(loaded.spec, loaded.path, loaded.probes[1:2], loaded.weights)
    refs = expand_adapters([str(ckpts / "checkpoint-*")])
    runs = many_adapters.run_many(loaded, refs, weights=loaded.weights, on_note=notes.append)
    assert built == ["checkpoint-1", "checkpoint-2", "checkpoint-10"]
    assert len(notes) == 1 and "cannot swap adapters in place" in notes[0]
    assert [r.suite.adapter_id for r in runs] == [str(r.path) for r in refs]


def test_swap_refuses_while_a_view_is_open(tmp_path: Path) -> None:
    backend = DummyDifferentialBackend()
    other = make_adapter(tmp_path / "b", strength=2.0)
    with backend.as_finetuned(), pytest.raises(Exception, match="while view"):
        backend.swap_adapter(str(other))
    backend.swap_adapter(str(other))
    assert backend.strength == 2.0 and backend.adapter_id == str(other)


# ---- sway diff ----


def test_diff_of_an_adapter_with_itself_reads_identical(ckpts: Path, tmp_path: Path) -> None:
    spec = write_spec(tmp_path)
    out = tmp_path / "diff.json"
    a = ckpts / "checkpoint-10"
    result = sway("diff", spec, "--a", a, "--b", a, "--runs", "4", "--json", out)
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text("utf-8"))
    assert data["identical"] is True and data["verdict"] == "identical"
    assert data["mean_js"] == 0.0 and all(p["js_ab"] == 0.0 for p in data["prompts"])
    assert "identical" in result.stdout and "indistinguishable" not in result.stdout


def test_diff_of_two_different_adapters_is_beyond_null_pairs(ckpts: Path, tmp_path: Path) -> None:
    spec = write_spec(tmp_path)
    # B pushes mass the other way (onto each prompt's top token): a real, structured difference.
    strong = make_adapter(tmp_path / "other", strength=1.5, planted=-2.0, adapter_seed=99)
    out = tmp_path / "diff.json"
    args = ("diff", spec, "--a", ckpts / "checkpoint-2", "--b", strong, "--runs", "10")
    result = sway(*args, "--json", out)
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text("utf-8"))
    assert data["identical"] is False and data["verdict"] == "pass", data["message"]
    assert data["mean_js"] > max(data["null_pair_means"])
    assert len(data["null_pair_means"]) == 10
    # B (1.5) is far stronger than A (0.4): it moves every prompt further from the base.
    assert data["b_moves_more"] == len(PROMPTS) and data["a_moves_more"] == 0
    assert "A and B differ beyond noise" in " ".join(result.stdout.split())


def test_diff_user_mistakes_exit_2(ckpts: Path, tmp_path: Path) -> None:
    spec = write_spec(tmp_path)
    missing = sway("diff", spec, "--a", ckpts / "checkpoint-10", "--b", ckpts / "nope")
    assert missing.exit_code == 2 and "does not exist" in missing.output
    no_b = sway("diff", spec, "--a", ckpts / "checkpoint-10")
    assert no_b.exit_code == 2
