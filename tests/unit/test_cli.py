"""End-to-end tests of the ``sway`` CLI on the torch-free dummy backend.

Every test drives the real Typer app (``CliRunner``) with spec files written to
``tmp_path`` and asserts what a user or a CI job relies on: exit codes, the
messages next to them, and the JSON contract. The dummy backend's ``strength``
0 is a no-op adapter; ``planted`` > 0 gives the fine-tune a real signal that a
random adapter of the same norm does not have (a trained adapter); ``nan``
plants non-finite logits in the fine-tuned view.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
from collections import Counter
from importlib.metadata import version as dist_version
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from dlm_sway import __version__
from dlm_sway.cli.app import app

PROMPTS = [
    "The quick brown fox",
    "Alpha beta gamma delta",
    "Hello world, once again",
    "Once upon a time there was",
]
NOOP = {"strength": 0.0}
TRAINED = {"strength": 1.0, "planted": 1.0}
NAN = {"nan": True}
VERDICTS = ("PASS", "FAIL", "WARN", "SKIP", "ERROR")
# A clean, deterministic console: no colour codes, one known width.
ENV = {"COLUMNS": "100", "NO_COLOR": "1", "FORCE_COLOR": None, "TTY_COMPATIBLE": None}


def spec_dict(
    options: dict[str, Any], *, extra_suite: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    return {
        "version": 1,
        "models": {
            "ft": {
                "kind": "dummy",
                "base": "dummy-base",
                "adapter": "builtin:x",
                "options": options,
            }
        },
        "defaults": {"seed": 0},
        "suite": [
            {"name": "calib", "kind": "null_adapter", "runs": 10},
            {"name": "topic", "kind": "delta_kl", "prompts": PROMPTS},
            {"name": "scale", "kind": "adapter_ablation", "prompts": PROMPTS[:2]},
            *(extra_suite or []),
        ],
    }


def write_spec(path: Path, data: dict[str, Any] | str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data), encoding="utf-8")
    return path


@pytest.fixture
def cli() -> Any:
    runner = CliRunner()

    def invoke(*args: str | Path) -> Any:
        return runner.invoke(app, [str(a) for a in args], env=ENV)

    return invoke


@pytest.fixture
def noop_spec(tmp_path: Path) -> Path:
    return write_spec(tmp_path / "noop.yaml", spec_dict(NOOP))


@pytest.fixture
def trained_spec(tmp_path: Path) -> Path:
    return write_spec(tmp_path / "trained.yaml", spec_dict(TRAINED))


@pytest.fixture
def nan_spec(tmp_path: Path) -> Path:
    return write_spec(tmp_path / "nan.yaml", spec_dict(NAN))


def assert_clean_usage_error(result: Any, *needles: str) -> None:
    """Exit 2, every needle in the output, and no Python traceback."""
    assert result.exit_code == 2, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(
        result.exception
    )
    assert "Traceback" not in result.output
    for needle in needles:
        assert needle in result.output, f"{needle!r} missing from:\n{result.output}"


def json_of(result: Any) -> dict[str, Any]:
    data = json.loads(result.stdout)
    assert isinstance(data, dict)
    return data


def report_verdicts(output: str, probes: list[dict[str, Any]]) -> dict[str, str]:
    """Each probe's verdict as the terminal report prints it (table row or stacked entry)."""
    found: dict[str, str] = {}
    for probe in probes:
        pattern = re.compile(
            rf"(?<![\w\[]){re.escape(probe['name'])}(?![\w\]]).*\b{re.escape(probe['kind'])}\b"
        )
        lines = [line for line in output.splitlines() if pattern.search(line)]
        verdicts = {v for line in lines for v in VERDICTS if re.search(rf"\b{v}\b", line)}
        assert len(verdicts) == 1, f"{probe['name']}: {verdicts} in {lines}"
        found[probe["name"]] = verdicts.pop()
    return found


# --- top level ---------------------------------------------------------------------------


def test_version_prints_the_installed_version(cli: Any) -> None:
    result = cli("--version")
    assert result.exit_code == 0
    assert result.stdout.strip() == f"sway {__version__}"
    assert __version__ == dist_version("dlm-sway")


def test_no_arguments_shows_help_listing_every_command(cli: Any) -> None:
    result = cli()
    assert result.exit_code in (0, 2)  # Click ≥ 8.2 exits 2 for a bare group
    assert "Usage" in result.output
    for command in ("run", "gate", "check", "demo", "list-probes", "doctor"):
        assert re.search(rf"\b{re.escape(command)}\b", result.output), command


def test_cli_entry_points_never_import_torch(tmp_path: Path) -> None:
    """`--help`, a dummy gate, a dry run of an hf spec and doctor stay torch-free."""
    gate = write_spec(tmp_path / "gate.yaml", spec_dict(TRAINED))
    hf = write_spec(
        tmp_path / "hf.yaml",
        {
            "models": {"ft": {"kind": "hf", "base": "./base", "adapter": "./missing"}},
            "suite": [{"name": "topic", "kind": "delta_kl", "prompts": PROMPTS}],
        },
    )
    script = textwrap.dedent(
        f"""
        import json, sys
        from typer.testing import CliRunner
        from dlm_sway.cli.app import app
        steps = [
            ["--help"],
            ["gate", {str(gate)!r}],
            ["run", {str(hf)!r}, "--dry-run"],
            ["list-probes"],
            ["doctor", "--json"],
        ]
        out = []
        for args in steps:
            code = CliRunner().invoke(app, args).exit_code
            out.append([args[0], code, "torch" in sys.modules])
        print(json.dumps(out))
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False
    )
    assert proc.returncode == 0, proc.stderr
    steps = json.loads(proc.stdout.strip().splitlines()[-1])
    assert [code for _, code, _ in steps] == [0, 0, 0, 0, 0], steps
    assert [name for name, _, torch in steps if torch] == [], steps


# --- gate --------------------------------------------------------------------------------


def test_gate_fails_a_noop_adapter(cli: Any, noop_spec: Path) -> None:
    result = cli("gate", noop_spec)
    assert result.exit_code == 1, result.output
    assert "gate FAILED" in result.output
    assert "gate passed" not in result.output


def test_gate_passes_a_trained_adapter(cli: Any, trained_spec: Path) -> None:
    result = cli("gate", trained_spec)
    assert result.exit_code == 0, result.output
    assert "gate passed" in result.output
    assert "gate FAILED" not in result.output


def test_gate_never_passes_nan_logits(cli: Any, nan_spec: Path) -> None:
    result = cli("gate", nan_spec, "--json", "-")
    assert result.exit_code == 1, result.output
    assert "gate FAILED" in result.stderr
    probes = json_of(result)["probes"]
    assert [(p["name"], p["verdict"]) for p in probes] == [("__preflight__", "error")]


def test_gate_fails_when_the_composite_is_below_the_threshold(cli: Any, trained_spec: Path) -> None:
    """All probes pass, but the overall score misses a strict threshold: still exit 1."""
    overall = json_of(cli("run", trained_spec, "--json", "-"))["score"]["overall"]
    assert overall < 0.99
    result = cli("gate", trained_spec, "--threshold", "0.99")
    assert result.exit_code == 1, result.output
    assert "gate FAILED" in result.output
    assert "threshold" in result.stderr
    assert cli("gate", trained_spec, "--threshold", f"{overall - 0.01:.4f}").exit_code == 0


def test_gate_reads_the_threshold_from_the_spec(cli: Any, tmp_path: Path) -> None:
    data = spec_dict(TRAINED)
    data["defaults"]["coverage_threshold"] = 0.99
    result = cli("gate", write_spec(tmp_path / "strict.yaml", data))
    assert result.exit_code == 1, result.output
    assert "0.99" in result.stderr


@pytest.mark.parametrize("threshold", ["1.5", "-0.1", "nan"])
def test_gate_rejects_a_threshold_outside_0_1(cli: Any, trained_spec: Path, threshold: str) -> None:
    result = cli("gate", trained_spec, "--threshold", threshold)
    assert_clean_usage_error(result, "--threshold")


MALFORMED: dict[str, tuple[str, tuple[str, ...]]] = {
    "unknown key": (
        yaml.safe_dump(
            {**spec_dict(TRAINED), "models": {"ft": {"kind": "dummy", "base": "b", "colour": 1}}}
        ),
        ("models.ft.colour", "unknown key"),
    ),
    "unknown probe key": (
        yaml.safe_dump(
            spec_dict(TRAINED, extra_suite=[{"name": "x", "kind": "delta_kl", "prompt": ["a"]}])
        ),
        ("suite[3] (x)", "prompt"),
    ),
    "bad YAML": ("version: 1\nmodels: [\n", ("invalid YAML", "line 3")),
    "unknown probe kind": (
        yaml.safe_dump(spec_dict(TRAINED, extra_suite=[{"name": "x", "kind": "delta_kll"}])),
        ("suite[3] (x)", "unknown probe kind 'delta_kll'", "delta_kl"),
    ),
    "empty prompts": (
        yaml.safe_dump(
            spec_dict(TRAINED, extra_suite=[{"name": "x", "kind": "delta_kl", "prompts": []}])
        ),
        ("suite[3] (x)", "prompts"),
    ),
    "blank prompt": (
        yaml.safe_dump(
            spec_dict(TRAINED, extra_suite=[{"name": "x", "kind": "delta_kl", "prompts": [" "]}])
        ),
        ("suite[3] (x)", "prompts"),
    ),
    "empty suite": (
        yaml.safe_dump({**spec_dict(TRAINED), "suite": []}),
        ("suite", "empty"),
    ),
    "duplicate names": (
        yaml.safe_dump(
            spec_dict(
                TRAINED, extra_suite=[{"name": "topic", "kind": "delta_kl", "prompts": ["a"]}]
            )
        ),
        ("duplicate", "'topic'"),
    ),
    "not a mapping": ("- just\n- a list\n", ("top level",)),
}


@pytest.mark.parametrize("command", ["gate", "run"])
@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_specs_exit_2_naming_file_and_field(
    cli: Any, tmp_path: Path, case: str, command: str
) -> None:
    text, needles = MALFORMED[case]
    spec = write_spec(tmp_path / "bad-spec.yaml", text)
    result = cli(command, spec)
    assert_clean_usage_error(result, "bad-spec.yaml", *needles)


def test_missing_spec_file_exits_2_naming_it(cli: Any, tmp_path: Path) -> None:
    result = cli("gate", tmp_path / "nowhere.yaml")
    assert_clean_usage_error(result, "nowhere.yaml", "not found")


def test_every_spec_problem_is_reported_at_once(cli: Any, tmp_path: Path) -> None:
    data = spec_dict(TRAINED, extra_suite=[{"name": "x", "kind": "delta_kll"}])
    data["models"]["ft"]["colour"] = "red"
    data["suite"][1]["prompts"] = []
    result = cli("gate", write_spec(tmp_path / "many.yaml", data))
    assert_clean_usage_error(result, "models.ft.colour", "delta_kll", "suite[1] (topic)")


def test_backend_options_a_backend_rejects_exit_2(cli: Any, tmp_path: Path) -> None:
    spec = write_spec(tmp_path / "opts.yaml", spec_dict({"strenght": 1.0}))
    result = cli("gate", spec)
    assert_clean_usage_error(result, "strenght")


def test_dry_run_rejects_an_unknown_backend_kind(cli: Any, tmp_path: Path) -> None:
    data = spec_dict(TRAINED)
    data["models"]["ft"]["kind"] = "dumy"
    spec = write_spec(tmp_path / "typo.yaml", data)
    assert_clean_usage_error(cli("run", spec, "--dry-run"), "typo.yaml", "models.ft.kind", "dumy")
    assert_clean_usage_error(cli("gate", spec), "typo.yaml", "models.ft.kind", "dumy")


@pytest.mark.parametrize("folder", ["exp[v2]", "runs[/b]"])
def test_error_messages_print_paths_verbatim(cli: Any, tmp_path: Path, folder: str) -> None:
    data = spec_dict(TRAINED)
    data["models"]["ft"]["colour"] = "red"
    spec = write_spec(tmp_path / folder / "spec.yaml", data)
    result = cli("gate", spec)
    assert_clean_usage_error(result, f"{folder}/spec.yaml", "models.ft.colour")


@pytest.mark.parametrize("name", ["topic[en]", "topic[/en]"])
def test_gate_failure_names_the_probe_verbatim(cli: Any, tmp_path: Path, name: str) -> None:
    data = spec_dict(NOOP)
    data["suite"][1]["name"] = name
    result = cli("gate", write_spec(tmp_path / "names.yaml", data))
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    failed = result.stderr.split("gate FAILED", 1)[1]
    assert name in failed


# --- run ---------------------------------------------------------------------------------


def test_run_exits_0_even_when_probes_fail(cli: Any, noop_spec: Path) -> None:
    result = cli("run", noop_spec)
    assert result.exit_code == 0, result.output
    assert re.search(r"\bFAIL\b", result.stdout)
    assert "gate" not in result.output.lower()


def test_run_exits_0_on_a_preflight_abort(cli: Any, nan_spec: Path) -> None:
    result = cli("run", nan_spec)
    assert result.exit_code == 0, result.output
    assert "__preflight__" in result.stdout
    assert "ERROR" in result.stdout


def test_run_json_file_carries_the_documented_contract(
    cli: Any, noop_spec: Path, tmp_path: Path
) -> None:
    target = tmp_path / "out" / "run.json"
    result = cli("run", noop_spec, "--json", target)
    assert result.exit_code == 0, result.output
    assert "sway" in result.stdout  # the report still prints
    data = json.loads(target.read_text(encoding="utf-8"))

    assert data["schema_version"] == 2 and type(data["schema_version"]) is int
    assert data["sway_version"] == __version__
    assert [p["name"] for p in data["probes"]] == ["calib", "topic", "scale"]
    for probe in data["probes"]:
        for key in ("name", "kind", "verdict", "score", "raw", "z_score", "message", "evidence"):
            assert key in probe, (probe["name"], key)
        assert probe["verdict"] in {"pass", "fail", "warn", "skip", "error"}
        assert isinstance(probe["message"], str) and probe["message"]
        assert isinstance(probe["evidence"], dict)
    by_name = {p["name"]: p for p in data["probes"]}
    assert by_name["topic"]["verdict"] == "fail"
    assert by_name["topic"]["raw"] == pytest.approx(0.0, abs=1e-9)

    score = data["score"]
    assert 0.0 <= score["overall"] <= 1.0
    assert score["band"] in {"noise", "partial", "healthy", "suspicious"}
    assert score["band"] == "noise"  # a no-op adapter scores as noise
    assert {"topic", "scale"} <= set(data["null_stats"])  # calibrated entries, by name
    assert data["null_stats"]["topic"]["n"] == 10
    assert isinstance(data["timings"], dict) and data["timings"]
    assert all(isinstance(v, float) and v >= 0 for v in data["timings"].values())
    assert data["versions"]["sway"] == __version__
    assert "python" in data["versions"]
    assert data["determinism"]["seed"] == 0
    assert isinstance(data["determinism"]["class"], str)


def test_run_json_is_identical_across_runs_apart_from_clocks(cli: Any, noop_spec: Path) -> None:
    """Deterministic: same spec, same seed → same verdicts and numbers."""

    def stable(data: dict[str, Any]) -> Any:
        return [
            (p["name"], p["verdict"], p["raw"], p["z_score"], p["score"]) for p in data["probes"]
        ], data["score"]["overall"]

    first = json_of(cli("run", noop_spec, "--json", "-"))
    second = json_of(cli("run", noop_spec, "--json", "-"))
    assert stable(first) == stable(second)


def test_run_json_dash_prints_only_json(cli: Any, trained_spec: Path) -> None:
    result = cli("run", trained_spec, "--json", "-")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)  # the whole of stdout, nothing around it
    assert data["schema_version"] == 2
    assert "overall:" not in result.stdout
    assert "wrote JSON" not in result.output


def test_dry_run_lists_probes_without_building_a_backend(cli: Any, tmp_path: Path) -> None:
    spec = write_spec(
        tmp_path / "hf.yaml",
        {
            "models": {"ft": {"kind": "hf", "base": "./no-base", "adapter": "./no/such/adapter"}},
            "suite": [
                {"name": "calib", "kind": "null_adapter", "runs": 3},
                {"name": "topic", "kind": "delta_kl", "prompts": PROMPTS},
                {"name": "scale", "kind": "adapter_ablation", "prompts": PROMPTS, "enabled": False},
            ],
        },
    )
    result = cli("run", spec, "--dry-run")
    assert result.exit_code == 0, result.output
    for name, kind in (
        ("calib", "null_adapter"),
        ("topic", "delta_kl"),
        ("scale", "adapter_ablation"),
    ):
        assert re.search(rf"\b{name}\b.*\b{kind}\b", result.stdout), (name, result.stdout)
    assert re.search(r"\b3\s+probe\(s\)", result.stdout)  # the title may wrap
    # The same spec without --dry-run really does try to load the adapter and fails cleanly.
    real = cli("run", spec)
    assert real.exit_code == 2, real.output


def test_dry_run_still_validates_the_spec(cli: Any, tmp_path: Path) -> None:
    data = spec_dict(TRAINED, extra_suite=[{"name": "x", "kind": "delta_kll"}])
    result = cli("run", write_spec(tmp_path / "dry.yaml", data), "--dry-run")
    assert_clean_usage_error(result, "dry.yaml", "delta_kll")


def test_weights_flag_changes_the_overall(cli: Any, trained_spec: Path) -> None:
    # A trained adapter: its components differ (a no-op scores 0 everywhere, since the
    # judge gives "changes nothing" a 0 whatever the curve's shape).
    default = json_of(cli("run", trained_spec, "--json", "-"))["score"]
    only_adherence = json_of(cli("run", trained_spec, "--json", "-", "--weights", "adherence=1"))[
        "score"
    ]
    assert only_adherence["weights"]["adherence"] == 1.0
    assert only_adherence["overall"] != pytest.approx(default["overall"])
    # With ablation weighted 0, the overall is the adherence component alone.
    ablation_off = json_of(
        cli("run", trained_spec, "--json", "-", "--weights", "adherence=1,ablation=0")
    )["score"]
    assert ablation_off["overall"] == pytest.approx(ablation_off["components"]["adherence"])


def test_weights_from_the_spec_are_used_and_the_flag_overrides_them(
    cli: Any, tmp_path: Path
) -> None:
    data = spec_dict(NOOP)
    data["defaults"]["score_weights"] = {"ablation": 0.0}
    spec = write_spec(tmp_path / "w.yaml", data)
    from_spec = json_of(cli("run", spec, "--json", "-"))["score"]
    assert from_spec["weights"]["ablation"] == 0.0
    assert from_spec["overall"] == pytest.approx(from_spec["components"]["adherence"])
    flagged = json_of(cli("run", spec, "--json", "-", "--weights", "adherence=0"))["score"]
    assert flagged["weights"]["adherence"] == 0.0
    assert flagged["overall"] == pytest.approx(flagged["components"]["ablation"])


@pytest.mark.parametrize(
    ("flag", "needle"),
    [
        ("nonsense=1", "nonsense"),
        ("adherence=lots", "adherence"),
        ("adherence=-1", "adherence"),
        ("adherence", "adherence"),
        ("adherence=0,attribution=0,calibration=0,ablation=0", "weight"),
    ],
)
@pytest.mark.parametrize("command", ["run", "gate"])
def test_bad_weights_exit_2(
    cli: Any, noop_spec: Path, command: str, flag: str, needle: str
) -> None:
    result = cli(command, noop_spec, "--weights", flag)
    assert_clean_usage_error(result, "--weights", needle)


def test_unwritable_json_target_exits_2(cli: Any, noop_spec: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    result = cli("run", noop_spec, "--json", blocker / "run.json")
    assert_clean_usage_error(result, "run.json")


# --- run, gate and JSON agree ------------------------------------------------------------


def test_run_gate_and_json_agree_on_verdicts(cli: Any, tmp_path: Path) -> None:
    data = spec_dict(
        NOOP,
        extra_suite=[{"name": "off", "kind": "delta_kl", "prompts": PROMPTS, "enabled": False}],
    )
    spec = write_spec(tmp_path / "mixed.yaml", data)
    payload = json_of(cli("run", spec, "--json", "-"))
    probes = payload["probes"]
    from_json = {p["name"]: p["verdict"].upper() for p in probes}
    assert from_json == {"calib": "PASS", "topic": "FAIL", "scale": "FAIL", "off": "SKIP"}

    run = cli("run", spec)
    gate = cli("gate", spec)
    assert run.exit_code == 0 and gate.exit_code == 1
    assert report_verdicts(run.stdout, probes) == from_json
    assert report_verdicts(gate.stdout, probes) == from_json
    assert Counter(report_verdicts(run.stdout, probes).values()) == Counter(from_json.values())
    named = gate.stderr.split("gate FAILED", 1)[1]
    failed = {name for name, verdict in from_json.items() if verdict == "FAIL"}
    assert {name for name in from_json if re.search(rf"\b{name}\b", named)} == failed


def test_gate_json_matches_its_own_exit_code(cli: Any, trained_spec: Path, noop_spec: Path) -> None:
    for spec, code in ((trained_spec, 0), (noop_spec, 1)):
        result = cli("gate", spec, "--json", "-")
        assert result.exit_code == code, result.output
        data = json_of(result)
        verdicts = {p["verdict"] for p in data["probes"]}
        passed = verdicts <= {"pass", "warn", "skip"} and data["score"]["overall"] >= 0.6
        assert passed == (code == 0)


# --- check -------------------------------------------------------------------------------


def test_check_without_base_needs_an_adapter_config(cli: Any, tmp_path: Path) -> None:
    folder = tmp_path / "not-an-adapter"
    folder.mkdir()
    result = cli("check", folder)
    assert_clean_usage_error(result, "not-an-adapter", "adapter_config.json")


def test_check_without_base_needs_base_in_the_config(cli: Any, tmp_path: Path) -> None:
    folder = tmp_path / "adapter"
    folder.mkdir()
    (folder / "adapter_config.json").write_text(json.dumps({"r": 4, "peft_type": "LORA"}))
    result = cli("check", folder)
    assert_clean_usage_error(result, "adapter_config.json", "base_model_name_or_path", "--base")


def test_check_with_an_unreadable_config_exits_2(cli: Any, tmp_path: Path) -> None:
    folder = tmp_path / "adapter"
    folder.mkdir()
    (folder / "adapter_config.json").write_text("{not json")
    result = cli("check", folder)
    assert_clean_usage_error(result, "adapter_config.json")


def test_check_with_an_empty_prompts_file_exits_2(cli: Any, tmp_path: Path) -> None:
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n  \n")
    result = cli("check", tmp_path, "--base", "x", "--prompts", prompts)
    assert_clean_usage_error(result, "prompts.txt", "no prompts")


# --- list-probes, doctor -----------------------------------------------------------------


def test_list_probes_shows_kinds_with_categories(cli: Any) -> None:
    result = cli("list-probes")
    assert result.exit_code == 0, result.output
    for kind, category in (
        ("null_adapter", "baseline"),
        ("delta_kl", "adherence"),
        ("adapter_ablation", "ablation"),
    ):
        assert re.search(rf"\b{kind}\b.*\b{category}\b", result.stdout), (kind, result.stdout)


def test_doctor_json_is_machine_readable(cli: Any) -> None:
    result = cli("doctor", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["sway_version"] == __version__
    extras = data["extras"]
    assert {"core", "hf"} <= set(extras)
    assert extras["core"]["pydantic"]  # installed core dependencies report a version
    assert "torch" in extras["hf"]
    assert isinstance(data["demo_model"]["gguf_found"], bool)
