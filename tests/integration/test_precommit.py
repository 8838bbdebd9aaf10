"""The pre-commit hooks, run by pre-commit itself on temporary git repositories.

``pre-commit try-repo`` clones the hook repository at a commit (only tracked
files travel), so the test commits a copy of this checkout (pyproject, README,
src, the hooks file) into a temporary repository and points pre-commit at that.
``sway-validate`` builds its own virtualenv with sway's core only (no torch):
validating an ``hf`` spec there proves the hook needs no model stack. That
install takes a while, hence ``slow``; the ``sway-gate`` hook (language: system)
runs in seconds.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
PROMPTS = ["The quick brown fox", "Alpha beta gamma delta"]

pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="needs git")


def git(cwd: Path, *args: str) -> None:
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@example.com",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@example.com",
    }
    subprocess.run(["git", *args], cwd=cwd, env=env, check=True, capture_output=True)


def new_repo(path: Path) -> Path:
    path.mkdir(parents=True)
    git(path, "init", "-q")
    return path


def pre_commit(cwd: Path, *args: str, home: Path) -> subprocess.CompletedProcess[str]:
    bindir = str(Path(sys.executable).parent)
    env = {
        **os.environ,
        "PRE_COMMIT_HOME": str(home),
        "PATH": bindir + os.pathsep + os.environ.get("PATH", ""),
        "NO_COLOR": "1",
    }
    return subprocess.run(
        [sys.executable, "-m", "pre_commit", *args, "--color", "never"],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )


@pytest.fixture(scope="module")
def hook_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """This checkout's hook repository content, committed in a temporary repository."""
    repo = new_repo(tmp_path_factory.mktemp("hooks") / "sway")
    for name in ("pyproject.toml", "README.md", ".pre-commit-hooks.yaml"):
        shutil.copy2(ROOT / name, repo / name)
    shutil.copytree(
        ROOT / "src", repo / "src", ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
    )
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "hooks under test")
    return repo


def spec(kind: str, suite: list[dict[str, object]], **model: object) -> str:
    models = {"ft": {"kind": kind, "base": "b", "adapter": "builtin:x", **model}}
    return yaml.safe_dump({"version": 1, "models": models, "suite": suite})


def test_hooks_file_declares_validate_and_gate() -> None:
    hooks = {h["id"]: h for h in yaml.safe_load((ROOT / ".pre-commit-hooks.yaml").read_text())}
    assert set(hooks) == {"sway-validate", "sway-gate"}
    assert "--dry-run" in hooks["sway-validate"]["entry"]
    assert hooks["sway-gate"]["entry"] == "sway gate"
    assert hooks["sway-gate"]["pass_filenames"] is False


def test_gate_hook_passes_and_fails_with_the_gate(hook_repo: Path, tmp_path: Path) -> None:
    project = new_repo(tmp_path / "project")
    suite = [
        {"name": "calib", "kind": "null_adapter", "runs": 10},
        {"name": "topic", "kind": "delta_kl", "prompts": PROMPTS},
    ]
    (project / "sway.yaml").write_text(
        spec("dummy", suite, options={"strength": 1.0, "planted": 1.0})
    )
    (project / "sway-noop.yaml").write_text(spec("dummy", suite, options={"strength": 0.0}))
    git(project, "add", "-A")
    rev = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=hook_repo, capture_output=True, text=True, check=True
    ).stdout.strip()
    for target, code in (("sway.yaml", 0), ("sway-noop.yaml", 1)):
        config = {
            "repos": [
                {
                    "repo": str(hook_repo),
                    "rev": rev,
                    "hooks": [{"id": "sway-gate", "args": [target]}],
                }
            ]
        }
        (project / ".pre-commit-config.yaml").write_text(yaml.safe_dump(config))
        result = pre_commit(
            project, "run", "sway-gate", "--files", target, home=tmp_path / "pc-home"
        )
        assert result.returncode == code, result.stdout + result.stderr
        assert ("Passed" if code == 0 else "Failed") in result.stdout
        if code:
            assert "gate FAILED" in result.stdout


@pytest.mark.slow
def test_validate_hook_with_try_repo_needs_no_torch(hook_repo: Path, tmp_path: Path) -> None:
    project = new_repo(tmp_path / "project")
    good = [{"name": "topic", "kind": "delta_kl", "prompts": PROMPTS}]
    # An hf spec whose model does not exist: validating it must load nothing.
    (project / "sway.yaml").write_text(spec("hf", good, adapter="./no-adapter-here"))
    (project / "sway-bad.yaml").write_text(spec("dummy", [{"name": "x", "kind": "no_such_probe"}]))
    git(project, "add", "-A")
    home = tmp_path / "pc-home"
    ok = pre_commit(
        project, "try-repo", str(hook_repo), "sway-validate", "--files", "sway.yaml", home=home
    )
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "sway validate specs" in ok.stdout and "Passed" in ok.stdout
    bad = pre_commit(
        project,
        "try-repo",
        str(hook_repo),
        "sway-validate",
        "--files",
        "sway.yaml",
        "sway-bad.yaml",
        home=home,
    )
    assert bad.returncode == 1, bad.stdout + bad.stderr
    assert "Failed" in bad.stdout and "no_such_probe" in bad.stdout
    assert "Traceback" not in bad.stdout
