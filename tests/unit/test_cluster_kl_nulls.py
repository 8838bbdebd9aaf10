"""cluster_kl's nulls are judged on the real run's clusters (issue 7, item 7).

Before, each null draw re-clustered the prompts with its own null seed while the
real run clustered with the run seed, so the null's specificity was measured on
other topics than the adapter's. Now the prompts are clustered once, with the
run seed, and every null uses that assignment. A fake embedder keeps this fast;
its embeddings have no topic structure, so k-means seeds really do matter.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray

from dlm_sway.core.result import SuiteResult
from dlm_sway.probes import _embed, cluster_kl

pytest.importorskip("sklearn")

RunSuite = Callable[..., SuiteResult]

PROMPTS = [f"Prompt number {i} about topic {i % 4} goes like" for i in range(24)]
NULL = {"name": "null", "kind": "null_adapter", "runs": 6}
CK = {"name": "ck", "kind": "cluster_kl", "prompts": PROMPTS, "num_clusters": 5}


def structureless_embed(texts: Sequence[str]) -> NDArray[np.float64]:
    """Deterministic Gaussian embeddings: no topics, so the clustering depends on the seed."""
    rows = [
        np.random.default_rng(int(hashlib.md5(t.encode()).hexdigest()[:8], 16)).normal(size=12)
        for t in texts
    ]
    return np.asarray(rows)


@pytest.fixture(autouse=True)
def fake_embedder() -> Iterator[None]:
    with _embed.embedder_override(structureless_embed):
        yield


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, list[int]]]:
    """Every clustering the probe asks for: (seed, labels), in call order."""
    seen: list[tuple[int, list[int]]] = []
    real = cluster_kl.kmeans_labels

    def spy(embeddings: Any, k: int, seed: int) -> Any:
        labels = real(embeddings, k, seed)
        seen.append((seed, labels.tolist()))
        return labels

    monkeypatch.setattr(cluster_kl, "kmeans_labels", spy)
    return seen


def test_the_seeds_would_matter() -> None:
    """Guard for the test below: on these embeddings, another seed is another partition."""
    emb = _embed._normalise(structureless_embed(PROMPTS), len(PROMPTS))
    partitions = {tuple(cluster_kl.kmeans_labels(emb, 5, s).tolist()) for s in range(6)}
    assert len(partitions) > 1


@pytest.mark.parametrize("seed", [0, 5])
def test_every_null_uses_the_real_runs_assignment(
    seed: int, run_suite: RunSuite, calls: list[tuple[int, list[int]]]
) -> None:
    res = run_suite(NULL, CK, seed=seed)
    real = res.by_name("ck")
    cal = res.by_name("null").calibration
    assert cal is not None and "ck" in cal.stats
    assert real.null is not None and real.null.k == NULL["runs"]
    assert len(calls) == NULL["runs"] + 1  # one per null draw, then the real run
    assert all(s == seed for s, _ in calls), [s for s, _ in calls]
    assert all(labels == real.evidence["labels"] for _, labels in calls)


def test_prompts_are_clustered_once(run_suite: RunSuite, monkeypatch: pytest.MonkeyPatch) -> None:
    fits: list[int] = []
    real = cluster_kl._kmeans

    def counting(embeddings: Any, k: int, seed: int) -> Any:
        fits.append(seed)
        return real(embeddings, k, seed)

    monkeypatch.setattr(cluster_kl, "_kmeans", counting)
    monkeypatch.setattr(cluster_kl, "_LABELS", {})
    run_suite(NULL, CK, seed=3)
    assert fits == [3]
