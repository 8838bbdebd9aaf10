"""section_internalization on the tiny in-process Llama: a LoRA trained on one section only.

The document has two prose sections; the LoRA is trained for a few seconds on
the first. The probe must credit that section and not the untouched one, with
fixed thresholds and against norm-matched null adapters of the same structure.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dlm_sway.core.result import Verdict
from dlm_sway.core.sections import Document, Section

pytestmark = pytest.mark.hf

TRAINED = Section(
    id="zebra",
    kind="prose",
    title="The zebra astronaut",
    content=(
        "The zebra astronaut sings quietly to the purple moon. "
        "Every night the zebra astronaut counts the stars above the silver sea."
    ),
)
UNTOUCHED = Section(
    id="baker",
    kind="prose",
    title="The baker",
    content=(
        "Every morning the baker lights the oven before dawn. "
        "Fresh bread and hot coffee make a good breakfast."
    ),
)


@pytest.fixture(scope="module")
def one_section_adapter(tiny_assets: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A LoRA on every linear layer, trained only on the first section's text (~2 s).

    Attention-only LoRAs barely move this random base's near-uniform outputs;
    adapting the MLPs too lowers the trained section's NLL by ~17 %.
    """
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoTokenizer, LlamaForCausalLM

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(tiny_assets.base)
    out = tmp_path_factory.mktemp("one_section") / "adapter"
    config = LoraConfig(
        r=4,
        lora_alpha=8,
        target_modules=[
            "q_proj",
            "k_proj",
            "v_proj",
            "o_proj",
            "gate_proj",
            "up_proj",
            "down_proj",
        ],
        lora_dropout=0.0,
        bias="none",
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = get_peft_model(LlamaForCausalLM.from_pretrained(tiny_assets.base), config)
        ids = tokenizer(TRAINED.content, return_tensors="pt")["input_ids"]
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=1e-2)
        model.train()
        for _ in range(30):
            loss = model(input_ids=ids, labels=ids).loss
            opt.zero_grad()
            loss.backward()
            opt.step()
        model.eval()
        model.save_pretrained(str(out))
    return out


@pytest.fixture(scope="module")
def backend(tiny_assets: Any, one_section_adapter: Path) -> Iterator[Any]:
    from dlm_sway.backends.hf import HFDifferentialBackend

    be = HFDifferentialBackend(str(tiny_assets.base), one_section_adapter, batch_size=4)
    yield be
    be.close()


def _run(backend: Any, *entries: dict[str, Any]) -> Any:
    from dlm_sway.suite.loader import from_dict
    from dlm_sway.suite.runner import run

    doc = Document(source="<two sections>", sections=(TRAINED, UNTOUCHED))
    loaded = from_dict(
        {
            "models": {"ft": {"kind": "hf", "base": "tiny", "adapter": "tiny-adapter"}},
            "suite": list(entries),
        },
        document=doc,
    )
    return run(loaded, backend)


SIS = {"name": "sis", "kind": "section_internalization"}


def _per_section(result: Any) -> dict[str, dict[str, Any]]:
    return {s["section_id"]: s for s in result.evidence["per_section"]}


def test_trained_section_is_credited_with_fixed_thresholds(backend: Any) -> None:
    r = _run(backend, SIS).by_name("sis")
    assert r.verdict is Verdict.PASS, r.message
    per = _per_section(r)
    assert per["zebra"]["passed"] is True and per["baker"]["passed"] is False
    assert per["zebra"]["ft_nll"] < per["zebra"]["base_nll"]
    assert per["zebra"]["own_lift"] > per["baker"]["own_lift"] + 0.05
    assert r.evidence["passing_sections"] == ["zebra"]
    assert r.headline == "above threshold"
    assert "no null calibration for section_internalization" in r.message


def test_trained_section_beats_null_adapters(backend: Any) -> None:
    null = {"name": "null", "kind": "null_adapter", "runs": 10, "cache": False}
    res = _run(backend, null, SIS)
    assert res.by_name("null").evidence["calibrated"] == ["sis"]
    r = res.by_name("sis")
    assert r.verdict is Verdict.PASS, r.message
    assert r.z_score is not None and r.z_score >= 3.0
    assert r.null is not None and r.null.k == 10 and r.null.non_negative is False
    assert r.headline == "above noise" and r.effect_ratio is None and "×" not in r.message
    per = _per_section(r)
    assert per["zebra"]["passed"] is True and per["baker"]["passed"] is False


def test_no_op_adapter_credits_no_section(tiny_assets: Any) -> None:
    from dlm_sway.backends.hf import HFDifferentialBackend

    be = HFDifferentialBackend(str(tiny_assets.base), tiny_assets.zero_adapter, batch_size=4)
    try:
        r = _run(be, SIS).by_name("sis")
    finally:
        be.close()
    assert r.verdict is Verdict.FAIL, r.message
    assert r.headline == "a fixed check failed"
    assert "0/2 section(s) internalised" in r.message
    assert r.evidence["passing_sections"] == []
    assert r.raw == pytest.approx(0.0, abs=1e-6)
