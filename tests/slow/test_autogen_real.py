"""Issue-level check on the real model: autogen → run → attribution points at trained text.

The shipped `strong` adapter was trained on the whole bundled document. We append one
section it never saw (general prose from the built-in corpus); per-section attribution
must rank every trained section above it.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from dlm_sway.cli.app import app
from dlm_sway.data import load_general_corpus_chunks
from dlm_sway.suite.loader import load_spec
from dlm_sway.suite.runner import run
from dlm_sway.suite.score import compute

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
DOC = REPO / "src" / "dlm_sway" / "demo" / "data" / "document.md"
STRONG = REPO / "src" / "dlm_sway" / "demo" / "adapters" / "strong"


def test_autogen_suite_attributes_the_trained_sections(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SWAY_NULL_CACHE_DIR", str(tmp_path / "null-cache"))
    unrelated = load_general_corpus_chunks(1, 700)[0]
    doc = tmp_path / "notes.md"
    doc.write_text(
        DOC.read_text(encoding="utf-8") + "\n\n## Unrelated notes\n\n" + unrelated + "\n",
        encoding="utf-8",
    )
    out = tmp_path / "sway.yaml"
    res = CliRunner().invoke(app, ["autogen", str(doc), "--adapter", str(STRONG), "-o", str(out)])
    assert res.exit_code == 0, res.output

    # keep the slow lane affordable: fewer nulls and a lighter suite than the default
    spec = yaml.safe_load(out.read_text(encoding="utf-8"))
    keep = {"null_adapter", "delta_kl", "section_internalization", "external_perplexity"}
    spec["suite"] = [e for e in spec["suite"] if e["kind"] in keep]
    spec["suite"][0]["runs"] = 3
    if "calibrate_kinds" in spec["suite"][0]:  # only kinds that still follow it
        spec["suite"][0]["calibrate_kinds"] = [
            k for k in spec["suite"][0]["calibrate_kinds"] if k in keep
        ]
    out.write_text(yaml.safe_dump(spec, sort_keys=False), encoding="utf-8")

    loaded = load_spec(out)
    from dlm_sway.suite.build import backend_from_spec

    backend = backend_from_spec(loaded.spec.models.ft)
    try:
        suite = run(loaded, backend)
    finally:
        backend.close()
    score = compute(suite, loaded.weights)

    sis = next(p for p in suite.probes if p.kind == "section_internalization")
    per_section = sis.evidence["per_section"]
    unrelated_row = next(r for r in per_section if "Unrelated" in str(r.get("title", "")))
    trained_rows = [
        r for r in per_section if r is not unrelated_row and r.get("own_lift") is not None
    ]
    assert len(trained_rows) >= 5
    assert all(r["own_lift"] > unrelated_row["own_lift"] for r in trained_rows), per_section
    assert unrelated_row["passed"] is False

    dkl = next(p for p in suite.probes if p.kind == "delta_kl")
    assert dkl.raw is not None and dkl.raw > 0.1
    ext = next(p for p in suite.probes if p.kind == "external_perplexity")
    assert ext.raw is not None and ext.raw < 0  # the strong adapter over-fitted: it forgets
    assert 0.0 <= score.overall <= 1.0
