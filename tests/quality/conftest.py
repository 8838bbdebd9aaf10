"""Fixtures for the quality lane: the tiny in-process Llama from the integration lane.

``tiny_model.py`` lives in tests/integration; it is imported the same way the
integration conftest imports it (as a top-level module), with its folder put on
``sys.path`` here so this lane also runs on its own (``pytest tests/quality``).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

_OFFLINE = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1"}
for _name, _value in _OFFLINE.items():
    os.environ.setdefault(_name, _value)

_INTEGRATION = str(Path(__file__).resolve().parents[1] / "integration")
if _INTEGRATION not in sys.path:
    sys.path.insert(0, _INTEGRATION)

if TYPE_CHECKING:
    from tiny_model import TinyAssets


@pytest.fixture(scope="session")
def tiny_assets(tmp_path_factory: pytest.TempPathFactory) -> TinyAssets:
    """Tiny base model + a LoRA trained for a few seconds (built once per session)."""
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    pytest.importorskip("peft")
    pytest.importorskip("tokenizers")
    from tiny_model import build_tiny_assets

    with _single_thread():
        return build_tiny_assets(tmp_path_factory.mktemp("tiny_hf_quality"))


@contextmanager
def _single_thread() -> Iterator[None]:
    """A hidden-64 model gains nothing from a second thread, and on a busy 2-core machine
    two spinning threads make each forward several times slower."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    with _single_thread():
        yield


@pytest.fixture(scope="module")
def tiny_backend(tiny_assets: TinyAssets, one_thread: None) -> Iterator[Any]:
    """One memoising backend on the trained adapter, shared by every study in a module."""
    from dlm_sway.backends.hf import HFDifferentialBackend

    backend = HFDifferentialBackend(
        str(tiny_assets.base), tiny_assets.adapter, batch_size=16, cache_size=50_000
    )
    yield backend
    backend.close()


@pytest.fixture(scope="session")
def tiny_prompts() -> list[str]:
    pytest.importorskip("torch")
    from tiny_model import CORPUS

    return list(CORPUS[:4])
