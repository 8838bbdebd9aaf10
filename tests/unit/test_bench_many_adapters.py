"""bench/many_adapters.py: arguments, training data, specs, the table and verdict check;
plus ``model_loads``, the count the bench asserts, recorded by ``run_many``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from bench_modules import load

from dlm_sway.backends.dummy import DummyDifferentialBackend
from dlm_sway.suite import many_adapters as suite_many

bench = load("many_adapters")


def test_defaults_give_five_checkpoints_and_too_few_is_refused(
    capsys: pytest.CaptureFixture[str],
) -> None:
    args = bench.parse_args([])
    assert bench.checkpoint_steps(args.steps, args.every) == [1, 2, 3, 4, 5]
    assert bench.checkpoint_steps(10, 2) == [2, 4, 6, 8, 10]
    with pytest.raises(SystemExit) as exc:
        bench.parse_args(["--steps", "8", "--every", "2"])
    assert exc.value.code == 2
    assert "saves 4 checkpoints" in capsys.readouterr().err


def test_order_alternates() -> None:
    assert bench.order(0) == ("many", "separate") and bench.order(1) == ("separate", "many")


def test_training_sentences_are_prose_after_the_first_heading() -> None:
    text = "# T\n\nIntro words that are not trained on here.\n\n## A\n\nOne two three four five six. Short.\nQ: a question that is long enough here?\nRejected: a wrong answer that is long enough.\nSeven eight nine ten eleven twelve.\n"
    assert bench.training_sentences(text) == [
        "One two three four five six.",
        "Seven eight nine ten eleven twelve.",
    ]
    real = bench.training_sentences(bench.DOCUMENT.read_text("utf-8"))
    assert len(real) == 4 and real[0].startswith("The Guild dates from")


def test_specs_point_each_copy_at_its_checkpoint(tmp_path: Path) -> None:
    ckpts = [tmp_path / f"checkpoint-{i}" for i in (1, 2)]
    sweep, singles = bench.write_specs(tmp_path, ckpts)
    data = yaml.safe_load(sweep.read_text("utf-8"))
    assert data["models"]["ft"]["adapter"] == str(ckpts[0])
    assert [p["kind"] for p in data["suite"]] == [
        "null_adapter",
        "delta_kl",
        "calibration_drift",
    ]
    adapters = [yaml.safe_load(s.read_text("utf-8"))["models"]["ft"]["adapter"] for s in singles]
    assert adapters == [str(c) for c in ckpts]


def _sample(side: str, wall: float) -> Any:
    return bench.Sample(side, 0, wall, wall / 2, 900.0, 1 if side == "many" else 5, 1)


def test_render_reports_the_ratio_of_walls() -> None:
    table = bench.render([_sample("many", 50.0), _sample("separate", 200.0)])
    assert "many 50.0s vs separate 200.0s -> many/separate 0.25 (separate is 4.0x slower)" in table
    assert table.splitlines()[1].split()[:4] == ["0", "many", "1", "1"]


def test_verdict_mismatches_name_the_checkpoint() -> None:
    ok = {"probes": [{"name": "t", "verdict": "pass"}]}
    bad = {"probes": [{"name": "t", "verdict": "fail"}]}
    assert bench.verdict_mismatches({"c1": ok}, {"c1": ok}) == []
    (line,) = bench.verdict_mismatches({"c1": ok, "c2": ok}, {"c1": ok, "c2": bad})
    assert line.startswith("c2:") and "t=fail" in line


def _adapter(folder: Path, strength: float) -> Path:
    folder.mkdir(parents=True)
    (folder / "adapter_config.json").write_text('{"peft_type": "LORA"}', "utf-8")
    (folder / DummyDifferentialBackend.ADAPTER_FILE).write_text(
        json.dumps({"strength": strength}), "utf-8"
    )
    return folder


@pytest.mark.parametrize("swappable", [True, False])
def test_run_many_records_model_loads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, swappable: bool
) -> None:
    from tests.unit.conftest import TwoViewBackend  # no swap_adapter

    from dlm_sway.suite.loader import load_spec

    paths = [_adapter(tmp_path / f"checkpoint-{i}", 0.3 * i) for i in (1, 2, 3)]
    if not swappable:
        monkeypatch.setattr(
            suite_many,
            "build_for_adapter",
            lambda _l, a: TwoViewBackend(DummyDifferentialBackend(adapter=str(a))),
        )
    spec = tmp_path / "sway.yaml"
    models = {"ft": {"kind": "dummy", "base": "b", "adapter": str(paths[0])}}
    suite = [{"name": "topic", "kind": "delta_kl", "prompts": ["The quick brown fox"]}]
    spec.write_text(yaml.safe_dump({"version": 1, "models": models, "suite": suite}), "utf-8")
    loaded = load_spec(spec)
    refs = suite_many.expand_adapters([str(tmp_path / "checkpoint-*")])
    runs = suite_many.run_many(loaded, refs, weights=loaded.weights)
    want = [1, 1, 1] if swappable else [1, 2, 3]
    assert [r.model_loads for r in runs] == want
    assert [r.suite.backend_stats["model_loads"] for r in runs] == want
