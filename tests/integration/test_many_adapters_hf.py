"""``--adapters`` on the real HF stack: one load, base forwards once, results = separate runs."""

from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from tiny_model import TinyAssets

PROMPTS = ["The zebra astronaut", "The quick brown fox", "Fresh bread and"]


def scaled_checkpoint(src: Path, dst: Path, factor: float) -> Path:
    """A copy of ``src`` with every lora_B × factor: a checkpoint part-way through training."""
    from safetensors.torch import load_file, save_file

    shutil.copytree(src, dst)
    weights = dst / "adapter_model.safetensors"
    tensors = load_file(str(weights))
    save_file({k: v * factor if "lora_B" in k else v for k, v in tensors.items()}, str(weights))
    return dst


def other_structure(assets: TinyAssets, dst: Path) -> Path:
    """Rank 8 on q/k instead of rank 4 on q/v: the swap must rebuild the LoRA modules."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(3)
    model = AutoModelForCausalLM.from_pretrained(assets.base)
    config = LoraConfig(r=8, lora_alpha=8, target_modules=["q_proj", "k_proj"])
    peft = get_peft_model(model, config)
    for name, param in peft.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.05)
    peft.save_pretrained(dst)
    return dst


@pytest.fixture
def checkpoints(tiny_assets: TinyAssets, tmp_path: Path) -> list[Path]:
    out = tmp_path / "run"
    found = [
        scaled_checkpoint(tiny_assets.adapter, out / f"checkpoint-{step}", step / 50)
        for step in (10, 20, 30, 40)
    ]
    return [*found, other_structure(tiny_assets, out / "checkpoint-50")]


def loaded_spec(base: Path, adapter: Path) -> Any:
    from dlm_sway.suite.loader import from_dict

    suite = [
        {"name": "calib", "kind": "null_adapter", "runs": 3},
        {"name": "topic", "kind": "delta_kl", "prompts": PROMPTS},
        {"name": "scale", "kind": "adapter_ablation", "prompts": PROMPTS[:2]},
    ]
    models = {"ft": {"kind": "hf", "base": str(base), "adapter": str(adapter), "batch_size": 3}}
    return from_dict({"version": 1, "models": models, "suite": suite})


def test_one_load_shared_base_and_results_equal_separate_runs(
    tiny_assets: TinyAssets, checkpoints: list[Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    from dlm_sway.backends.hf import HFDifferentialBackend
    from dlm_sway.backends.hf_views import HFScorer
    from dlm_sway.suite.many_adapters import expand_adapters, run_many

    monkeypatch.setenv("SWAY_DISABLE_BASE_CACHE", "1")  # count real base forwards
    monkeypatch.setenv("SWAY_DISABLE_NULL_CACHE", "1")  # separate runs compute their own nulls
    backends: list[HFDifferentialBackend] = []
    forwards: Counter[str] = Counter()
    init, forward = HFDifferentialBackend.__init__, HFScorer.forward

    def counting_init(self: HFDifferentialBackend, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **kwargs)
        backends.append(self)

    def counting_forward(self: HFScorer, *args: Any, **kwargs: Any) -> Any:
        active = backends[-1]._active or "none"
        forwards["base" if active == "base" else "adapter"] += 1
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(HFDifferentialBackend, "__init__", counting_init)
    monkeypatch.setattr(HFScorer, "forward", counting_forward)

    loaded = loaded_spec(tiny_assets.base, checkpoints[0])
    refs = expand_adapters([str(checkpoints[0].parent / "checkpoint-*")])
    assert [r.label for r in refs] == [p.name for p in checkpoints]

    one = run_many(loaded, refs[:1], weights=loaded.weights)
    base_once = forwards["base"]
    assert base_once > 0 and len(backends) == 1
    forwards.clear()
    many = run_many(loaded, refs, weights=loaded.weights)
    assert len(backends) == 2  # the 5-adapter run constructed the model once
    assert forwards["base"] == base_once  # base outputs computed once, shared by all five
    assert forwards["adapter"] > 0
    assert [p.raw for p in many[0].suite.probes] == _approx([p.raw for p in one[0].suite.probes])

    identities = {r.suite.backend_stats["identity"] for r in many}
    assert len(identities) == len(refs)  # caches never mix two adapters
    for run in (many[1], many[4]):  # swapped in place, and swapped by rebuilding modules
        alone = run_many(loaded_spec(tiny_assets.base, run.ref.path), [run.ref], weights={})
        # Equal within float jitter: views share forwards with whichever views still
        # lack a result (hf_sweep), and a run with a cached base shares with fewer.
        for got, want in zip(run.suite.probes, alone[0].suite.probes, strict=True):
            assert (got.name, got.verdict) == (want.name, want.verdict), run.ref.label
            assert [got.raw] == _approx([want.raw]), run.ref.label
            assert [got.z_score] == _approx([want.z_score], abs=1e-4), run.ref.label  # in σ
    topic = [next(p for p in r.suite.probes if p.name == "topic").raw for r in many[:4]]
    assert topic == sorted(topic) and topic[0] < topic[-1]  # larger B, larger divergence


def test_a_swap_that_does_not_fit_restores_the_previous_adapter(
    tiny_assets: TinyAssets, tmp_path: Path
) -> None:
    from dlm_sway.backends.hf import HFDifferentialBackend
    from dlm_sway.core.errors import BackendLoadError

    backend = HFDifferentialBackend(str(tiny_assets.base), tiny_assets.adapter, batch_size=3)
    try:
        with backend.as_finetuned() as view:
            before = view.next_token_dist(PROMPTS[0], top_k=8)
        identity = backend.cache_identity()
        with pytest.raises(BackendLoadError, match="does not fit"):
            backend.swap_adapter(str(tiny_assets.mismatched_adapter))
        assert backend.cache_identity() == identity
        backend.instrumentation.cache.clear()
        with backend.as_finetuned() as view:
            after = view.next_token_dist(PROMPTS[0], top_k=8)
        assert (before.token_ids == after.token_ids).all()
        assert (before.logprobs == after.logprobs).all()
    finally:
        backend.close()


def test_diff_on_the_tiny_model(tiny_assets: TinyAssets, tmp_path: Path) -> None:
    """diff(A, A) is identical (not "noise"); A vs its negation is measured and judged
    against K null pairs. (The tiny trained adapter does not itself beat norm-matched
    nulls, so "beyond noise" is asserted on the dummy backend, not here.)"""
    from dlm_sway.backends.hf import HFDifferentialBackend
    from dlm_sway.core.result import Verdict
    from dlm_sway.suite.adapter_diff import diff_adapters

    # Prefixes of the text the adapter was trained on: where it moves the model most.
    prompts = ["The zebra", "The zebra astronaut", "The zebra astronaut sings quietly to the"]
    backend = HFDifferentialBackend(str(tiny_assets.base), tiny_assets.adapter, batch_size=3)
    try:
        same = diff_adapters(backend, "A", str(tiny_assets.adapter), prompts, runs=4)  # A → A
        assert same.identical and same.mean_js == 0.0 and same.headline == "identical"
        anti = scaled_checkpoint(tiny_assets.adapter, tmp_path / "anti", -1.0)
        apart = diff_adapters(backend, "A", str(anti), prompts, runs=10)
    finally:
        backend.close()
    assert not apart.identical and apart.verdict in (Verdict.PASS, Verdict.WARN, Verdict.FAIL)
    assert apart.z_score is not None and len(apart.null_values) == 10
    assert all(v > 0 for v in apart.null_values) and all(p.js_ab > 0 for p in apart.prompts)
    assert all(p.js_a > 0 and p.js_b > 0 for p in apart.prompts)


def _approx(values: list[float | None], abs: float = 1e-9) -> list[Any]:  # noqa: A002
    """Each value within float jitter (None stays None: a probe without a raw)."""
    return [None if v is None else pytest.approx(v, rel=1e-6, abs=abs) for v in values]
