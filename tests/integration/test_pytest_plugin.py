"""The pytest plugin in real pytest sessions (pytester, in a subprocess: a fresh interpreter,
the plugin loaded from its ``pytest11`` entry point like in a user's project)."""

from __future__ import annotations

import re

import pytest
import yaml

pytest_plugins = ["pytester"]

PROMPTS = ["The quick brown fox", "Alpha beta gamma delta"]

#: Counts suite runs and records whether torch was imported when pytest started.
CONFTEST = """
import sys
STARTED_WITH_TORCH = "torch" in sys.modules
import dlm_sway.cli._common as common
RUNS = []
_execute = common.execute
def counting(*args, **kwargs):
    RUNS.append(args[0].path)
    return _execute(*args, **kwargs)
common.execute = counting
def pytest_sessionfinish(session):
    print(f"\\nSWAY_RUNS={len(RUNS)} TORCH_AT_START={STARTED_WITH_TORCH}")
"""


def spec(options: dict[str, object], suite: list[dict[str, object]]) -> str:
    models = {"ft": {"kind": "dummy", "base": "b", "adapter": "builtin:x", "options": options}}
    return yaml.safe_dump({"version": 1, "models": models, "suite": suite})


#: Every verdict the dummy backend can give: PASS, FAIL, WARN (z below a high bar), SKIP.
MIXED = spec(
    {"strength": 1.0, "planted": 1.0},
    [
        {"name": "calib", "kind": "null_adapter", "runs": 3},
        {"name": "topic", "kind": "delta_kl", "prompts": PROMPTS},
        {"name": "weak", "kind": "delta_kl", "prompts": PROMPTS[:1], "assert_mean_gte": 0.69},
        {
            "name": "marginal",
            "kind": "delta_kl",
            "prompts": ["Once upon a time"],
            "assert_z_gte": 39,
        },
        {"name": "disabled", "kind": "delta_kl", "prompts": PROMPTS, "enabled": False},
    ],
)
TESTS = """
import pytest

@pytest.mark.sway("specs/mixed.yaml")
def test_adapter():
    raise AssertionError("the body of a sway test never runs")

@pytest.mark.sway(spec="specs/mixed.yaml")
def test_same_spec_again():
    pass

def test_plain():
    assert True
"""


@pytest.fixture
def project(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.makeconftest(CONFTEST)
    (pytester.path / "specs").mkdir()
    (pytester.path / "specs" / "mixed.yaml").write_text(MIXED, encoding="utf-8")
    pytester.makepyfile(test_sway=TESTS)
    return pytester


def outcomes(result: pytest.RunResult) -> dict[str, str]:
    """``{item name: PASSED/FAILED/SKIPPED/ERROR}`` from the ``-v`` lines."""
    found: dict[str, str] = {}
    for line in result.outlines:
        m = re.match(r"^\S+::(\S+) (PASSED|FAILED|SKIPPED|ERROR)\b", line)
        if m:
            found[m.group(1)] = m.group(2)
    return found


def test_each_probe_is_an_item_and_verdicts_map_honestly(project: pytest.Pytester) -> None:
    result = project.runpytest_subprocess("-v", "-rA", "-p", "no:cacheprovider")
    got = outcomes(result)
    for test in ("test_adapter", "test_same_spec_again"):
        assert got[f"{test}[calib]"] == "PASSED"
        assert got[f"{test}[topic]"] == "PASSED"
        assert got[f"{test}[weak]"] == "FAILED"
        assert got[f"{test}[marginal]"] == "PASSED"  # WARN: passes, with a warning
        assert got[f"{test}[disabled]"] == "SKIPPED"
        assert got[f"{test}[sway-gate]"] == "FAILED"
    assert got["test_plain"] == "PASSED"
    out = result.stdout.str()
    assert "FAIL weak (delta_kl): real but negligible: mean JS" in out
    assert "SwayVerdictWarning: WARN marginal (delta_kl): real but below the bar" in out
    assert "SKIP disabled (delta_kl): disabled in spec" in out
    assert "gate failed (exit 1)" in out
    assert "never runs" not in out  # the decorated body was replaced
    assert "Traceback" not in out
    # lazy and shared: the two tests naming one spec ran it once; torch was not
    # imported when pytest started
    assert "SWAY_RUNS=1 TORCH_AT_START=False" in out
    result.assert_outcomes(passed=7, failed=4, skipped=2, warnings=2)


def test_collection_loads_no_model_and_k_selects_one_probe(project: pytest.Pytester) -> None:
    collected = project.runpytest_subprocess("--collect-only", "-q", "-p", "no:cacheprovider")
    assert "test_sway.py::test_adapter[topic]" in collected.stdout.str()
    assert "SWAY_RUNS=0" in collected.stdout.str()
    one = project.runpytest_subprocess("-k", "test_adapter and topic", "-p", "no:cacheprovider")
    one.assert_outcomes(passed=1)


def test_a_preflight_abort_makes_each_probe_an_error(pytester: pytest.Pytester) -> None:
    (pytester.path / "nan.yaml").write_text(
        spec({"nan": True}, [{"name": "topic", "kind": "delta_kl", "prompts": PROMPTS}]),
        encoding="utf-8",
    )
    pytester.makepyfile(
        test_nan='import pytest\n\n@pytest.mark.sway("nan.yaml")\ndef test_nan():\n    pass\n'
    )
    result = pytester.runpytest_subprocess("-v", "-rA", "-p", "no:cacheprovider")
    got = outcomes(result)
    assert got["test_nan[topic]"] == "ERROR"
    assert "non-finite" in result.stdout.str() or "NaN" in result.stdout.str()


CONFIG_ERRORS = {  # test name: (mark arguments, spec file content, words of the message)
    "test_unknown_kind": (
        '"bad.yaml"',
        "suite: [{name: x, kind: no_such_probe}]\n",
        "no_such_probe",
    ),
    "test_missing_file": ('"missing.yaml"', None, "missing.yaml"),
    "test_typo_argument": ('"mixed.yaml", treshold=0.5', MIXED, "unknown argument(s) treshold"),
    "test_bad_weights": ('"mixed.yaml", weights={"nonsense": 1}', MIXED, "'nonsense'"),
}


def test_a_config_error_is_one_failing_item(pytester: pytest.Pytester) -> None:
    source = ["import pytest\n"]
    for test, (mark, content, _) in CONFIG_ERRORS.items():
        if content is not None:
            (pytester.path / mark.split('"')[1]).write_text(content, encoding="utf-8")
        source.append(f"@pytest.mark.sway({mark})\ndef {test}():\n    pass\n")
    source.append("def test_other():\n    pass\n")
    pytester.makepyfile(test_cfg="\n".join(source))
    result = pytester.runpytest_subprocess("-v", "-rA", "-p", "no:cacheprovider")
    expected = {f"{test}[sway-config]": "FAILED" for test in CONFIG_ERRORS}
    assert outcomes(result) == {**expected, "test_other": "PASSED"}
    out = result.stdout.str()
    for test, (_, _, words) in CONFIG_ERRORS.items():
        section = out[out.index(f"sway: {test}[sway-config]") :].split("\n_")[0]
        assert words in section, (test, section)
    assert "ERROR collecting" not in out and "Traceback" not in out
    assert result.ret == pytest.ExitCode.TESTS_FAILED


def test_threshold_on_the_mark_drives_the_gate_item(pytester: pytest.Pytester) -> None:
    (pytester.path / "good.yaml").write_text(
        spec(
            {"strength": 1.0, "planted": 1.0},
            [
                {"name": "calib", "kind": "null_adapter", "runs": 10},
                {"name": "topic", "kind": "delta_kl", "prompts": PROMPTS},
            ],
        ),
        encoding="utf-8",
    )
    pytester.makepyfile(
        test_gate='import pytest\n\n@pytest.mark.sway("good.yaml")\ndef test_ok():\n    pass\n\n'
        '@pytest.mark.sway("good.yaml", threshold=1.0)\ndef test_strict():\n    pass\n'
    )
    result = pytester.runpytest_subprocess("-v", "-rA", "-p", "no:cacheprovider")
    got = outcomes(result)
    assert got["test_ok[sway-gate]"] == "PASSED"
    assert got["test_strict[sway-gate]"] == "FAILED"
    assert "threshold" in result.stdout.str()


def test_the_plugin_module_imports_nothing_heavy() -> None:
    import subprocess
    import sys

    code = (
        "import sys, dlm_sway.pytest_plugin\n"
        "heavy = {'torch', 'transformers', 'numpy', 'pydantic'} & set(sys.modules)\n"
        "print(sorted(heavy))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_relative_spec_paths_resolve_from_the_rootdir(
    project: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    project.makeini("[pytest]\n")  # the rootdir: where pytest.ini is, not the cwd
    sub = project.path / "tests" / "deep"
    sub.mkdir(parents=True)
    (project.path / "test_sway.py").rename(sub / "test_nested.py")
    monkeypatch.chdir(sub)
    result = project.runpytest_subprocess("-v", "-rA", "-p", "no:cacheprovider")
    assert outcomes(result)["test_adapter[topic]"] == "PASSED", result.stdout.str()
