"""A spec loads strictly or not at all: every bad value is an exit-2 load error naming its field.

Covers duplicate YAML keys, coercion (``seed: "7"``, ``runs: true``), NaN/inf,
out-of-range thresholds and seeds, unpaired surrogates, unknown devices, probe
problems knowable before a model loads (what used to be a SKIP after the run),
and suites that could not produce a single judged verdict.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from dlm_sway.cli.app import app
from dlm_sway.core.errors import SpecValidationError
from dlm_sway.probes import _embed
from dlm_sway.probes.base import build_probe, registry
from dlm_sway.probes.null_adapter import NullAdapterSpec
from dlm_sway.suite.loader import LoadedSpec, from_dict, load_spec
from dlm_sway.suite.score import validate_weights

MODELS = {"ft": {"kind": "dummy", "base": "dummy-base", "adapter": "builtin:x"}}
PROMPTS = ["The quick brown fox", "Alpha beta gamma", "Hello world", "Once upon a time"]
NULL = {"name": "null", "kind": "null_adapter", "runs": 3}
DKL = {"name": "dkl", "kind": "delta_kl", "prompts": PROMPTS}
TOPIC_PROMPTS = [f"Prompt number {i} about topic {i % 4}" for i in range(24)]

#: A minimal valid entry of every built-in judged probe kind.
MINIMAL: dict[str, dict[str, Any]] = {
    "delta_kl": {"prompts": PROMPTS},
    "adapter_ablation": {"prompts": PROMPTS},
    "cluster_kl": {"prompts": TOPIC_PROMPTS},
    "prompt_collapse": {"prompts": PROMPTS},
    "calibration_drift": {},
    "external_perplexity": {},
    "paraphrase_invariance": {
        "cases": [{"prompt": "Q?", "gold": " yes", "paraphrases": ["Question?"]}]
    },
    "preference_flip": {
        "triples": [{"prompt": f"p{i}", "chosen": " a", "rejected": " b"} for i in range(3)]
    },
    "section_internalization": {},
}
BUILTIN_SPECS = sorted(MINIMAL) + ["null_adapter"]


def entry(kind: str, name: str | None = None, **kw: Any) -> dict[str, Any]:
    return {"name": name or kind, "kind": kind, **MINIMAL.get(kind, {}), **kw}


def spec(*entries: dict[str, Any], **top: Any) -> dict[str, Any]:
    return {"models": MODELS, "suite": list(entries), **top}


def load_error(data: dict[str, Any], **kw: Any) -> str:
    with pytest.raises(SpecValidationError) as info:
        from_dict(data, **kw)
    return str(info.value)


def write(tmp_path: Path, text: str, name: str = "sway.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


# --- duplicate keys -------------------------------------------------------------------------


def test_duplicate_top_level_key_names_both_lines(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
        models:
          ft: {kind: dummy, base: dummy-base, adapter: "builtin:x"}
        suite:
          - {name: nul, kind: null_adapter, runs: 3}
          - {name: dkl, kind: delta_kl, prompts: [a, b]}
        suite:
          - {name: dkl, kind: delta_kl, prompts: [a, b]}
        """,
    )
    with pytest.raises(SpecValidationError) as info:
        load_spec(path)
    message = str(info.value)
    assert str(path) in message
    assert "duplicate key 'suite'" in message
    assert "first at line 3, again at line 6" in message


@pytest.mark.parametrize(
    ("text", "key", "lines"),
    [
        (  # inside a probe entry
            """\
            models: {ft: {kind: dummy, base: dummy-base, adapter: "builtin:x"}}
            suite:
              - name: dkl
                kind: delta_kl
                prompts: [a, b]
                assert_z_gte: 3
                assert_z_gte: -100
            """,
            "assert_z_gte",
            (6, 7),
        ),
        (  # inside the model
            """\
            models:
              ft:
                kind: dummy
                base: dummy-base
                adapter: "builtin:x"
                kind: hf
            suite: [{name: dkl, kind: delta_kl, prompts: [a]}]
            """,
            "kind",
            (3, 6),
        ),
        (  # in flow style
            """\
            models: {ft: {kind: dummy, base: dummy-base, adapter: "builtin:x"}}
            defaults: {seed: 1, seed: 2}
            suite: [{name: dkl, kind: delta_kl, prompts: [a]}]
            """,
            "seed",
            (2, 2),
        ),
    ],
)
def test_duplicate_keys_anywhere_are_errors(
    tmp_path: Path, text: str, key: str, lines: tuple[int, int]
) -> None:
    with pytest.raises(SpecValidationError) as info:
        load_spec(write(tmp_path, text))
    assert f"duplicate key {key!r}: first at line {lines[0]}, again at line {lines[1]}" in str(
        info.value
    )


def test_merge_keys_may_still_override(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
        models: {ft: {kind: dummy, base: dummy-base, adapter: "builtin:x"}}
        common: &common {kind: delta_kl, prompts: [a, b], assert_z_gte: 3}
        """,
    )
    # ``common`` is not a spec key: check the merge itself with the strict loader.
    from dlm_sway.suite.yaml_strict import strict_load

    data = strict_load(path.read_text() + "x: {<<: *common, assert_z_gte: 4}\n")
    assert data["x"]["assert_z_gte"] == 4 and data["x"]["kind"] == "delta_kl"


def test_an_over_long_integer_is_a_yaml_error(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        f"models: {json.dumps(MODELS)}\ndefaults: {{seed: {'9' * 5000}}}\nsuite: []\n",
    )
    with pytest.raises(SpecValidationError, match="line 2.*integer of 5000 characters"):
        load_spec(path)


# --- strict types ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "field"),
    [
        (spec(NULL, DKL, defaults={"seed": True}), "defaults.seed"),
        (spec(NULL, DKL, defaults={"seed": "7"}), "defaults.seed"),
        (spec(NULL, DKL, defaults={"seed": 7.0}), "defaults.seed"),
        (spec(NULL, DKL, defaults={"top_k": "4"}), "defaults.top_k"),
        (spec({**NULL, "runs": True}, DKL), "runs"),
        (spec({**NULL, "runs": "3"}, DKL), "runs"),
        (spec({**NULL, "cache": "yes"}, DKL), "cache"),
        (spec(NULL, {**DKL, "weight": "2"}), "weight"),
        (spec(NULL, {**DKL, "enabled": 1}), "enabled"),
        (spec(NULL, {**DKL, "assert_z_gte": "3"}), "assert_z_gte"),
        (spec(NULL, {**DKL, "prompts": "one prompt"}), "prompts"),
        (spec(NULL, {**DKL, "name": 5}), "name"),
        (
            {"models": {"ft": {**MODELS["ft"], "batch_size": "4"}}, "suite": [NULL, DKL]},
            "models.ft.batch_size",
        ),
        (
            {"models": {"ft": {**MODELS["ft"], "trust_remote_code": "no"}}, "suite": [NULL, DKL]},
            "models.ft.trust_remote_code",
        ),
        (spec(NULL, DKL, defaults={"score_weights": {"adherence": "0.5"}}), "score_weights"),
        (spec(NULL, entry("prompt_collapse", context_lengths=[0, 128.0])), "context_lengths"),
    ],
)
def test_values_are_never_coerced(data: dict[str, Any], field: str) -> None:
    message = load_error(data)
    assert field in message
    assert "not converted" in message or "valid" in message


def test_yaml_lists_fill_tuple_fields(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
        models: {ft: {kind: dummy, base: dummy-base, adapter: "builtin:x"}}
        suite:
          - {name: nul, kind: null_adapter, runs: 3}
          - {name: abl, kind: adapter_ablation, prompts: [a, b],
             assert_saturation_between: [0.2, 1.1]}
        """,
    )
    loaded = load_spec(path)
    assert loaded.probes[1][1].assert_saturation_between == (0.2, 1.1)  # type: ignore[attr-defined]
    bad = spec(entry("adapter_ablation", assert_saturation_between=["0.2", 1.1]))
    assert "assert_saturation_between" in load_error(bad)


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize(
    ("kind", "field", "wrap"),
    [
        ("delta_kl", "weight", None),
        ("delta_kl", "assert_mean_gte", None),
        ("delta_kl", "assert_z_gte", None),
        ("adapter_ablation", "lambdas", "list"),
        ("adapter_ablation", "assert_overshoot_gte", None),
        ("external_perplexity", "assert_delta_gte", None),
        ("calibration_drift", "assert_mean_delta_gte", None),
        ("prompt_collapse", "half_life_cap_tokens", None),
        ("null_adapter", "init_scale", None),
        ("null_adapter", "rank_multipliers", "list"),
    ],
)
def test_no_nan_or_inf_anywhere(kind: str, field: str, wrap: str | None, value: float) -> None:
    given: Any = [0.0, 0.5, 1.0, value] if wrap == "list" else value
    with pytest.raises(SpecValidationError, match=field):
        build_probe(entry(kind, **{field: given}))


@pytest.mark.parametrize("value", [math.nan, math.inf, -1.0, 1e7])
def test_score_weights_are_finite_non_negative_and_never_clamped(value: float) -> None:
    message = load_error(spec(NULL, DKL, defaults={"score_weights": {"ablation": value}}))
    assert "score_weights" in message and "ablation" in message
    with pytest.raises(SpecValidationError, match="finite and >= 0"):
        validate_weights({"ablation": value}, source="--weights")


def test_huge_integer_weight_is_rejected_not_overflowing() -> None:
    with pytest.raises(SpecValidationError, match="finite and >= 0"):
        validate_weights({"ablation": 10**400}, source="--weights")


@pytest.mark.parametrize("weight", [-1.0, -0.001, math.nan, math.inf, 1e7])
def test_probe_weight_must_be_finite_and_non_negative(weight: float) -> None:
    assert "weight" in load_error(spec(NULL, {**DKL, "weight": weight}))


@pytest.mark.parametrize("name", ["", " ", "\t\n", " dkl", "dkl ", "a\nb", "a\x00b", "x" * 201])
def test_probe_names_are_printable_and_non_blank(name: str) -> None:
    assert "name" in load_error(spec(NULL, {**DKL, "name": name}))


@pytest.mark.parametrize("field", ["base", "adapter", "kind", "gguf_file"])
def test_model_strings_are_not_blank(field: str) -> None:
    data = {"models": {"ft": {**MODELS["ft"], field: "  "}}, "suite": [NULL, DKL]}
    assert f"models.ft.{field}" in load_error(data)


# --- devices --------------------------------------------------------------------------------


@pytest.mark.parametrize("device", ["tpu", "CUDA", "cuda:", "cuda:x", "cuda:-1", "gpu", "", "cpu "])
def test_unknown_devices_are_load_errors(device: str) -> None:
    data = {"models": {"ft": {**MODELS["ft"], "device": device}}, "suite": [NULL, DKL]}
    message = load_error(data)
    assert "models.ft.device" in message and "cuda:N" in message


@pytest.mark.parametrize("device", ["auto", "cpu", "cuda", "cuda:0", "cuda:7", "mps"])
def test_known_devices_load(device: str) -> None:
    data = {"models": {"ft": {**MODELS["ft"], "device": device}}, "suite": [NULL, DKL]}
    assert from_dict(data).spec.models.ft.device == device


# --- thresholds and bounds ------------------------------------------------------------------


def test_z_bar_bounds_match_the_statistics() -> None:
    from scipy import stats

    from dlm_sway.core.calibration import Z_LIMIT
    from dlm_sway.probes._fields import Z_BAR_MAX, Z_BAR_MIN

    assert pytest.approx(float(stats.norm.isf(0.05)), abs=1e-12) == Z_BAR_MIN
    assert Z_BAR_MAX == Z_LIMIT


@pytest.mark.parametrize("kind", sorted(MINIMAL))
@pytest.mark.parametrize("z", [-100.0, 0.0, 1.0, 1.64, 40.5, 1000.0])
def test_every_z_bar_is_at_least_p05_and_reachable(kind: str, z: float) -> None:
    message = load_error(spec(NULL, entry(kind, assert_z_gte=z)))
    assert f"({kind}): assert_z_gte: is {z:g}" in message
    assert "1.645" in message and "Holm" in message


@pytest.mark.parametrize("kind", sorted(MINIMAL))
@pytest.mark.parametrize("z", [1.645, 1.6448536269514722, 3.0, 40.0])
def test_z_bars_in_range_build(kind: str, z: float) -> None:
    _, built = build_probe(entry(kind, assert_z_gte=z))
    assert built.assert_z_gte == z  # type: ignore[attr-defined]


def test_every_builtin_probe_with_a_z_bar_is_covered() -> None:
    reg = registry()
    with_bar = {k for k in BUILTIN_SPECS if "assert_z_gte" in reg[k].spec_cls.model_fields}
    assert with_bar == set(MINIMAL)


@pytest.mark.parametrize("kind", BUILTIN_SPECS)
def test_every_builtin_spec_is_strict(kind: str) -> None:
    config = registry()[kind].spec_cls.model_config
    assert config.get("strict") is True
    assert config.get("allow_inf_nan") is False
    assert config.get("extra") == "forbid"


@pytest.mark.parametrize(
    ("kind", "field", "value"),
    [
        ("adapter_ablation", "assert_linearity_gte", 1.5),
        ("adapter_ablation", "assert_linearity_gte", -0.1),
        ("adapter_ablation", "lambdas", [0.0, 1.0, 5.0]),
        ("adapter_ablation", "lambdas", [-1.0, 0.0, 1.0]),
        ("adapter_ablation", "assert_saturation_between", [-0.1, 1.0]),
        ("adapter_ablation", "assert_saturation_between", [1.5, 2.0]),
        ("adapter_ablation", "assert_overshoot_gte", -1.0),
        ("adapter_ablation", "assert_overshoot_gte", 101.0),
        ("adapter_ablation", "assert_mean_gte", 0.7),
        ("adapter_ablation", "top_k", 0),
        ("adapter_ablation", "top_k", 2**21),
        ("cluster_kl", "assert_specificity_gte", 1.01),
        ("cluster_kl", "assert_mean_gte", 0.7),
        ("cluster_kl", "min_prompts", 3),
        ("delta_kl", "assert_mean_gte", -0.01),
        ("delta_kl", "assert_mean_gte", 0.7),
        ("delta_kl", "prompts", ["ok", " "]),
        ("prompt_collapse", "context_lengths", [0, 40_000]),
        ("prompt_collapse", "assert_half_life_tokens", 0.0),
        ("prompt_collapse", "half_life_cap_tokens", 2e6),
        ("prompt_collapse", "assert_mean_gte", 0.7),
        ("calibration_drift", "assert_fraction_regressed_lt", 0.0),
        ("calibration_drift", "assert_fraction_regressed_lt", 1.5),
        ("calibration_drift", "regression_margin", 0.0),
        ("calibration_drift", "regression_margin", 101.0),
        ("calibration_drift", "assert_mean_delta_gte", -101.0),
        ("calibration_drift", "items_limit", 0),
        ("external_perplexity", "assert_delta_gte", 101.0),
        ("external_perplexity", "chunks", 0),
        ("paraphrase_invariance", "min_generalization_ratio", 1.5),
        ("paraphrase_invariance", "min_generalization_ratio", -0.5),
        ("paraphrase_invariance", "max_generalization_ratio_if_memorize", 2.0),
        ("paraphrase_invariance", "min_verbatim_lift", -1.0),
        ("preference_flip", "assert_flip_rate_gte", 1.2),
        ("preference_flip", "min_triples_for_decision", 0),
        ("section_internalization", "per_section_threshold", 1.5),
        ("section_internalization", "assert_passing_section_frac", 0.0),
        ("null_adapter", "runs", 1),
        ("null_adapter", "runs", 201),
        ("null_adapter", "init_scale", 0.0),
        ("null_adapter", "init_scale", 2.0),
        ("null_adapter", "rank_multipliers", [0.001]),
        ("null_adapter", "rank_multipliers", [100.0]),
        ("null_adapter", "rank_multipliers", [1.001, 1.004]),
        ("null_adapter", "calibrate_kinds", ["null_adapter"]),
    ],
)
def test_thresholds_out_of_their_range_are_load_errors(kind: str, field: str, value: Any) -> None:
    with pytest.raises(SpecValidationError, match=field):
        build_probe(entry(kind, **{field: value}))


def test_kl_mean_bar_may_exceed_ln2() -> None:
    _, built = build_probe(entry("delta_kl", divergence="kl", assert_mean_gte=0.7))
    assert built.assert_mean_gte == 0.7  # type: ignore[attr-defined]


# --- seeds ----------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [-5, -1, 2**32, 2**64, 2**64 + 1, 10**30])
def test_run_seed_out_of_range_is_a_load_error_naming_the_field(seed: int) -> None:
    message = load_error(spec(NULL, DKL, defaults={"seed": seed}))
    assert "defaults.seed" in message and "[0, 4294967295]" in message


@pytest.mark.parametrize("seed", [-5, 2**32, 2**64 + 1])
def test_other_seeds_out_of_range_are_load_errors(seed: int) -> None:
    assert "seed_base" in load_error(spec({**NULL, "seed_base": seed}, DKL))
    assert "selection_seed" in load_error(spec(entry("calibration_drift", selection_seed=seed)))


def test_largest_seed_runs(run_suite: Callable[..., Any]) -> None:
    result = run_suite(NULL, DKL, seed=2**32 - 1)
    assert result.by_name("dkl").z_score is not None


def test_seed_too_large_in_yaml_file_names_the_field(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        f"""\
        models: {{ft: {{kind: dummy, base: dummy-base, adapter: "builtin:x"}}}}
        defaults: {{seed: {2**64 + 1}}}
        suite: [{{name: nul, kind: null_adapter, runs: 3}}, {{name: d, kind: delta_kl, prompts: [a]}}]
        """,
    )
    with pytest.raises(SpecValidationError, match=r"defaults\.seed: is 18446744073709551617"):
        load_spec(path)


# --- unpaired surrogates --------------------------------------------------------------------


def _json_spec(tmp_path: Path, data: dict[str, Any]) -> Path:
    path = tmp_path / "spec.json.yaml"
    path.write_text(json.dumps(data), encoding="utf-8")  # json.dumps writes "\ud83d"
    assert "\\ud83d" in path.read_text(encoding="utf-8")
    return path


def test_surrogate_in_a_prompt_names_its_path(tmp_path: Path) -> None:
    data = spec(
        NULL, {"name": "my_probe", "kind": "delta_kl", "prompts": [*PROMPTS[:3], "x\ud83d"]}
    )
    with pytest.raises(SpecValidationError) as info:
        load_spec(_json_spec(tmp_path, data))
    message = str(info.value)
    assert "suite[1] (my_probe).prompts[3]: holds an unpaired UTF-16 surrogate" in message
    message.encode("utf-8")  # the message itself is printable


@pytest.mark.parametrize(
    ("data", "where"),
    [
        (spec(NULL, {**DKL, "name": "d\udc00"}), "suite[1].name"),
        ({"models": {"ft": {**MODELS["ft"], "base": "\ud83d"}}, "suite": [NULL, DKL]}, "base"),
        (
            spec(
                NULL,
                entry(
                    "paraphrase_invariance",
                    cases=[{"prompt": "Q", "gold": "\udfff", "paraphrases": ["q"]}],
                ),
            ),
            "suite[1] (paraphrase_invariance).cases[0].gold",
        ),
        (spec(NULL, {**DKL, "\ud83d": 1}), "suite[1] (dkl).<key '\\ud83d'>"),
        ({**spec(NULL, DKL), "dlm_source": "doc\ud800.md"}, "dlm_source"),
    ],
)
def test_surrogates_anywhere_are_load_errors(data: dict[str, Any], where: str) -> None:
    message = load_error(data)
    assert where in message and "surrogate" in message
    message.encode("utf-8")


def test_paired_surrogates_in_json_load_as_the_character(tmp_path: Path) -> None:
    path = tmp_path / "ok.yaml"
    text = json.dumps(spec(NULL, {**DKL, "prompts": ["smile 😀"]}))  # "\ud83d\ude00"
    path.write_text(text, encoding="utf-8")
    loaded = load_spec(path)
    assert loaded.probes[1][1].prompts == ["smile 😀"]  # type: ignore[attr-defined]


def test_recursive_alias_is_a_load_error(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
        models: {ft: {kind: dummy, base: dummy-base, adapter: "builtin:x", options: &o {a: *o}}}
        suite: [{name: nul, kind: null_adapter, runs: 3}, {name: d, kind: delta_kl, prompts: [a]}]
        """,
    )
    with pytest.raises(SpecValidationError, match=r"models\.ft\.options\.a: contains itself"):
        load_spec(path)


def test_dry_run_refuses_a_surrogate_spec(tmp_path: Path) -> None:
    data = spec(NULL, {"name": "my_probe", "kind": "delta_kl", "prompts": ["a", "b\ud83d"]})
    path = _json_spec(tmp_path, data)
    result = CliRunner().invoke(app, ["run", "--dry-run", str(path)])
    assert result.exit_code == 2, result.output
    assert "error:" in result.output and "suite[1] (my_probe).prompts[1]" in result.output
    assert "Traceback" not in result.output


# --- problems knowable at load (used to be SKIPs after the run) ------------------------------


@pytest.mark.parametrize(
    "kind", ["section_internalization", "paraphrase_invariance", "preference_flip"]
)
def test_section_probes_without_a_document_are_load_errors(kind: str) -> None:
    bare = {"name": kind, "kind": kind}
    message = load_error(spec(NULL, DKL, bare))
    assert f"suite[2] ({kind}):" in message and "dlm_source" in message


def _doc(tmp_path: Path, text: str) -> str:
    (tmp_path / "doc.md").write_text(textwrap.dedent(text), encoding="utf-8")
    return "doc.md"


def test_section_probes_whose_document_lacks_what_they_need(tmp_path: Path) -> None:
    source = _doc(tmp_path, "# Only\nOne prose section about rivers.\n")
    data = {
        **spec(
            NULL,
            DKL,
            {"name": "sis", "kind": "section_internalization"},
            {"name": "par", "kind": "paraphrase_invariance"},
            {"name": "pf", "kind": "preference_flip"},
        ),
        "dlm_source": source,
    }
    message = load_error(data, base_dir=tmp_path)
    assert "suite[2] (sis): needs at least 2 non-empty sections" in message
    assert "suite[3] (par): cases: no cases: the document has no instruction sections" in message
    assert "suite[4] (pf): triples: none to score" in message


def test_section_probes_load_with_a_document_that_has_what_they_need(tmp_path: Path) -> None:
    source = _doc(
        tmp_path,
        """\
        # Rivers
        Rivers flow downhill to the sea.

        # Quiz
        Q: What colour is the sky?
        A: Blue.

        # Taste
        Prompt: Pick a fruit.
        Chosen: An apple.
        Rejected: A rock.
        """,
    )
    data = {
        **spec(
            NULL,
            {"name": "sis", "kind": "section_internalization"},
            {"name": "par", "kind": "paraphrase_invariance"},
            {"name": "pf", "kind": "preference_flip", "min_triples_for_decision": 1},
        ),
        "dlm_source": source,
    }
    loaded = from_dict(data, base_dir=tmp_path)
    assert [s.name for _, s in loaded.probes] == ["null", "sis", "par", "pf"]


def test_too_few_triples_to_ever_judge_flips(tmp_path: Path) -> None:
    two = [{"prompt": f"p{i}", "chosen": " a", "rejected": " b"} for i in range(2)]
    message = load_error(spec(NULL, entry("preference_flip", triples=two)))
    assert "(preference_flip): min_triples_for_decision: the entry has 2 triple(s)" in message
    from_dict(spec(NULL, entry("preference_flip", triples=two, min_triples_for_decision=2)))


def test_cluster_kl_with_too_few_prompts(tmp_path: Path) -> None:
    message = load_error(spec(NULL, entry("cluster_kl", prompts=TOPIC_PROMPTS[:10])))
    assert "(cluster_kl): prompts: 10 prompt(s), fewer than min_prompts 20" in message
    crowded = entry("cluster_kl", prompts=TOPIC_PROMPTS[:8], min_prompts=4, num_clusters=5)
    assert "lower num_clusters to 4" in load_error(spec(NULL, crowded))


@pytest.mark.parametrize(
    ("hidden", "named"),
    [
        ("transformers", "transformers"),
        ("sklearn", "scikit-learn"),
        (_embed.MODEL_PACKAGE, _embed.MODEL_DIST),
    ],
)
def test_missing_optional_extras_are_load_errors(
    monkeypatch: pytest.MonkeyPatch, hidden: str, named: str
) -> None:
    real = _embed._find_spec
    monkeypatch.setattr(_embed, "_find_spec", lambda n: None if n == hidden else real(n))
    message = load_error(spec(NULL, entry("cluster_kl")))
    assert f"(cluster_kl): cluster_kl needs {named}" in message
    assert _embed.INSTALL_HINT in message


def test_missing_extras_are_checked_without_importing_them(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("sentence_transformers", "sklearn"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    from_dict(spec(NULL, entry("cluster_kl")))
    assert "sentence_transformers" not in sys.modules and "sklearn" not in sys.modules


def test_disabled_entries_are_not_checked_for_load_problems() -> None:
    loaded = from_dict(
        spec(NULL, DKL, {"name": "sis", "kind": "section_internalization", "enabled": False})
    )
    assert loaded.probes[2][1].enabled is False


def test_null_adapter_that_calibrates_nothing() -> None:
    message = load_error(spec(DKL, NULL))
    assert "suite[1] (null): nothing to calibrate: no enabled probe follows it" in message
    # An opting-out entry is fine as long as something after the null is calibrated.
    loaded = from_dict(spec(NULL, entry("prompt_collapse", name="pc"), DKL))
    assert [s.name for _, s in loaded.probes] == ["null", "pc", "dkl"]


def test_a_broken_follower_does_not_also_report_nothing_to_calibrate() -> None:
    message = load_error(spec(NULL, {**DKL, "prompt": ["typo"]}))
    assert "suite[1] (dkl): prompt: unknown key" in message
    assert "nothing to calibrate" not in message and "1 problem(s)" in message


def test_null_adapter_followed_only_by_opting_out_probes() -> None:
    message = load_error(spec(NULL, entry("prompt_collapse", name="pc")))
    assert "suite[0] (null): nothing to calibrate: the entries after it opt out (pc)" in message


def test_calibrate_kinds_must_follow_the_null() -> None:
    data = spec({**NULL, "calibrate_kinds": ["delta_kl", "cluster_kl"]}, DKL)
    message = load_error(data)
    assert "suite[0] (null): calibrate_kinds: no enabled cluster_kl entry follows" in message


# --- a suite must judge something -----------------------------------------------------------


def test_null_only_suite_is_a_load_error() -> None:
    message = load_error(spec(NULL))
    assert "no probe would give a verdict" in message and "null_adapter" in message


def test_all_disabled_suite_is_a_load_error() -> None:
    message = load_error(spec({**DKL, "enabled": False}, entry("calibration_drift", enabled=False)))
    assert "no probe would give a verdict: every entry is disabled" in message


def test_one_judged_probe_is_enough() -> None:
    assert isinstance(from_dict(spec(NULL, DKL)), LoadedSpec)


# --- CLI: exit 2, one message, no traceback -------------------------------------------------


BAD_SPECS: dict[str, str] = {
    "duplicate": """\
        models: {ft: {kind: dummy, base: dummy-base, adapter: "builtin:x"}}
        suite: [{name: nul, kind: null_adapter, runs: 3}, {name: d, kind: delta_kl, prompts: [a]}]
        suite: [{name: d, kind: delta_kl, prompts: [a]}]
        """,
    "coerced": """\
        models: {ft: {kind: dummy, base: dummy-base, adapter: "builtin:x"}}
        defaults: {seed: "7"}
        suite: [{name: nul, kind: null_adapter, runs: true}, {name: d, kind: delta_kl, prompts: [a]}]
        """,
    "z_bar": """\
        models: {ft: {kind: dummy, base: dummy-base, adapter: "builtin:x"}}
        suite: [{name: nul, kind: null_adapter, runs: 3}, {name: d, kind: delta_kl, prompts: [a], assert_z_gte: -100}]
        """,
    "nan": """\
        models: {ft: {kind: dummy, base: dummy-base, adapter: "builtin:x"}}
        suite: [{name: nul, kind: null_adapter, runs: 3}, {name: d, kind: delta_kl, prompts: [a], assert_z_gte: .nan}]
        """,
    "seed": """\
        models: {ft: {kind: dummy, base: dummy-base, adapter: "builtin:x"}}
        defaults: {seed: -5}
        suite: [{name: nul, kind: null_adapter, runs: 3}, {name: d, kind: delta_kl, prompts: [a]}]
        """,
    "device": """\
        models: {ft: {kind: dummy, base: dummy-base, adapter: "builtin:x", device: tpu}}
        suite: [{name: nul, kind: null_adapter, runs: 3}, {name: d, kind: delta_kl, prompts: [a]}]
        """,
    "null_only": """\
        models: {ft: {kind: dummy, base: dummy-base, adapter: "builtin:x"}}
        suite: [{name: nul, kind: null_adapter, runs: 3}]
        """,
    "no_document": """\
        models: {ft: {kind: dummy, base: dummy-base, adapter: "builtin:x"}}
        suite: [{name: nul, kind: null_adapter, runs: 3}, {name: s, kind: section_internalization}]
        """,
}
EXPECTED = {
    "duplicate": "duplicate key 'suite'",
    "coerced": "defaults.seed",
    "z_bar": "assert_z_gte",
    "nan": "assert_z_gte",
    "seed": "defaults.seed",
    "device": "models.ft.device",
    "null_only": "no probe would give a verdict",
    "no_document": "dlm_source",
}


@pytest.mark.parametrize("command", ["run --dry-run", "run", "gate"])
@pytest.mark.parametrize("case", sorted(BAD_SPECS))
def test_cli_refuses_bad_specs_before_any_model(tmp_path: Path, case: str, command: str) -> None:
    path = write(tmp_path, BAD_SPECS[case])
    result = CliRunner().invoke(app, [*command.split(), str(path)])
    assert result.exit_code == 2, result.output
    assert "error:" in result.output and EXPECTED[case] in " ".join(result.output.split())
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)


@pytest.mark.parametrize("case", ["duplicate", "seed"])
def test_real_process_exits_2_without_traceback(tmp_path: Path, case: str) -> None:
    path = write(tmp_path, BAD_SPECS[case])
    proc = subprocess.run(
        [sys.executable, "-c", "from dlm_sway.cli.app import main; main()", "gate", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 2, proc.stderr
    assert "error:" in proc.stderr and EXPECTED[case] in " ".join(proc.stderr.split())
    assert "Traceback" not in proc.stderr + proc.stdout


def test_yaml_null_name_says_it_is_no_value(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
        models: {ft: {kind: dummy, base: dummy-base, adapter: "builtin:x"}}
        suite: [{name: null, kind: null_adapter, runs: 3}, {name: d, kind: delta_kl, prompts: [a]}]
        """,
    )
    with pytest.raises(SpecValidationError, match=r"suite\[0\]: name: .*YAML reads null"):
        load_spec(path)


def test_yaml_round_trip_of_a_valid_spec_loads(tmp_path: Path) -> None:
    data = spec(NULL, DKL, entry("adapter_ablation"), defaults={"seed": 7, "top_k": 64})
    path = tmp_path / "ok.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    loaded = load_spec(path)
    assert loaded.spec.defaults.seed == 7 and len(loaded.probes) == 3


@pytest.mark.parametrize("where", ["prompts: *top", "unused: *top"])
def test_an_alias_bomb_is_refused_quickly_not_validated_for_minutes(
    tmp_path: Path, where: str
) -> None:
    """Nine levels of nine-fold aliases expand to ~10¹⁰ values: refused before validation."""
    lines = ['a0: &a0 ["x", "x", "x", "x", "x", "x", "x", "x", "x"]']
    for i in range(1, 11):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]")
    lines[-1] = lines[-1].replace(f"&a{10}", "&top")
    lines.append('models: {ft: {kind: dummy, base: x, adapter: "builtin:x"}}')
    entry = (
        "{name: d, kind: delta_kl, "
        + (where if where.startswith("prompts") else "prompts: [p]")
        + "}"
    )
    lines.append(f"suite:\n  - {entry}")
    if where.startswith("unused"):
        lines.append(where)
    with pytest.raises(SpecValidationError, match="alias"):
        load_spec(write(tmp_path, "\n".join(lines) + "\n"))


@pytest.mark.parametrize(
    "top",
    ["version: true", "version: 1.0", "defaults: {seed: 1:30}", "defaults: {top_k: 4:16}"],
)
def test_yaml_11_surprises_are_refused_not_coerced(tmp_path: Path, top: str) -> None:
    """``true == 1`` and ``1.0 == 1`` would pass a Literal; YAML 1.1 reads 1:30 as 90."""
    text = (
        f"{top}\nmodels: {{ft: {{kind: dummy, base: x, adapter: 'builtin:x'}}}}\n"
        "suite:\n  - {name: nb, kind: null_adapter}\n  - {name: d, kind: delta_kl, prompts: [a]}\n"
    )
    with pytest.raises(SpecValidationError, match=r"integer 1|base-60"):
        load_spec(write(tmp_path, text))


@pytest.mark.parametrize("style", ["flow", "block"])
def test_the_documented_null_field_works_unquoted(tmp_path: Path, style: str) -> None:
    """``null: permuted`` is null_adapter's field; YAML 1.1 reads the bare word as None."""
    entry = (
        "  - {name: nb, kind: null_adapter, null: permuted}\n"
        if style == "flow"
        else "  - name: nb\n    kind: null_adapter\n    null: permuted\n"
    )
    text = (
        "models: {ft: {kind: dummy, base: x, adapter: 'builtin:x'}}\nsuite:\n"
        + entry
        + "  - {name: d, kind: delta_kl, prompts: [a]}\n"
    )
    loaded = load_spec(write(tmp_path, text))
    spec = loaded.probes[0][1]
    assert isinstance(spec, NullAdapterSpec) and spec.null == "permuted"
