"""Casting a loaded fp32 model to bf16 hands back the checkpoint's file pages, and
never the memory of a tensor that something may still read."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoModelForCausalLM

from dlm_sway.backends.hf_pages import cast_releasing_pages

pytestmark = pytest.mark.hf
linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="madvise path")
PAGE = os.sysconf("SC_PAGE_SIZE")


def _load(base: Path) -> Any:
    return AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32).eval()


@linux_only
def test_a_checkpoint_cast_gives_back_its_file_pages_and_keeps_every_value(
    tiny_assets: Any,
) -> None:
    model, reference = _load(tiny_assets.base), _load(tiny_assets.base)
    reference.to(torch.bfloat16)
    released = cast_releasing_pages(model, torch.bfloat16)
    total = sum(p.numel() * 4 for p in reference.parameters())
    assert released > total // 2  # the safetensors mapping, not anonymous memory
    ours = dict(model.state_dict())
    for name, tensor in reference.state_dict().items():
        assert ours[name].dtype == tensor.dtype, name  # buffers too
        assert torch.equal(ours[name], tensor), name
    ids = torch.tensor([[1, 5, 9, 2, 7]])
    with torch.inference_mode():
        assert torch.equal(model(ids).logits, reference(ids).logits)


def test_memory_built_in_this_process_is_cast_but_never_released() -> None:
    torch.manual_seed(0)
    layer = torch.nn.Linear(512, 512)
    expected = layer.weight.detach().to(torch.bfloat16)
    assert cast_releasing_pages(layer, torch.bfloat16) == 0
    assert layer.weight.dtype == torch.bfloat16 and torch.equal(layer.weight, expected)


def _mapped(folder: Path, count: int) -> torch.Tensor:
    """0, 1, 2, … as float32 in a file, mapped privately (as a checkpoint's weights are)."""
    path = folder / "weights.bin"
    torch.arange(count, dtype=torch.float32).numpy().tofile(path)
    storage = torch.UntypedStorage.from_file(str(path), shared=False, nbytes=4 * count)
    return torch.empty(0, dtype=torch.float32).set_(storage).view(-1)


class _Views(torch.nn.Module):
    def __init__(self, flat: torch.Tensor, n: int) -> None:
        super().__init__()
        self.a = torch.nn.Parameter(flat[:n], requires_grad=False)
        self.b = torch.nn.Parameter(flat[:n], requires_grad=False)  # the same bytes as a
        self.c = torch.nn.Parameter(flat[n : 2 * n], requires_grad=False)


@linux_only
def test_overlapping_views_of_a_file_mapping_keep_their_pages(tmp_path: Path) -> None:
    """b shares a's bytes and has been written (a private page, not the file's): casting
    a first must not hand that page back, or b would read the file's old values."""
    n = 4 * PAGE // 4  # four pages of float32
    module = _Views(_mapped(tmp_path, 2 * n), n)
    with torch.no_grad():
        module.b.fill_(7.0)
    released = cast_releasing_pages(module, torch.bfloat16)
    assert released == n * 4  # c only: a page-aligned span nothing else reads
    assert torch.equal(module.a, torch.full((n,), 7.0, dtype=torch.bfloat16))
    assert torch.equal(module.b, torch.full((n,), 7.0, dtype=torch.bfloat16))
    assert torch.equal(module.c, torch.arange(n, 2 * n, dtype=torch.float32).to(torch.bfloat16))


class _Strided(torch.nn.Module):
    def __init__(self, flat: torch.Tensor, n: int) -> None:
        super().__init__()
        self.tail = torch.nn.Parameter(flat[n:], requires_grad=False)  # contiguous
        self.every_other = torch.nn.Parameter(flat[::2], requires_grad=False)  # spans tail too


@linux_only
def test_a_strided_view_reaching_over_another_tensor_keeps_its_pages(tmp_path: Path) -> None:
    n = 4 * PAGE // 4
    module = _Strided(_mapped(tmp_path, 2 * n), n)
    with torch.no_grad():
        module.every_other.fill_(7.0)  # writes pages the tail also lies in
    assert cast_releasing_pages(module, torch.bfloat16) == 0
    assert torch.equal(module.every_other, torch.full((n,), 7.0, dtype=torch.bfloat16))
