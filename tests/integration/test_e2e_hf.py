"""End-to-end CLI runs on the tiny in-process Llama: gate, check and the null-stats cache.

The positive control is a LoRA of the fixture's structure (``tiny_model.lora_config``)
trained gently (lr 1e-3, 20 steps) on the fixture's base. The fixture's own
``adapter`` (lr 2e-2, 40 steps) is not used for that: on a random base whose
lm_head keeps next-token distributions near uniform, its attention change
saturates, and a random adapter of the same norm moves the output as much
(z ≈ 1.5, 1.1× the null median), which sway correctly calls noise. Because the
tiny model's distributions are near uniform, every JS here is small: the specs
lower ``assert_mean_gte`` (the "large enough to matter" bar) to 0.001.

``runs: 10`` nulls: with the small-sample-correct t-prediction (log scale), a
z-equivalent of 3 needs the effect ~7.3 null log-spreads above the null mean at
K=5 but ~4.3 at K=10, so with 3-5 nulls the margin depends on the null count
more than on the adapter.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from dlm_sway.cli.app import app

pytestmark = pytest.mark.hf

#: Prefixes of the text the adapters were trained on (tiny_model.TRAIN_TEXT).
PROMPTS = [
    "The zebra",
    "The zebra astronaut",
    "The zebra astronaut sings",
    "The zebra astronaut sings quietly to the",
    "quietly to the purple",
]
ENV = {"COLUMNS": "400", "NO_COLOR": "1", "FORCE_COLOR": None, "TTY_COMPATIBLE": None}
BANNERS = (
    "above noise",
    "above threshold",
    "below threshold",
    "negligible",
    "marginal",
    "indistinguishable from noise",
    "no verdict",
)


@pytest.fixture(autouse=True)
def null_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Each test has its own, initially empty, null-stats cache; nothing reaches ~/.cache."""
    root = tmp_path / "null-cache"
    monkeypatch.setenv("SWAY_NULL_CACHE_DIR", str(root))
    monkeypatch.delenv("SWAY_DISABLE_NULL_CACHE", raising=False)
    return root


@pytest.fixture(scope="module")
def trained_adapter(tiny_assets: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A LoRA that learned the training text with an effect beyond same-norm random ones."""
    import warnings

    import torch
    from peft import get_peft_model
    from tiny_model import TRAIN_TEXT, lora_config
    from transformers import AutoTokenizer, LlamaForCausalLM

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(tiny_assets.base)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = get_peft_model(LlamaForCausalLM.from_pretrained(tiny_assets.base), lora_config())
        ids = tokenizer(TRAIN_TEXT, return_tensors="pt")["input_ids"]
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=1e-3)
        model.train()
        for _ in range(20):
            loss = model(input_ids=ids, labels=ids).loss
            opt.zero_grad()
            loss.backward()
            opt.step()
        out = tmp_path_factory.mktemp("e2e") / "trained_adapter"
        model.save_pretrained(out)
    return out


def write_spec(tmp_path: Path, base: str | Path, adapter: Path, *, name: str = "sway.yaml") -> Path:
    spec = {
        "version": 1,
        "models": {"ft": {"kind": "hf", "base": str(base), "adapter": str(adapter)}},
        "defaults": {"seed": 0},
        "suite": [
            {"name": "calib", "kind": "null_adapter", "runs": 10},
            {"name": "topic", "kind": "delta_kl", "prompts": PROMPTS, "assert_mean_gte": 0.001},
            {
                "name": "scale",
                "kind": "adapter_ablation",
                "prompts": PROMPTS,
                "assert_mean_gte": 0.001,
            },
        ],
    }
    path = tmp_path / name
    path.write_text(yaml.safe_dump(spec), encoding="utf-8")
    return path


def sway(*args: str | Path) -> Any:
    result = CliRunner().invoke(app, [str(a) for a in args], env=ENV)
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(
        result.exception
    )
    return result


def probes_of(path: Path) -> dict[str, dict[str, Any]]:
    data = json.loads(path.read_text(encoding="utf-8"))
    return {p["name"]: p for p in data["probes"]}


def banner_line(stderr: str) -> str:
    lines = [ln for ln in stderr.splitlines() if any(ln.startswith(b) for b in BANNERS)]
    assert len(lines) == 1, stderr
    return lines[0]


# --- gate --------------------------------------------------------------------------------


def test_gate_passes_a_trained_adapter(
    tiny_assets: Any, trained_adapter: Path, tmp_path: Path
) -> None:
    spec = write_spec(tmp_path, tiny_assets.base, trained_adapter)
    out = tmp_path / "run.json"
    result = sway("gate", spec, "--json", out)
    assert result.exit_code == 0, result.output
    assert "gate passed" in result.stderr
    probes = probes_of(out)
    assert probes["calib"]["verdict"] == "pass"
    topic = probes["topic"]
    assert topic["verdict"] == "pass", topic["message"]
    assert topic["z_score"] >= 3.0
    assert topic["effect_ratio"] > 3.0  # several times a random adapter of the same norm
    assert "above noise" in topic["message"]
    assert probes["scale"]["verdict"] == "pass", probes["scale"]["message"]


def test_gate_fails_a_noop_adapter(tiny_assets: Any, tmp_path: Path) -> None:
    spec = write_spec(tmp_path, tiny_assets.base, tiny_assets.zero_adapter)
    out = tmp_path / "run.json"
    result = sway("gate", spec, "--json", out)
    assert result.exit_code == 1, result.output
    assert "gate FAILED" in result.stderr
    topic = probes_of(out)["topic"]
    assert topic["verdict"] == "fail"
    assert "indistinguishable from noise" in topic["message"]
    assert topic["raw"] == pytest.approx(0.0, abs=1e-6)


def test_gate_aborts_on_a_nan_adapter_with_one_preflight_error(
    tiny_assets: Any, tmp_path: Path
) -> None:
    spec = write_spec(tmp_path, tiny_assets.base, tiny_assets.nan_adapter)
    out = tmp_path / "run.json"
    result = sway("gate", spec, "--json", out)
    assert result.exit_code == 1, result.output
    assert "gate FAILED" in result.stderr
    data = json.loads(out.read_text(encoding="utf-8"))
    assert [(p["name"], p["verdict"]) for p in data["probes"]] == [("__preflight__", "error")]
    assert "__preflight__" in result.stdout  # the report says why, not just the exit code


def test_gate_exits_2_when_the_adapter_does_not_fit_the_base(
    tiny_assets: Any, tmp_path: Path
) -> None:
    spec = write_spec(tmp_path, tiny_assets.base, tiny_assets.mismatched_adapter)
    result = sway("gate", spec)
    assert result.exit_code == 2, result.output
    assert "error:" in result.stderr


# --- check -------------------------------------------------------------------------------


def test_check_with_base_prints_a_banner_that_matches_the_verdict(
    tiny_assets: Any, trained_adapter: Path, tmp_path: Path
) -> None:
    out = tmp_path / "check.json"
    result = sway("check", trained_adapter, "--base", tiny_assets.base, "--json", out)
    assert result.exit_code == 0, result.output
    line = banner_line(result.stderr)
    divergence = next(p for p in probes_of(out).values() if p["kind"] == "delta_kl")
    assert line.startswith("above noise") == (divergence["verdict"] == "pass"), (line, divergence)
    assert str(tiny_assets.base) in result.stdout  # the report header names the base


def test_check_calls_a_noop_adapter_noise(tiny_assets: Any) -> None:
    result = sway("check", tiny_assets.zero_adapter, "--base", tiny_assets.base)
    assert result.exit_code == 0, result.output
    assert banner_line(result.stderr).startswith("indistinguishable from noise")


def test_check_infers_the_base_from_adapter_config(
    tiny_assets: Any, trained_adapter: Path, tmp_path: Path
) -> None:
    from tiny_model import rewrite_adapter_config

    adapter = Path(shutil.copytree(trained_adapter, tmp_path / "adapter"))
    rewrite_adapter_config(adapter, base_model_name_or_path=str(tiny_assets.base))
    result = sway("check", adapter)
    assert result.exit_code == 0, result.output
    assert f"inferred base model: {tiny_assets.base}" in result.stderr
    banner_line(result.stderr)
    assert str(tiny_assets.base) in result.stdout


# --- null-stats disk cache ---------------------------------------------------------------


def run_json(spec: Path) -> dict[str, dict[str, Any]]:
    result = sway("run", spec, "--json", "-")
    assert result.exit_code == 0, result.output
    return {p["name"]: p for p in json.loads(result.stdout)["probes"]}


def test_null_stats_are_cached_and_invalidated_by_new_weights(
    tiny_assets: Any, trained_adapter: Path, tmp_path: Path, null_cache: Path
) -> None:
    from safetensors.torch import load_file, save_file

    adapter = Path(shutil.copytree(trained_adapter, tmp_path / "adapter"))
    spec = write_spec(tmp_path, tiny_assets.base, adapter)

    first = run_json(spec)
    assert "loaded from cache" not in first["calib"]["message"]
    entries = sorted(null_cache.glob("*.json"))
    assert len(entries) == 1

    second = run_json(spec)
    assert "loaded from cache" in second["calib"]["message"]
    # Within float jitter, not bit for bit: the first run scored the fine-tune in forwards
    # shared with the nulls (hf_sweep), the second, with its nulls cached, alone.
    assert second["topic"]["z_score"] == pytest.approx(first["topic"]["z_score"], rel=1e-6)
    assert sorted(null_cache.glob("*.json")) == entries

    # Retrained in place: same path, different weights → the cached nulls must not be reused.
    weights = adapter / "adapter_model.safetensors"
    tensors = load_file(str(weights))
    save_file({k: v * 1.5 if "lora_B" in k else v for k, v in tensors.items()}, str(weights))
    third = run_json(spec)
    assert "loaded from cache" not in third["calib"]["message"]
    assert len(list(null_cache.glob("*.json"))) == 2


def test_cache_is_off_with_sway_disable_null_cache(
    tiny_assets: Any, trained_adapter: Path, tmp_path: Path, null_cache: Path, monkeypatch: Any
) -> None:
    monkeypatch.setenv("SWAY_DISABLE_NULL_CACHE", "1")
    spec = write_spec(tmp_path, tiny_assets.base, trained_adapter)
    run_json(spec)
    assert "loaded from cache" not in run_json(spec)["calib"]["message"]
    assert not list(null_cache.glob("*.json"))


def test_null_cache_is_invalidated_by_a_new_lora_alpha(
    tiny_assets: Any, trained_adapter: Path, tmp_path: Path
) -> None:
    from tiny_model import rewrite_adapter_config

    adapter = Path(shutil.copytree(trained_adapter, tmp_path / "adapter"))
    spec = write_spec(tmp_path, tiny_assets.base, adapter)
    run_json(spec)
    config = json.loads((adapter / "adapter_config.json").read_text(encoding="utf-8"))
    rewrite_adapter_config(adapter, lora_alpha=4 * config["lora_alpha"])
    again = run_json(spec)
    assert "loaded from cache" not in again["calib"]["message"]


def test_missing_base_in_a_spec_names_the_file_and_field(
    trained_adapter: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "specs"
    folder.mkdir()
    spec = write_spec(folder, "./no-such-base", trained_adapter, name="missing.yaml")
    monkeypatch.chdir(tmp_path)
    result = sway("gate", spec)
    assert result.exit_code == 2, result.output
    assert "missing.yaml" in result.stderr
    assert "models.ft.base" in result.stderr
    assert "current directory" not in result.stderr
