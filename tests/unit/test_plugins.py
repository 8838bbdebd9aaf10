"""Third-party entry points: one broken plugin is a warning naming it, never a crash.

``importlib.metadata.entry_points`` is replaced by real :class:`EntryPoint` objects
pointing at modules written to ``tmp_path``: one good plugin, one whose module raises
on import, one that claims a kind a built-in owns, one that registers a new kind and
*then* clashes (it must leave nothing behind).
"""

from __future__ import annotations

import importlib.metadata
import sys
import textwrap
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from dlm_sway.backends import registry as backend_registry
from dlm_sway.cli.app import app
from dlm_sway.core.plugins import PluginLoadWarning
from dlm_sway.probes import base

PROBE_TEMPLATE = """
from dlm_sway.probes.base import Probe, ProbeSpec, RunContext

class {cls}(Probe):
    \"\"\"A plugin probe.\"\"\"
    kind = {kind!r}
    spec_cls = ProbeSpec

    def run(self, spec, ctx):
        raise NotImplementedError
"""

MODULES = {
    "sway_plugin_good": PROBE_TEMPLATE.format(cls="GoodProbe", kind="plugin_good"),
    "sway_plugin_boom": "raise RuntimeError('plugin module exploded at import')\n",
    "sway_plugin_clash": PROBE_TEMPLATE.format(cls="Clash", kind="delta_kl"),
    "sway_plugin_half": PROBE_TEMPLATE.format(cls="First", kind="plugin_half_first")
    + PROBE_TEMPLATE.format(cls="Second", kind="null_adapter"),
    "sway_plugin_backends": textwrap.dedent(
        """
        from dlm_sway.backends.dummy import DummyDifferentialBackend

        def good(**options):
            return DummyDifferentialBackend()

        not_a_factory = 42
        """
    ),
}


@pytest.fixture
def plugin_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    for name, source in MODULES.items():
        (tmp_path / f"{name}.py").write_text(source, encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    for name in MODULES:
        sys.modules.pop(name, None)


def _fake_entry_points(
    monkeypatch: pytest.MonkeyPatch, group: str, eps: list[tuple[str, str]]
) -> None:
    fake = [importlib.metadata.EntryPoint(name=n, value=v, group=group) for n, v in eps]

    def entry_points(**kw: Any) -> list[importlib.metadata.EntryPoint]:
        return fake if kw.get("group") == group else []

    monkeypatch.setattr(importlib.metadata, "entry_points", entry_points)


@pytest.fixture
def fresh_probe_registry(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Reload the probe entry points once more; restore the registry afterwards."""
    base.registry()  # built-ins in place first
    saved = dict(base._REGISTRY)
    monkeypatch.setattr(base, "_LOADED", False)
    yield
    base._REGISTRY.clear()
    base._REGISTRY.update(saved)


@pytest.fixture
def fresh_backend_registry(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    saved = dict(backend_registry._FACTORIES)
    monkeypatch.setattr(backend_registry, "_ENTRY_POINTS_LOADED", False)
    yield
    backend_registry._FACTORIES.clear()
    backend_registry._FACTORIES.update(saved)


PROBE_EPS = [
    ("boom", "sway_plugin_boom"),
    ("clash", "sway_plugin_clash"),
    ("half", "sway_plugin_half"),
    ("good", "sway_plugin_good"),
]


def _messages(record: list[warnings.WarningMessage]) -> list[str]:
    return [str(w.message) for w in record if issubclass(w.category, PluginLoadWarning)]


@pytest.mark.usefixtures("plugin_dir", "fresh_probe_registry")
def test_broken_probe_plugins_warn_and_the_rest_load(monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_entry_points(monkeypatch, "dlm_sway.probes", PROBE_EPS)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        reg = base.registry()
    messages = _messages(record)
    assert len(messages) == 3, messages
    boom, clash, half = messages
    assert "'boom' (sway_plugin_boom)" in boom
    assert "RuntimeError: plugin module exploded at import" in boom
    assert "'clash' (sway_plugin_clash)" in clash
    assert "'delta_kl' is already registered" in clash
    assert "'half' (sway_plugin_half)" in half
    assert "'null_adapter' is already registered" in half
    for kind in base.BUILTIN_PROBE_MODULES:
        assert kind in reg
    assert reg["delta_kl"].__module__ == "dlm_sway.probes.delta_kl"  # not hijacked
    assert reg["null_adapter"].__module__ == "dlm_sway.probes.null_adapter"
    assert "plugin_good" in reg
    assert "plugin_half_first" not in reg  # a failed plugin leaves nothing half-registered


@pytest.mark.usefixtures("plugin_dir", "fresh_probe_registry")
def test_list_probes_survives_a_broken_plugin(monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_entry_points(monkeypatch, "dlm_sway.probes", PROBE_EPS)
    with pytest.warns(PluginLoadWarning) as record:
        result = CliRunner().invoke(app, ["list-probes"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert [m.split(" (")[0].rsplit(" ", 1)[-1] for m in _messages(record.list)] == [
        "'boom'",
        "'clash'",
        "'half'",
    ]
    assert "delta_kl" in result.output
    assert "plugin_good" in result.output


@pytest.mark.usefixtures("plugin_dir", "fresh_backend_registry")
def test_broken_backend_plugins_warn_and_the_rest_load(monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_entry_points(
        monkeypatch,
        "dlm_sway.backends",
        [
            ("missing", "sway_plugin_not_installed:factory"),
            ("boom", "sway_plugin_boom:factory"),
            ("hf", "sway_plugin_backends:good"),
            ("number", "sway_plugin_backends:not_a_factory"),
            ("good", "sway_plugin_backends:good"),
        ],
    )
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        table = backend_registry.backends()
    messages = _messages(record)
    assert len(messages) == 4, messages
    missing, boom, hf, number = messages
    assert "'missing' (sway_plugin_not_installed:factory)" in missing
    assert "ModuleNotFoundError" in missing
    assert "'boom' (sway_plugin_boom:factory)" in boom
    assert "exploded at import" in boom
    assert "'hf' (sway_plugin_backends:good)" in hf
    assert "'hf' is already registered" in hf
    assert "'number' (sway_plugin_backends:not_a_factory)" in number
    assert "not callable" in number
    assert {"hf", "dummy", "good"} <= set(table)
    assert "number" not in table
    assert table["hf"] is backend_registry._build_hf  # the built-in is not replaced
    assert type(backend_registry.build_backend("good")).__name__ == "DummyDifferentialBackend"
