"""Verdict tiers that mean what they say, on the probes themselves (issue 8, items 1–2).

Each probe is run with hand-built null samples (``NullStats`` in a ``RunContext``),
so the null comparison is known exactly and the expected words can be computed
independently with scipy. The defects (measured on 416dd1a):

* at K=3 an adapter 57.6× the null median with p≈0.002 was "indistinguishable from
  noise"; one that beat all 20 of 20 nulls (p≈0.0035) was too;
* an effect ratio ×−168.7 was printed for a signed metric whose null median is
  slightly negative;
* messages must carry exactly the numbers of the typed fields.

Only modules that exist in both revisions are imported at the top, so on the old
code every test fails on its own assertion.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats as sps

from dlm_sway.backends.dummy import DummyDifferentialBackend
from dlm_sway.core.calibration import compare_to_null
from dlm_sway.core.result import ProbeResult, Verdict
from dlm_sway.core.sections import Section
from dlm_sway.core.stats import NullStats
from dlm_sway.probes.adapter_ablation import AdapterAblationProbe, AdapterAblationSpec
from dlm_sway.probes.base import Probe, ProbeSpec, RunContext
from dlm_sway.probes.delta_kl import DeltaKLProbe, DeltaKLSpec
from dlm_sway.probes.paraphrase_invariance import (
    ParaphraseCase,
    ParaphraseInvarianceProbe,
    ParaphraseInvarianceSpec,
)
from dlm_sway.probes.preference_flip import (
    PreferenceFlipProbe,
    PreferenceFlipSpec,
    PreferenceTriple,
)
from dlm_sway.probes.section_internalization import (
    SectionInternalizationProbe,
    SectionInternalizationSpec,
)

PROMPTS = ["The quick brown fox", "Alpha beta gamma delta", "Hello world", "Once upon a time"]
NOISE = "indistinguishable from noise"
Z_BAR = 3.0


# --- probes and their measurements ------------------------------------------------------------


class _ScriptedView:
    """Summed log-prob −1 on every "good …" completion, 0 elsewhere, plus ``shift`` on
    "good …" under the fine-tune: every margin moves by exactly ``shift``."""

    def __init__(self, shift: float) -> None:
        self._shift = shift

    @property
    def id(self) -> str:
        return "scripted"

    def logprob_of(self, prompt: str, completion: str) -> float:
        return -1.0 + self._shift if completion.startswith("good") else 0.0

    def completion_token_count(self, prompt: str, completion: str) -> int:
        return len(completion.split())


class ScriptedBackend:
    def __init__(self, shift: float) -> None:
        self.shift = shift

    @contextmanager
    def as_base(self) -> Iterator[_ScriptedView]:
        yield _ScriptedView(0.0)

    @contextmanager
    def as_finetuned(self) -> Iterator[_ScriptedView]:
        yield _ScriptedView(self.shift)


TRIPLES = [
    PreferenceTriple(prompt=f"Q{i}:", chosen=f"good answer {i}", rejected=f"bad reply {i}")
    for i in range(4)
]
SECTIONS = (
    Section(id="zebra", kind="prose", content="zebra " + " ".join(f"s{i}" for i in range(30))),
    Section(id="river", kind="prose", content="river " + " ".join(f"w{i}" for i in range(30))),
)


def _case(kind: str, backend: Any = None) -> tuple[Probe, ProbeSpec, Any, dict[str, Any]]:
    """(probe, spec, backend, extra RunContext fields) for one probe kind."""
    if kind == "delta_kl":
        return DeltaKLProbe(), DeltaKLSpec(name="p", prompts=PROMPTS), backend, {}
    if kind == "adapter_ablation":
        return AdapterAblationProbe(), AdapterAblationSpec(name="p", prompts=PROMPTS), backend, {}
    if kind == "preference_flip":
        spec = PreferenceFlipSpec(name="p", triples=TRIPLES)
        return PreferenceFlipProbe(), spec, backend or ScriptedBackend(2.0), {}
    if kind == "paraphrase_invariance":
        gold = "good answer"  # +1 nat per gold token on the prompt and its rewording
        cases = [ParaphraseCase(prompt="Capital of France?", gold=gold, paraphrases=["Q?"])]
        spec_p = ParaphraseInvarianceSpec(name="p", cases=cases)
        return ParaphraseInvarianceProbe(), spec_p, backend or ScriptedBackend(2.0), {}
    assert kind == "section_internalization"
    spec_s = SectionInternalizationSpec(name="p", per_section_threshold=0.0)
    return SectionInternalizationProbe(), spec_s, backend, {"sections": SECTIONS}


def run_probe(kind: str, samples: Sequence[float] | None, *, backend: Any = None) -> ProbeResult:
    probe, spec, be, extra = _case(kind, backend)
    be = be if be is not None else DummyDifferentialBackend()
    nulls = {}
    if samples is not None:
        nulls = {"p": NullStats.from_samples(list(samples), construction="norm_matched")}
    return probe.run(spec, RunContext(backend=be, null_stats=nulls, **extra))


def raw_of(kind: str, **kw: Any) -> float:
    raw = run_probe(kind, None, **kw).raw
    assert raw is not None and math.isfinite(raw)
    return raw


# --- independent expectations -----------------------------------------------------------------


def fmt_p(p: float) -> str:
    return f"{p:.2g}"


def nulls_needed(sds: float, bar: float = Z_BAR) -> int | None:
    """Fewest K whose t-prediction bar an effect ``sds`` null SDs out clears."""
    alpha = float(sps.norm.sf(bar))
    for k in range(2, 201):
        if sps.t.isf(alpha, k - 1) * math.sqrt(1.0 + 1.0 / k) <= sds:
            return k
    return None


def sd_distance(raw: float, samples: Sequence[float], *, log_scale: bool) -> float:
    x = math.log(raw) if log_scale else raw
    ns = np.log(samples) if log_scale else np.asarray(samples, dtype=float)
    return float((x - ns.mean()) / ns.std(ddof=1))


_NUM = re.compile(r"[+-]?\d+(?:\.\d+)?(?:e[+-]?\d+)?")


def assert_numbers_follow_fields(r: ProbeResult, samples: Sequence[float]) -> None:
    """Every number in the verdict's words is one of the typed fields, as reports print it."""
    assert r.null is not None and r.z_score is not None and r.p_value is not None
    assert r.message.startswith(f"{r.headline}: ")
    what = r.measured.split("; ")[0]
    assert what in r.message
    words = r.message.split("; failed: ")[0].split("; not judged: ")[0]
    words = words.replace(what, "", 1).removeprefix(f"{r.headline}: ")
    z_text, p_text = f"{r.z_score:+.2f}", fmt_p(r.p_value)
    assert re.findall(r"z=([+-]\d+\.\d\d)σ", words) and all(
        z == z_text for z in re.findall(r"z=([+-]\d+\.\d\d)σ", words)
    ), (words, z_text)
    assert re.findall(r"\bp=(\S+?)[ ,;)]", words) == [p_text], (words, p_text)
    assert re.findall(r"vs (\d+) norm-matched nulls", words) == [str(r.null.k)]
    assert r.null.k == len(samples)
    allowed = {z_text, p_text, str(r.null.k), f"{Z_BAR:g}", "0.05", "200"}
    ratios = re.findall(r"(\S+)× the null median", words)
    if r.null.non_negative:
        assert r.effect_ratio is not None
        assert ratios == [f"{r.effect_ratio:.3g}"]
        allowed.add(ratios[0])
    else:
        assert r.effect_ratio is None and "×" not in r.message
        assert r.raw is not None
        sds = sd_distance(r.raw, samples, log_scale=r.null.log_scale)
        assert re.findall(r"([+-]\d+\.\d\d) null SDs from the null mean", words) == [f"{sds:+.2f}"]
        allowed.add(f"{sds:+.2f}")
    allowed.update(re.findall(r"with (\d+) nulls instead of", words))
    stray = [n for n in _NUM.findall(words) if n not in allowed]
    assert not stray, (stray, words)


def log_spread_nulls(raw: float, ratio: float, p: float, k: int) -> list[float]:
    """K nulls, symmetric on log scale around raw/ratio, placing raw at t-prediction p."""
    offsets = np.array(sps.norm.ppf((np.arange(k) + 0.5) / k))
    offsets = offsets - offsets.mean()
    offsets /= offsets.std(ddof=1)
    stat = float(sps.t.isf(p, k - 1))
    spread = math.log(ratio) / (stat * math.sqrt(1.0 + 1.0 / k))
    return [raw / ratio * math.exp(spread * o) for o in offsets]


# --- WARN "real but below the bar", never "noise" at p < 0.05 ---------------------------------


@pytest.mark.parametrize("kind", ["delta_kl", "adapter_ablation"])
def test_k3_adapter_57x_the_null_median_is_real_but_below_the_bar(kind: str) -> None:
    raw = raw_of(kind)
    samples = log_spread_nulls(raw, 57.6, 0.0022, 3)
    r = run_probe(kind, samples)
    assert r.p_value == pytest.approx(0.0022, rel=1e-6)
    assert r.effect_ratio == pytest.approx(57.6, rel=1e-9)
    assert r.verdict is Verdict.WARN, r.message
    assert r.headline == "real but below the bar"
    assert NOISE not in r.message
    assert r.score is not None and r.score <= 0.5
    # ... and says how many nulls would reach the bar (same mean and SD assumed)
    sds = sd_distance(raw, samples, log_scale=True)
    need = nulls_needed(sds)
    assert need is not None and need > 3
    assert f"with {need} nulls instead of 3 this effect would reach the bar" in r.message
    assert_numbers_follow_fields(r, samples)


def test_beating_all_20_of_20_nulls_is_not_noise() -> None:
    raw = raw_of("delta_kl")
    k, p = 20, 0.0035
    q = np.array(sps.norm.ppf((np.arange(k) + 0.5) / k))
    q = (q - q.mean()) / q.std(ddof=1)
    centre = float(sps.t.isf(p, k - 1)) * math.sqrt(1.0 + 1.0 / k)  # null SDs below log raw
    samples = [raw * math.exp(x - centre) for x in q]
    assert max(samples) < raw  # the adapter beats every one of them
    r = run_probe("delta_kl", samples)
    assert r.p_value == pytest.approx(p, rel=1e-6)
    assert r.null is not None and r.null.p_empirical == pytest.approx(1 / 21)
    assert NOISE not in r.message
    assert r.verdict is Verdict.WARN and r.headline == "real but below the bar", r.message
    need = nulls_needed(centre)
    hint = (
        f"with {need} nulls instead of 20"
        if need is not None
        else "no number of nulls up to 200 lifts this effect to z ≥ 3"
    )
    assert hint in r.message
    assert_numbers_follow_fields(r, samples)


@pytest.mark.parametrize("kind", ["preference_flip", "paraphrase_invariance"])
def test_signed_probes_below_the_bar_warn_too(kind: str) -> None:
    raw = raw_of(kind)
    sd = 1.0
    centre = float(sps.t.isf(0.01, 4)) * math.sqrt(1.2)  # p = 0.01 at K=5
    samples = [raw - centre * sd + d for d in (-1.2649, -0.6325, 0.0, 0.6325, 1.2649)]
    r = run_probe(kind, samples)
    assert r.p_value == pytest.approx(0.01, rel=1e-3)
    assert r.verdict is Verdict.WARN and r.headline == "real but below the bar", r.message
    assert NOISE not in r.message
    assert_numbers_follow_fields(r, samples)


# --- "indistinguishable from noise" iff p ≥ 0.05 (or nothing changed) -------------------------

_NULL_OFFSETS = st.lists(
    st.floats(min_value=-6.0, max_value=2.0, allow_nan=False), min_size=2, max_size=12
)


@settings(max_examples=150, deadline=None)
@given(offsets=_NULL_OFFSETS, noop=st.booleans())
def test_property_noise_words_iff_p_at_least_alpha_divergence(
    offsets: list[float], noop: bool
) -> None:
    backend = DummyDifferentialBackend(strength=0.0 if noop else 0.5)
    raw = raw_of("delta_kl", backend=backend)
    base = raw if raw > 0 else 0.05
    samples = [base * math.exp(o) for o in offsets]
    cmp = compare_to_null(raw, samples, log_scale=True)
    r = run_probe("delta_kl", samples, backend=backend)
    if raw > 0 and cmp.p_value is None:  # no spread: fixed thresholds, no null words
        assert NOISE not in r.message and r.z_score is None
        return
    noise = raw <= 0 or (cmp.p_value is not None and cmp.p_value >= 0.05)
    assert (NOISE in r.message) is noise, (raw, cmp.p_value, r.message)
    if r.verdict is Verdict.FAIL:
        assert r.score is not None and r.score <= 0.25
    if raw > 0:
        assert r.p_value == cmp.p_value
        assert_numbers_follow_fields(r, samples)


@settings(max_examples=150, deadline=None)
@given(
    shift=st.floats(min_value=-4.0, max_value=4.0, allow_nan=False),
    samples=st.lists(
        st.floats(min_value=-4.0, max_value=4.0, allow_nan=False), min_size=2, max_size=12
    ),
)
def test_property_noise_words_iff_p_at_least_alpha_signed(
    shift: float, samples: list[float]
) -> None:
    backend = ScriptedBackend(shift)
    r = run_probe("preference_flip", samples, backend=backend)
    assert r.raw is not None
    cmp = compare_to_null(r.raw, samples)
    # a signed metric: never a ratio to the null median, whatever its sign
    assert r.effect_ratio is None and "×" not in r.message
    if cmp.p_value is None:
        assert NOISE not in r.message and r.z_score is None
        return
    assert (NOISE in r.message) is (cmp.p_value >= 0.05), (cmp.p_value, r.message)
    assert r.p_value == cmp.p_value
    assert_numbers_follow_fields(r, samples)


# --- no effect ratio for signed metrics -------------------------------------------------------


@pytest.mark.parametrize(
    "kind", ["preference_flip", "paraphrase_invariance", "section_internalization"]
)
@pytest.mark.parametrize("median", [-0.003, -2.0])
def test_signed_metric_with_negative_null_median_prints_no_ratio(kind: str, median: float) -> None:
    raw = raw_of(kind)
    samples = [median - 0.5, median - 0.1, median, median + 0.05, median + 0.2]
    r = run_probe(kind, samples)
    assert r.effect_ratio is None  # 416dd1a: raw / median, e.g. ×−168.7
    assert "×" not in r.message
    assert r.null is not None and r.null.non_negative is False
    assert "null SDs from the null mean" in r.message
    assert r.raw == pytest.approx(raw)
    assert_numbers_follow_fields(r, samples)


def test_divergence_keeps_its_ratio() -> None:
    raw = raw_of("delta_kl")
    samples = [raw / 40, raw / 50, raw / 60]
    r = run_probe("delta_kl", samples)
    assert r.null is not None and r.null.non_negative is True
    assert r.effect_ratio == pytest.approx(50.0)
    assert "50× the null median" in r.message


def test_report_p_format_is_the_messages() -> None:
    from dlm_sway.core.judge import format_p

    for p in (0.0022, 0.0035, 0.049999, 1.8e-05, 0.5):
        assert format_p(p) == fmt_p(p)
