"""Report outputs: every target checked before a model loads, written atomically, each on its own.

A user relies on: a bad ``--json/--markdown/--junit`` path costs milliseconds
(exit 2 naming the flag and the path, before any model load); no report ever
overwrites an input (the spec, the adapter, the prompts, the run being
re-rendered) or another report; and when one output fails at write time the
others are still written, the failed one keeps its previous content, and the
exit is 2 naming it.
"""

from __future__ import annotations

import errno
import json
import os
import stat
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from dlm_sway.cli.app import app

ENV = {"COLUMNS": "100", "NO_COLOR": "1", "FORCE_COLOR": None, "TTY_COMPATIBLE": None}
PROMPTS = ["The quick brown fox", "Alpha beta gamma delta", "Hello world", "Once upon a time"]
FLAGS = ("--json", "--markdown", "--junit")


@pytest.fixture
def cli() -> Any:
    runner = CliRunner()

    def invoke(*args: str | Path) -> Any:
        return runner.invoke(app, [str(a) for a in args], env=ENV)

    return invoke


def write_spec(path: Path, *, kind: str = "dummy", adapter: str | None = None) -> Path:
    ft: dict[str, Any] = {"kind": kind, "base": "dummy-base" if kind == "dummy" else "./no-base"}
    if kind == "dummy":
        ft["options"] = {"strength": 1.0, "planted": 1.0}
    if adapter is not None:
        ft["adapter"] = adapter
    data = {
        "version": 1,
        "models": {"ft": ft},
        "suite": [
            {"name": "calib", "kind": "null_adapter", "runs": 10},
            {"name": "topic", "kind": "delta_kl", "prompts": PROMPTS},
        ],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


@pytest.fixture
def unloadable(tmp_path: Path) -> Path:
    """A spec whose model cannot load: an output error proves the check ran first."""
    return write_spec(tmp_path / "hf.yaml", kind="hf", adapter="./no-adapter")


def usage_error(result: Any, *needles: str) -> None:
    assert result.exit_code == 2, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(
        result.exception
    )
    assert "Traceback" not in result.output
    text = " ".join(result.output.split())
    for needle in needles:
        assert needle in text, f"{needle!r} missing from:\n{result.output}"
    error = text.split("error:", 1)[-1]
    assert "no-base" not in error, "the model load was tried before the output check"


def read_only_folder(tmp_path: Path) -> Path:
    """A folder that refuses new files, for root too (root ignores mode bits; sysfs does not)."""
    if os.geteuid() == 0:
        return Path("/sys")
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(stat.S_IRUSR | stat.S_IXUSR)
    return folder


# --- 3. checked up front --------------------------------------------------------------------


@pytest.mark.parametrize("flag", FLAGS)
@pytest.mark.parametrize("command", ["run", "gate"])
def test_unwritable_targets_are_refused_before_the_model_loads(
    cli: Any, unloadable: Path, tmp_path: Path, flag: str, command: str
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    folder = tmp_path / "folder"
    folder.mkdir()
    ro = read_only_folder(tmp_path)
    cases = {
        blocker / "r.out": "is a file, not a folder",
        blocker / "deeper" / "r.out": "is a file, not a folder",
        folder: "is a folder",
        ro / "r.out": "refuses new files",
        ro / "new-dir" / "r.out": "refuses new files",
    }
    for target, problem in cases.items():
        usage_error(cli(command, unloadable, flag, target), flag, str(target), problem)


def test_a_device_is_not_an_output(cli: Any, unloadable: Path) -> None:
    """Renaming a report over /dev/null would replace the device (as root): refuse it."""
    usage_error(cli("run", unloadable, "--json", "/dev/null"), "--json", "/dev/null", "'-'")
    assert stat.S_ISCHR(Path("/dev/null").stat().st_mode)


def test_dry_run_checks_outputs_too(cli: Any, unloadable: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    usage_error(cli("run", unloadable, "--dry-run", "--json", blocker / "r.json"), "--json")


@pytest.mark.parametrize(
    ("first", "second"),
    [("--json", "--markdown"), ("--markdown", "--junit"), ("--json", "--junit")],
)
def test_two_outputs_onto_one_path_are_refused(
    cli: Any, unloadable: Path, tmp_path: Path, first: str, second: str, monkeypatch: Any
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "sub").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "sub")
    for a, b in (("r.out", "r.out"), ("r.out", "./r.out"), ("sub/r.out", "link/r.out")):
        usage_error(cli("gate", unloadable, first, a, second, b), first, second, "share")
    assert not (tmp_path / "r.out").exists()


def test_stdout_only_once(cli: Any, unloadable: Path) -> None:
    usage_error(cli("gate", unloadable, "--json", "-", "--junit", "-"), "stdout", "--json")


def test_no_output_may_overwrite_the_spec(cli: Any, tmp_path: Path, monkeypatch: Any) -> None:
    spec = write_spec(tmp_path / "sway.yaml")
    before = spec.read_bytes()
    monkeypatch.chdir(tmp_path)
    for flag in FLAGS:
        for target in (spec, "sway.yaml", "./sway.yaml"):
            usage_error(cli("gate", "sway.yaml", flag, target), flag, "spec file")
    assert spec.read_bytes() == before


def test_no_output_may_overwrite_the_adapter_or_the_document(cli: Any, tmp_path: Path) -> None:
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    config = adapter / "adapter_config.json"
    config.write_text("{}")
    spec = write_spec(tmp_path / "sway.yaml", adapter="./adapter")
    usage_error(cli("run", spec, "--json", config), "--json", "adapter", "adapter_config.json")
    assert config.read_text() == "{}"


def test_check_refuses_outputs_onto_its_inputs(cli: Any, tmp_path: Path) -> None:
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    config = adapter / "adapter_config.json"
    config.write_text(json.dumps({"base_model_name_or_path": "./no-base"}))
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("one prompt\n")
    usage_error(cli("check", adapter, "--json", config), "--json", "adapter_config.json")
    usage_error(
        cli("check", adapter, "--prompts", prompts, "--json", prompts), "--json", "prompts file"
    )
    assert prompts.read_text() == "one prompt\n"


def test_report_refuses_to_overwrite_the_run_it_reads(cli: Any, tmp_path: Path) -> None:
    spec = write_spec(tmp_path / "sway.yaml")
    saved = tmp_path / "run.json"
    assert cli("run", spec, "--json", saved).exit_code == 0
    before = saved.read_bytes()
    for fmt in ("json", "md", "junit"):
        result = cli("report", saved, "--format", fmt, "--out", saved)
        usage_error(result, "--out", "run.json", "result file being re-rendered")
    assert saved.read_bytes() == before


# --- written atomically, each on its own ------------------------------------------------------


def fail_one_write(monkeypatch: Any, marker: str) -> None:
    """Disk full for the temporary of the target whose name contains ``marker``: half the
    bytes land, then ENOSPC, as a real full disk does."""
    import dlm_sway.cli.outputs as outputs

    real = outputs.write_all

    def flaky(fd: int, data: bytes) -> None:
        if marker in str(Path(f"/proc/self/fd/{fd}").readlink()):
            os.write(fd, data[: len(data) // 2])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real(fd, data)

    monkeypatch.setattr(outputs, "write_all", flaky)


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc to name the fd")
@pytest.mark.parametrize("failing", ["r.json", "r.md", "r.xml"])
def test_one_failing_output_does_not_stop_the_others(
    cli: Any, tmp_path: Path, monkeypatch: Any, failing: str
) -> None:
    spec = write_spec(tmp_path / "sway.yaml")
    out = tmp_path / "out"
    out.mkdir()
    targets = {"--json": out / "r.json", "--markdown": out / "r.md", "--junit": out / "r.xml"}
    previous = "previous report\n"
    (out / failing).write_text(previous)
    fail_one_write(monkeypatch, f".{failing}.")
    args = [a for flag, path in targets.items() for a in (flag, path)]
    result = cli("gate", spec, *args)
    flag = next(f for f, p in targets.items() if p.name == failing)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    text = " ".join(result.stderr.split())
    assert "No space left on device" in text and flag in text and failing in text
    assert (out / failing).read_text() == previous  # the old file is intact
    for other in targets.values():
        if other.name != failing:
            body = other.read_text(encoding="utf-8")
            if other.suffix == ".json":
                assert "gate" in json.loads(body)
            elif other.suffix == ".xml":
                ET.fromstring(body)
            else:
                assert "## Gate" in body
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in targets.values())


def test_outputs_replace_previous_files_whole(cli: Any, tmp_path: Path) -> None:
    spec = write_spec(tmp_path / "sway.yaml")
    target = tmp_path / "r.json"
    target.write_text("x" * 1_000_000)  # longer than the report: no tail may survive
    assert cli("run", spec, "--json", target).exit_code == 0
    json.loads(target.read_text(encoding="utf-8"))
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.sampled_from(["a.json", "b/c.json", "./a.json", "-", "", "spec.yaml", "dir", "f/x"]),
        min_size=1,
        max_size=3,
    )
)
def test_any_target_mix_is_accepted_or_refused_cleanly(
    tmp_path_factory: Any, picks: list[str]
) -> None:
    """Property: a combination of targets either passes the check, with distinct real paths
    and at most one '-', or is refused with a SwayError naming one of the flags."""
    from dlm_sway.cli.outputs import check_outputs
    from dlm_sway.core.errors import SwayError

    root = tmp_path_factory.mktemp("mix")
    (root / "dir").mkdir()
    (root / "f").write_text("file")
    (root / "spec.yaml").write_text("spec")
    requested = [
        (flag, (str(root / p) if p not in ("-", "") else p), fmt)
        for (flag, fmt), p in zip(
            (("--json", "json"), ("--markdown", "markdown"), ("--junit", "junit")),
            picks,
            strict=False,
        )
    ]
    try:
        outputs = check_outputs(requested, inputs=[("spec file", root / "spec.yaml")])
    except SwayError as exc:
        assert any(flag in str(exc) for flag, _, _ in requested)
        return
    keys = [os.path.realpath(o.target) for o in outputs if o.target != "-"]
    assert len(keys) == len(set(keys))
    assert sum(o.target == "-" for o in outputs) <= 1
    assert all(Path(k).name not in ("spec.yaml", "dir", "x") for k in keys)
