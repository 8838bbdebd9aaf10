"""Shared fixtures for the torch-free unit lane: dummy-backed suites and an isolated null cache."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import pytest

from dlm_sway.backends.dummy import DummyDifferentialBackend
from dlm_sway.core.result import SuiteResult
from dlm_sway.core.scoring import ScoringModel
from dlm_sway.suite.loader import LoadedSpec, from_dict
from dlm_sway.suite.runner import run

PROMPTS = [
    "The quick brown fox",
    "Alpha beta gamma delta",
    "Hello world, once again",
    "Once upon a time there was",
]


@pytest.fixture(autouse=True)
def null_cache_dir(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> Path:
    """Every unit test gets its own null-cache folder: nothing touches ~/.cache."""
    root = tmp_path_factory.mktemp("null-cache")
    monkeypatch.setenv("SWAY_NULL_CACHE_DIR", str(root))
    monkeypatch.delenv("SWAY_DISABLE_NULL_CACHE", raising=False)
    return root


@pytest.fixture
def prompts() -> list[str]:
    return list(PROMPTS)


SuiteFactory = Callable[..., LoadedSpec]


@pytest.fixture
def make_suite() -> SuiteFactory:
    """``make_suite(entry, entry, ..., seed=0, top_k=256)`` → a validated dummy-model spec."""

    def _make(*entries: dict[str, Any], seed: int = 0, top_k: int = 256) -> LoadedSpec:
        return from_dict(
            {
                "models": {"ft": {"kind": "dummy", "base": "dummy-base", "adapter": "builtin:x"}},
                "defaults": {"seed": seed, "top_k": top_k},
                "suite": list(entries),
            }
        )

    return _make


@pytest.fixture
def run_suite(make_suite: SuiteFactory) -> Callable[..., SuiteResult]:
    """``run_suite(entry, ..., backend=None)``: run on a fresh strength-1 dummy by default."""

    def _run(
        *entries: dict[str, Any], backend: Any = None, seed: int = 0, top_k: int = 256
    ) -> SuiteResult:
        be = backend if backend is not None else DummyDifferentialBackend()
        return run(make_suite(*entries, seed=seed, top_k=top_k), be)

    return _run


class TwoViewBackend:
    """Only ``as_base``/``as_finetuned``: no λ-scaling, no null views, no preflight."""

    def __init__(self, inner: DummyDifferentialBackend) -> None:
        self._inner = inner

    def as_base(self) -> AbstractContextManager[ScoringModel]:
        return self._inner.as_base()

    def as_finetuned(self) -> AbstractContextManager[ScoringModel]:
        return self._inner.as_finetuned()


@pytest.fixture
def two_view_backend() -> Iterator[TwoViewBackend]:
    yield TwoViewBackend(DummyDifferentialBackend())


def saved_gate_run(folder: Path, suite: list[dict[str, Any]]) -> dict[str, Any]:
    """A real ``sway gate --json`` file on the dummy backend (strength 1), parsed."""
    import json

    import yaml
    from typer.testing import CliRunner

    from dlm_sway.cli.app import app

    spec = folder / "sway.yaml"
    models = {"ft": {"kind": "dummy", "base": "b", "options": {"strength": 1.0}}}
    spec.write_text(
        yaml.safe_dump({"version": 1, "models": models, "suite": suite}), encoding="utf-8"
    )
    target = folder / "run.json"
    result = CliRunner().invoke(app, ["gate", str(spec), "--json", str(target)])
    assert result.exit_code in (0, 1), result.output
    data: dict[str, Any] = json.loads(target.read_text(encoding="utf-8"))
    return data
