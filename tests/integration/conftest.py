"""Fixtures for the HF integration lane: a tiny Llama and LoRA adapters built offline.

The offline variables are set at import time as well as in the autouse
fixture because huggingface_hub reads ``HF_HUB_OFFLINE`` once, when it is
first imported.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

_OFFLINE = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1"}
for _name, _value in _OFFLINE.items():
    os.environ.setdefault(_name, _value)

if TYPE_CHECKING:
    from tiny_model import TinyAssets


@pytest.fixture(autouse=True, scope="session")
def _hf_offline() -> Iterator[None]:
    """No test may reach the network; a hub lookup must fail fast instead of hanging."""
    saved = {name: os.environ.get(name) for name in _OFFLINE}
    os.environ.update(_OFFLINE)
    try:
        import huggingface_hub.constants as hub_constants
    except ImportError:
        hub_constants = None
    previous = getattr(hub_constants, "HF_HUB_OFFLINE", None)
    if hub_constants is not None:
        hub_constants.HF_HUB_OFFLINE = True
    yield
    if hub_constants is not None:
        hub_constants.HF_HUB_OFFLINE = previous
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


@pytest.fixture(autouse=True)
def _base_cache_dir(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each test gets an empty on-disk base cache, so forward counts never depend on
    which test ran before (and nothing reaches ~/.cache)."""
    monkeypatch.setenv("SWAY_BASE_CACHE_DIR", str(tmp_path_factory.mktemp("base-cache")))
    monkeypatch.delenv("SWAY_DISABLE_BASE_CACHE", raising=False)


@pytest.fixture(scope="session")
def tiny_assets(tmp_path_factory: pytest.TempPathFactory) -> TinyAssets:
    """Tiny base model + trained, zero, NaN and mismatched LoRA adapters (~6 s, once)."""
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    pytest.importorskip("peft")
    pytest.importorskip("tokenizers")
    from tiny_model import build_tiny_assets

    return build_tiny_assets(tmp_path_factory.mktemp("tiny_hf"))


@pytest.fixture(scope="session")
def hf_backend(tiny_assets: TinyAssets) -> Iterator[Any]:
    """One shared backend on the trained adapter (views restore state, so sharing is safe)."""
    from dlm_sway.backends.hf import HFDifferentialBackend

    backend = HFDifferentialBackend(str(tiny_assets.base), tiny_assets.adapter, batch_size=3)
    yield backend
    backend.close()


@pytest.fixture
def fresh_backend(tiny_assets: TinyAssets) -> Iterator[Any]:
    """A backend with an empty cache and zeroed stats, for counting tests."""
    from dlm_sway.backends.hf import HFDifferentialBackend

    backend = HFDifferentialBackend(str(tiny_assets.base), tiny_assets.adapter, batch_size=3)
    yield backend
    backend.close()


@pytest.fixture
def adapter_copy(tiny_assets: TinyAssets, tmp_path: Path) -> Path:
    """A private copy of the trained adapter that a test may edit."""
    import shutil

    return Path(shutil.copytree(tiny_assets.adapter, tmp_path / "adapter"))
