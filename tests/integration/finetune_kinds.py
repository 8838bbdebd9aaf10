"""Tiny fine-tunes of every kind sway judges, trained offline in a second or two.

DoRA, ``modules_to_save``, per-module rank/alpha (``rank_pattern``/``alpha_pattern``),
rsLoRA and a full fine-tune, all on the tiny Llama of :mod:`tiny_model`.
"""

from __future__ import annotations

from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model
from tiny_model import TRAIN_TEXT, _quiet_peft
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel


def _load(base: Path) -> PreTrainedModel:
    model: PreTrainedModel = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    return model


def _steps(
    base: Path, model: torch.nn.Module, params: list[torch.nn.Parameter], steps: int, lr: float
) -> None:
    tokenizer = AutoTokenizer.from_pretrained(base)
    ids = tokenizer(TRAIN_TEXT, return_tensors="pt")["input_ids"]
    opt = torch.optim.AdamW(params, lr=lr)
    model.train()
    for _ in range(steps):
        loss = model(input_ids=ids, labels=ids).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()


def train_adapter(base: Path, out: Path, config: LoraConfig, *, steps: int = 20) -> Path:
    """Train a LoRA-family adapter of ``config`` on TRAIN_TEXT and save it to ``out``."""
    torch.manual_seed(1)
    with _quiet_peft():
        peft_model = get_peft_model(_load(base), config)
    _steps(base, peft_model, [p for p in peft_model.parameters() if p.requires_grad], steps, 2e-2)
    peft_model.save_pretrained(out)
    return out


def lora(**extra: object) -> LoraConfig:
    return LoraConfig(
        r=4,
        lora_alpha=8,
        target_modules=["q_proj", "v_proj"],
        lora_dropout=0.0,
        **extra,  # type: ignore[arg-type]
    )


def train_full(base: Path, out: Path, *, steps: int = 10, frozen: str = "") -> Path:
    """A full fine-tune saved as a checkpoint (with tokenizer); ``frozen`` params stay as base."""
    torch.manual_seed(2)
    model = _load(base)
    params = [p for n, p in model.named_parameters() if not (frozen and frozen in n)]
    _steps(base, model, params, steps, 1e-3)
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(base).save_pretrained(out)
    return out
