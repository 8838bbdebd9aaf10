"""Spec loading: every mistake is a SpecValidationError naming the file and the field."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from dlm_sway.core.errors import SpecValidationError, SwayError
from dlm_sway.probes.base import registry
from dlm_sway.probes.delta_kl import DeltaKLSpec
from dlm_sway.probes.null_adapter import NullAdapterSpec
from dlm_sway.suite.loader import from_dict, load_spec

HEADER = """\
version: 1
models:
  ft:
    kind: dummy
    base: dummy-base
    adapter: builtin:demo
"""

GOOD_SUITE = """\
suite:
  - name: calib
    kind: null_adapter
    runs: 3
  - name: dkl
    kind: delta_kl
    prompts: ["The quick brown fox", "Hello"]
"""


def write(tmp_path: Path, body: str, name: str = "sway.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(body), encoding="utf-8")
    return path


def error_for(path: Path) -> str:
    with pytest.raises(SpecValidationError) as info:
        load_spec(path)
    assert isinstance(info.value, SwayError)  # the CLI maps it to exit code 2
    return str(info.value)


def test_valid_spec_loads_in_order(tmp_path: Path) -> None:
    loaded = load_spec(write(tmp_path, HEADER + GOOD_SUITE))
    assert [s.name for _, s in loaded.probes] == ["calib", "dkl"]
    assert isinstance(loaded.probes[0][1], NullAdapterSpec)
    assert isinstance(loaded.probes[1][1], DeltaKLSpec)
    assert loaded.path.endswith("sway.yaml")


class TestSpecErrors:
    def test_missing_file(self, tmp_path: Path) -> None:
        msg = error_for(tmp_path / "nope.yaml")
        assert "nope.yaml" in msg and "not found" in msg

    def test_yaml_syntax_error_has_line_number(self, tmp_path: Path) -> None:
        path = write(tmp_path, HEADER + "suite:\n  - name: x\n    kind: [unclosed\n")
        msg = error_for(path)
        assert "sway.yaml" in msg and "invalid YAML" in msg
        assert "line 9" in msg or "line 10" in msg

    @pytest.mark.parametrize("body", ["- a\n- b\n", "just a string\n", ""])
    def test_top_level_not_a_mapping(self, tmp_path: Path, body: str) -> None:
        msg = error_for(write(tmp_path, body))
        assert "sway.yaml" in msg and "top level must be a mapping" in msg

    def test_unknown_top_level_key(self, tmp_path: Path) -> None:
        msg = error_for(write(tmp_path, HEADER + GOOD_SUITE + "sutie: []\n"))
        assert "sway.yaml" in msg and "sutie" in msg and "unknown key" in msg

    def test_unknown_model_key(self, tmp_path: Path) -> None:
        msg = error_for(write(tmp_path, HEADER + "    adpater: x\n" + GOOD_SUITE))
        assert "models.ft.adpater" in msg and "unknown key" in msg

    def test_unknown_probe_key(self, tmp_path: Path) -> None:
        body = HEADER + "suite:\n  - name: dkl\n    kind: delta_kl\n    promts: [a]\n"
        msg = error_for(write(tmp_path, body))
        assert "sway.yaml" in msg
        assert "suite[0] (dkl)" in msg
        assert "promts" in msg and "unknown key" in msg

    def test_unknown_probe_kind_lists_registered_kinds(self, tmp_path: Path) -> None:
        body = HEADER + "suite:\n  - name: x\n    kind: delta_kll\n    prompts: [a]\n"
        msg = error_for(write(tmp_path, body))
        assert "suite[0] (x)" in msg and "'delta_kll'" in msg
        for kind in ("delta_kl", "adapter_ablation", "null_adapter"):
            assert kind in msg
        assert set(registry()) >= {"delta_kl", "adapter_ablation", "null_adapter"}

    def test_missing_kind(self, tmp_path: Path) -> None:
        msg = error_for(write(tmp_path, HEADER + "suite:\n  - name: x\n    prompts: [a]\n"))
        assert "suite[0] (x)" in msg and "missing 'kind'" in msg

    @pytest.mark.parametrize("prompts", ["[]", '["ok", "  "]'])
    def test_empty_prompts(self, tmp_path: Path, prompts: str) -> None:
        body = HEADER + f"suite:\n  - name: x\n    kind: delta_kl\n    prompts: {prompts}\n"
        msg = error_for(write(tmp_path, body))
        assert "suite[0] (x)" in msg and "prompts" in msg

    def test_duplicate_names(self, tmp_path: Path) -> None:
        body = HEADER + textwrap.dedent(
            """\
            suite:
              - {name: same, kind: delta_kl, prompts: [a]}
              - {name: same, kind: delta_kl, prompts: [b]}
            """
        )
        msg = error_for(write(tmp_path, body))
        assert "suite[1] (same)" in msg and "duplicate probe name 'same'" in msg

    def test_empty_suite(self, tmp_path: Path) -> None:
        for body in (HEADER + "suite: []\n", HEADER):
            msg = error_for(write(tmp_path, body))
            assert "suite" in msg and "empty" in msg

    def test_version_2(self, tmp_path: Path) -> None:
        msg = error_for(write(tmp_path, HEADER.replace("version: 1", "version: 2") + GOOD_SUITE))
        assert "sway.yaml" in msg and "version" in msg

    @pytest.mark.parametrize("mults", ["[0.0, 1.0]", "[-1]", "[.nan]", "[.inf]"])
    def test_invalid_rank_multipliers(self, tmp_path: Path, mults: str) -> None:
        body = (
            HEADER
            + f"suite:\n  - name: calib\n    kind: null_adapter\n    rank_multipliers: {mults}\n"
        )
        msg = error_for(write(tmp_path, body))
        assert "suite[0] (calib)" in msg and "rank_multipliers" in msg

    def test_unknown_calibrate_kind(self, tmp_path: Path) -> None:
        body = (
            HEADER
            + "suite:\n  - name: calib\n    kind: null_adapter\n    calibrate_kinds: [deltakl]\n"
        )
        msg = error_for(write(tmp_path, body))
        assert "calibrate_kinds" in msg and "deltakl" in msg

    def test_suite_entry_not_a_mapping(self, tmp_path: Path) -> None:
        msg = error_for(write(tmp_path, HEADER + "suite:\n  - delta_kl\n"))
        assert "suite" in msg and "mapping" in msg

    @pytest.mark.parametrize(
        ("weights", "needle"),
        [
            ("{adherance: 0.5}", "adherance"),
            ("{adherence: -1}", "adherence"),
            ("{adherence: 0, attribution: 0, calibration: 0, ablation: 0}", "0"),
        ],
    )
    def test_bad_score_weights(self, tmp_path: Path, weights: str, needle: str) -> None:
        pytest.importorskip("dlm_sway.suite.score")
        body = HEADER + f"defaults:\n  score_weights: {weights}\n" + GOOD_SUITE
        msg = error_for(write(tmp_path, body))
        assert "defaults.score_weights" in msg and needle in msg

    def test_several_errors_reported_together(self, tmp_path: Path) -> None:
        body = HEADER + textwrap.dedent(
            """\
            suite:
              - {name: a, kind: delta_kl, promts: [x]}
              - {name: b, kind: nope}
              - {name: c, prompts: [x]}
              - {name: a, kind: delta_kl, prompts: [y]}
            """
        )
        msg = error_for(write(tmp_path, body))
        assert "3 problem(s)" in msg
        assert "suite[0] (a)" in msg and "promts" in msg
        assert "suite[1] (b)" in msg and "'nope'" in msg
        assert "suite[2] (c)" in msg and "missing 'kind'" in msg

    def test_top_level_and_probe_errors_reported_together(self, tmp_path: Path) -> None:
        body = HEADER + "sutie: []\nsuite:\n  - {name: a, kind: delta_kl, promts: [x]}\n"
        msg = error_for(write(tmp_path, body))
        assert "sutie" in msg and "promts" in msg

    def test_from_dict_names_its_source(self) -> None:
        with pytest.raises(SpecValidationError, match=r"^cli-check: "):
            from_dict({"models": {"ft": {"base": "x"}}, "suite": []}, source="cli-check")


class TestPaths:
    def test_relative_adapter_resolved_against_spec_folder(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        specdir = tmp_path / "project"
        specdir.mkdir()
        monkeypatch.chdir(tmp_path)  # cwd is *not* the spec's folder
        body = HEADER.replace("builtin:demo", "./adapters/run1") + GOOD_SUITE
        loaded = load_spec(write(specdir, body))
        assert loaded.spec.models.ft.adapter == str((specdir / "adapters" / "run1").resolve())

    def test_builtin_adapter_left_as_is(self, tmp_path: Path) -> None:
        loaded = load_spec(write(tmp_path, HEADER + GOOD_SUITE))
        assert loaded.spec.models.ft.adapter == "builtin:demo"

    def test_hub_style_base_id_left_as_is_local_base_resolved(self, tmp_path: Path) -> None:
        body = HEADER.replace("dummy-base", "HuggingFaceTB/SmolLM2-135M") + GOOD_SUITE
        assert load_spec(write(tmp_path, body)).spec.models.ft.base == "HuggingFaceTB/SmolLM2-135M"
        body = HEADER.replace("dummy-base", "./models/base") + GOOD_SUITE
        resolved = load_spec(write(tmp_path, body)).spec.models.ft.base
        assert resolved == str((tmp_path / "models" / "base").resolve())
