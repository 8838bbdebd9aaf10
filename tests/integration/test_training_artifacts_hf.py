"""training_drift / gradient_ghost on what a real transformers Trainer writes (tiny model).

The unit tests write trainer_state.json and optimizer.pt by hand; here the files
come from ``Trainer`` itself (checkpoints, ``save_state``, ``save_model``), so the
formats, the checkpoint discovery and the optimizer-slot → tensor-name mapping
are checked against the real thing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.hf

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("peft")
pytest.importorskip("accelerate")

from dlm_sway.core.result import Verdict  # noqa: E402
from dlm_sway.probes.base import RunContext  # noqa: E402
from dlm_sway.probes.gradient_ghost import GradientGhostProbe, GradientGhostSpec  # noqa: E402
from dlm_sway.probes.training_drift import TrainingDriftProbe, TrainingDriftSpec  # noqa: E402


def _train(out: Path, *, lr: float, steps: int) -> Path:
    """LoRA-train the tiny Llama with Trainer; returns the final adapter folder."""
    import warnings

    from peft import get_peft_model
    from tiny_model import CORPUS, build_model, build_tokenizer, lora_config
    from transformers import Trainer, TrainingArguments
    from transformers.trainer_callback import PrinterCallback

    torch.manual_seed(0)
    tok = build_tokenizer()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = get_peft_model(build_model(tok.vocab_size), lora_config())
    rows: list[dict[str, Any]] = []
    for text in CORPUS:
        ids = tok(text, truncation=True, max_length=32, padding="max_length")["input_ids"]
        mask = [int(i != tok.pad_token_id) for i in ids]
        labels = [i if m else -100 for i, m in zip(ids, mask, strict=True)]
        rows.append(
            {
                "input_ids": torch.tensor(ids),
                "attention_mask": torch.tensor(mask),
                "labels": torch.tensor(labels),
            }
        )
    args = TrainingArguments(
        output_dir=str(out),
        max_steps=steps,
        per_device_train_batch_size=4,
        learning_rate=lr,
        lr_scheduler_type="constant",
        logging_steps=1,
        save_steps=steps // 2,
        report_to=[],
        use_cpu=True,
        seed=0,
        disable_tqdm=True,
    )
    trainer = Trainer(model=model, args=args, train_dataset=rows)
    trainer.remove_callback(PrinterCallback)  # no per-step log lines in the test output
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.train()
    trainer.save_model(str(out / "final"))
    trainer.save_state()
    return out / "final"


def test_trainer_files_are_found_and_read(tmp_path: Path) -> None:
    final = _train(tmp_path, lr=1e-2, steps=24)
    ctx = RunContext(backend=None, adapter_dir=str(final))
    drift = TrainingDriftProbe().run(TrainingDriftSpec(name="curve"), ctx)
    assert drift.verdict in (Verdict.PASS, Verdict.FAIL), drift.message
    assert drift.evidence["source"] == str(tmp_path / "trainer_state.json")  # save_state's
    assert len(drift.evidence["train_curve"]) == 24  # logging_steps=1
    ghost = GradientGhostProbe().run(GradientGhostSpec(name="ghost"), ctx)
    assert ghost.evidence["optimizer_state"].endswith("checkpoint-24/optimizer.pt")
    assert ghost.evidence["optimizer_steps"] == 24
    assert ghost.raw == 0.0  # every LoRA module moved away from B = 0
    # ...but 24 steps is a smoke test, not a training run
    assert ghost.verdict is Verdict.FAIL and "24 optimizer steps < 50 (min_steps)" in ghost.message
    # Trainer's parameter order mapped to the adapter's tensor names (count and shapes agree)
    names = [row["tensor"] for row in ghost.evidence["most_coherent"]]
    assert all(n.startswith("base_model.model.model.layers.") for n in names), names
