"""gradient_ghost: an untrained or undertrained adapter, from its files alone."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from dlm_sway.core.lora_profile import profile
from dlm_sway.core.optimizer_state import coherence, noise_share
from dlm_sway.core.result import Verdict
from dlm_sway.probes.base import RunContext
from dlm_sway.probes.gradient_ghost import GradientGhostProbe, GradientGhostSpec

pytest.importorskip("safetensors")

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "src" / "dlm_sway" / "demo" / "adapters"
HIDDEN, RANK, LAYERS = 64, 4, 3
MODULES = ("q_proj", "v_proj")


def _name(layer: int, module: str, half: str) -> str:
    return f"base_model.model.model.layers.{layer}.self_attn.{module}.lora_{half}.weight"


def make_adapter(folder: Path, *, b_scale: float, seed: int = 0, **config: Any) -> Path:
    """A PEFT-style adapter folder: A at PEFT's kaiming-uniform init, B ~ N(0, b_scale)."""
    from safetensors.numpy import save_file

    rng = np.random.default_rng(seed)
    bound = 1.0 / np.sqrt(HIDDEN)
    tensors: dict[str, np.ndarray] = {}
    for layer in range(LAYERS):
        for module in MODULES:
            a = rng.uniform(-bound, bound, (RANK, HIDDEN))
            tensors[_name(layer, module, "A")] = a.astype(np.float32)
            b = rng.normal(0.0, b_scale, (HIDDEN, RANK)) if b_scale else np.zeros((HIDDEN, RANK))
            tensors[_name(layer, module, "B")] = b.astype(np.float32)
    folder.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(folder / "adapter_model.safetensors"))
    cfg = {"peft_type": "LORA", "r": RANK, "lora_alpha": 8, "target_modules": list(MODULES)}
    (folder / "adapter_config.json").write_text(json.dumps({**cfg, **config}))
    return folder


def ghost(adapter: Path, **fields: Any) -> Any:
    spec = GradientGhostSpec(name="ghost", **fields)
    return GradientGhostProbe().run(spec, RunContext(backend=None, adapter_dir=str(adapter)))


def test_zero_b_adapter_fails(tmp_path: Path) -> None:
    res = ghost(make_adapter(tmp_path / "a", b_scale=0.0))
    assert res.verdict is Verdict.FAIL
    assert res.raw == 1.0  # every module untrained
    assert "6 of 6 LoRA modules untrained" in res.message and "max_untrained_frac" in res.message


def test_trained_adapter_passes(tmp_path: Path) -> None:
    res = ghost(make_adapter(tmp_path / "a", b_scale=0.02))
    assert res.verdict is Verdict.PASS, res.message
    assert res.raw == 0.0 and "weights only" in res.message


def test_one_dormant_layer_is_found_by_the_profile(tmp_path: Path) -> None:
    from safetensors.numpy import load_file, save_file

    folder = make_adapter(tmp_path / "a", b_scale=0.02)
    tensors = load_file(str(folder / "adapter_model.safetensors"))
    for module in MODULES:  # layer 1 never trained
        tensors[_name(1, module, "B")] = np.zeros((HIDDEN, RANK), dtype=np.float32)
    save_file(tensors, str(folder / "adapter_model.safetensors"))
    res = ghost(folder)
    assert res.verdict is Verdict.FAIL and res.raw == pytest.approx(2 / 6)
    assert "layers.1.self_attn" in res.message
    assert ghost(folder, max_untrained_frac=0.5).verdict is Verdict.PASS


def test_gain_is_the_lora_terms_output_rms_on_unit_inputs() -> None:
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(RANK, HIDDEN)), rng.normal(size=(HIDDEN, RANK))
    cfg = {"lora_alpha": 8, "r": RANK}
    (mod,) = profile(cfg, {"m.lora_A.weight": a, "m.lora_B.weight": b})
    dense = (8 / RANK) * b @ a
    assert mod.gain == pytest.approx(np.linalg.norm(dense) / np.sqrt(HIDDEN), rel=1e-9)
    # a unit-variance input: the mean squared output entry is gain²
    x = rng.normal(size=(HIDDEN, 20000))
    assert np.sqrt(np.mean((dense @ x) ** 2)) == pytest.approx(mod.gain, rel=0.03)


def test_shipped_demo_adapters_strong_passes_weak_fails() -> None:
    strong, weak = ghost(DEMO / "strong"), ghost(DEMO / "weak")  # bf16 files, read without torch
    assert strong.verdict is Verdict.PASS and weak.verdict is Verdict.FAIL
    assert "120 of 120 LoRA modules untrained" in weak.message


def test_non_zero_b_init_cannot_be_judged_from_weights(tmp_path: Path) -> None:
    res = ghost(make_adapter(tmp_path / "a", b_scale=0.0, init_lora_weights="pissa"))
    assert res.verdict is Verdict.WARN
    assert "does not start B at zero" in res.message


def test_no_adapter_folder_is_a_skip_and_a_bad_config_an_error(tmp_path: Path) -> None:
    spec = GradientGhostSpec(name="ghost")
    res = GradientGhostProbe().run(spec, RunContext(backend=None))
    assert res.verdict is Verdict.SKIP and "adapter:" in res.message
    folder = make_adapter(tmp_path / "a", b_scale=0.02)
    (folder / "adapter_config.json").write_text('{"peft_type": "LORA", "r": 0}')
    res = ghost(folder)
    assert res.verdict is Verdict.ERROR and "adapter_config.json" in res.message


def test_coherence_is_zero_for_noise_and_one_for_a_steady_push() -> None:
    beta1, beta2, steps = 0.9, 0.999, 400
    rng = np.random.default_rng(0)
    for mean, expect in ((0.0, 0.0), (5.0, 1.0)):
        m, v = np.zeros(2000), np.zeros(2000)
        for _ in range(steps):
            g = mean + rng.normal(size=2000)
            m = beta1 * m + (1 - beta1) * g
            v = beta2 * v + (1 - beta2) * g**2
        c = coherence(float((m**2).sum()), float(v.sum()), beta1=beta1, beta2=beta2, steps=steps)
        assert c == pytest.approx(expect, abs=0.06)
    assert noise_share(0.9, 1) == pytest.approx(1.0)
    assert noise_share(0.9, 10_000) == pytest.approx(0.1 / 1.9)


def _save_optimizer(path: Path, adapter: Path, *, steps: int, mean: float) -> None:
    """A real torch AdamW run over the adapter's tensors with gradients ``mean + noise``."""
    torch = pytest.importorskip("torch")
    from safetensors.numpy import load_file

    tensors = load_file(str(adapter / "adapter_model.safetensors"))
    names = sorted(tensors, key=lambda n: (int(n.split(".")[4]), n))  # model order: q, v; A, B
    params = [torch.nn.Parameter(torch.from_numpy(tensors[n].copy())) for n in names]
    opt = torch.optim.AdamW(params, lr=1e-4)
    gen = torch.Generator().manual_seed(0)
    for _ in range(steps):
        for p in params:
            p.grad = mean + torch.randn(p.shape, generator=gen)
        opt.step()
    torch.save(opt.state_dict(), path)


def test_optimizer_state_few_steps_fails(tmp_path: Path) -> None:
    folder = make_adapter(tmp_path / "a", b_scale=0.02)
    _save_optimizer(folder / "optimizer.pt", folder, steps=5, mean=0.0)
    res = ghost(folder)
    assert res.verdict is Verdict.FAIL
    assert "5 optimizer steps < 50 (min_steps)" in res.message
    assert res.evidence["optimizer_state"].endswith("optimizer.pt")
    # param order mapped to names: count and every shape agree
    assert res.evidence["most_coherent"][0]["tensor"].startswith("base_model.model")


def test_optimizer_state_still_descending_fails_converged_passes(tmp_path: Path) -> None:
    folder = make_adapter(tmp_path / "run" / "final", b_scale=0.02)
    ckpt = tmp_path / "run" / "checkpoint-300"
    ckpt.mkdir()
    _save_optimizer(ckpt / "optimizer.pt", folder, steps=300, mean=3.0)
    res = ghost(folder)  # found in the parent's newest checkpoint
    assert res.verdict is Verdict.FAIL
    assert "gradients still pushed one way" in res.message and "checkpoint-300" in res.message
    _save_optimizer(ckpt / "optimizer.pt", folder, steps=300, mean=0.0)
    res = ghost(folder)
    assert res.verdict is Verdict.PASS, res.message
    assert "300 steps over 12 tensors" in res.message


def test_broken_optimizer_file_is_an_error_naming_it(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    folder = make_adapter(tmp_path / "a", b_scale=0.02)
    (folder / "optimizer.pt").write_bytes(b"not a torch file")
    res = ghost(folder)
    assert res.verdict is Verdict.ERROR
    assert "optimizer.pt: cannot load the optimizer state" in res.message
