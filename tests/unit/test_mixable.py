"""Which adapters' views may share a forward: the shared path adds B·A·x per row and
nothing else, so a LoRA that trains a bias (PEFT's ``lora_bias``) scores each view alone."""

from __future__ import annotations

from collections import OrderedDict

import pytest
import torch
from peft import LoraConfig, get_peft_model

from dlm_sway.backends.hf_lora import iter_lora_slots
from dlm_sway.backends.hf_mixed import mixable


def _slots(**config: object) -> list:  # type: ignore[type-arg]
    torch.manual_seed(0)
    model = torch.nn.Sequential(OrderedDict(proj=torch.nn.Linear(8, 8), out=torch.nn.Linear(8, 4)))
    peft_model = get_peft_model(model, LoraConfig(target_modules=["proj"], r=2, **config))
    return list(iter_lora_slots(peft_model))


def test_plain_lora_shares() -> None:
    assert mixable(_slots())


@pytest.mark.parametrize("config", [{"lora_bias": True}, {"use_dora": True}])
def test_a_trained_bias_or_dora_scores_alone(config: dict[str, bool]) -> None:
    assert not mixable(_slots(**config))
