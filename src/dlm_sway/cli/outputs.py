"""Report outputs: checked before any model loads, written atomically, all or each.

:func:`check_outputs` runs first: every ``--json/--markdown/--junit/--html`` target
must be a file path whose folder exists or can be created and accepts new
files, no two outputs may share a path, none may land on an input (the spec,
the adapter, the prompts file, the run being re-rendered), and ``-`` (stdout)
may be used once. A typo in an output path therefore costs milliseconds, not
a model load.

:func:`write_outputs` renders everything, prints the stdout report, writes
each file to ``.<name>.<random>.tmp`` next to its target and then renames
the temporaries over their targets with Ctrl-C held off, so a reader sees the
previous file or the whole new one, never part of one. A process killed with
SIGKILL mid-write can leave such a ``.tmp`` file behind, never a truncated
target. One output failing (disk full) does not stop the others; the command
then exits 2 naming the one that failed.
"""

from __future__ import annotations

import errno
import os
import signal
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from dlm_sway.core.errors import SpecValidationError, SwayError

if TYPE_CHECKING:
    from dlm_sway.core.gate import GateDecision
    from dlm_sway.core.result import SuiteResult, SwayScore

Format = Literal["json", "markdown", "junit", "html"]
KIND_LABELS: dict[Format, str] = {
    "json": "JSON",
    "markdown": "markdown",
    "junit": "JUnit",
    "html": "HTML",
}
STDOUT = "-"
#: Temporaries: ``.<target name>.<random>.tmp`` in the target's folder (left only by SIGKILL).
TEMP_PREFIX_FORMAT = ".{name}."
TEMP_SUFFIX = ".tmp"


@dataclass(frozen=True, slots=True)
class Output:
    """One requested report: the flag it came from, where it goes, and its format."""

    flag: str
    target: str
    fmt: Format

    @property
    def label(self) -> str:
        return KIND_LABELS[self.fmt]

    @property
    def to_stdout(self) -> bool:
        return self.target == STDOUT


def check_outputs(
    requested: Sequence[tuple[str, str | Path | None, Format]],
    *,
    inputs: Sequence[tuple[str, Path]] = (),
) -> tuple[Output, ...]:
    """Validate every output target now; the first problem is a SwayError naming flag and path.

    ``requested`` is ``(flag, target or None, format)``; ``inputs`` are
    ``(what it is, path)`` for every file the command reads.
    """
    outputs = tuple(
        Output(flag, str(target), fmt) for flag, target, fmt in requested if target is not None
    )
    for out in outputs:
        if not out.target.strip():
            raise _bad(out, "is empty; give a file path, or '-' for stdout")
    on_stdout = [out.flag for out in outputs if out.to_stdout]
    if len(on_stdout) > 1:
        raise SpecValidationError(
            f"only one report can go to stdout ('-'), got {', '.join(on_stdout)}; "
            "write the others to files"
        )
    seen: dict[str, Output] = {}
    for out in outputs:
        if out.to_stdout:
            continue
        path = Path(out.target).expanduser()
        _check_folder(out, path)
        key = _identity(path)
        if key in seen:
            first = seen[key]
            raise _bad(
                out,
                f"is also the target of {first.flag}; two reports cannot share one file — "
                "give each its own path",
            )
        seen[key] = out
        for what, source in inputs:
            if _same_file(path, source):
                raise _bad(
                    out,
                    f"is the {what} ({source}); writing a report there would overwrite an "
                    "input — choose another path",
                )
    return outputs


def check_file_target(
    flag: str, target: str | Path, *, inputs: Sequence[tuple[str, Path]] = (), example: str
) -> None:
    """The same checks for a single non-report output (``autogen -o``): a regular file in a
    writable folder, never one of the command's inputs; ``-`` (stdout) is always fine."""
    out = Output(flag, str(target), "json")
    if not out.target.strip():
        raise _bad(out, "is empty; give a file path, or '-' for stdout")
    if out.to_stdout:
        return
    path = Path(out.target).expanduser()
    _check_folder(out, path, example=example)
    for what, source in inputs:
        if _same_file(path, source):
            raise _bad(
                out,
                f"is the {what} ({source}); writing there would overwrite an input — "
                "choose another path",
            )


def input_files(what: str, path: str | Path | None) -> list[tuple[str, Path]]:
    """``(what, file)`` for a file, or for each file directly inside a folder."""
    if path is None or str(path).startswith("builtin:"):
        return []
    p = Path(path).expanduser()
    try:
        if p.is_dir():
            return [(f"{what} file", child) for child in sorted(p.iterdir()) if child.is_file()]
    except OSError:
        return []
    return [(what, p)] if p.exists() else []


def render_report(
    fmt: Format, suite: SuiteResult, score: SwayScore, gate: GateDecision | None = None
) -> str:
    """The report text for one format; the gate decision is part of every format it reaches."""
    if fmt == "json":
        from dlm_sway.report.json_report import to_json

        return to_json(suite, score, gate=gate) + "\n"
    if fmt == "junit":
        from dlm_sway.report.junit import to_junit

        return to_junit(suite, score, gate=gate)
    if fmt == "html":
        from dlm_sway.report.html import to_html

        return to_html(suite, score, gate=gate)
    from dlm_sway.report.markdown import to_markdown

    text = to_markdown(suite, score)
    return text if gate is None else f"{text.rstrip()}\n\n{gate_markdown(gate)}"


def gate_markdown(gate: GateDecision) -> str:
    """The ``## Gate`` section: outcome, threshold, every reason, what the policy allowed."""
    from dlm_sway.report.format import visible_tree

    gate = visible_tree(gate)
    outcome = {0: "PASSED", 1: "FAILED", 2: "NOT JUDGED"}.get(gate.exit_code, "FAILED")
    lines = [
        "## Gate",
        "",
        f"**{outcome}** (exit {gate.exit_code}) — threshold {gate.threshold:g}, "
        f"{gate.summary() if gate.passed else f'overall {gate.overall:.4f}'}",
        "",
    ]
    lines.extend(f"- {_md_escape(reason.message)}" for reason in gate.reasons)
    if gate.allowed_skips:
        lines.append(f"- SKIP allowed by the policy: {_md_escape(', '.join(gate.allowed_skips))}")
    if gate.allowed_warns:
        lines.append(f"- WARN allowed by the policy: {_md_escape(', '.join(gate.allowed_warns))}")
    return "\n".join(lines).rstrip() + "\n"


def write_outputs(
    outputs: Sequence[Output],
    suite: SuiteResult,
    score: SwayScore,
    gate: GateDecision | None = None,
    *,
    announce: Callable[[str], None] | None = None,
) -> None:
    """Render and write every output; raise a SwayError naming any that failed (after the rest)."""
    write_texts([(out, render_report(out.fmt, suite, score, gate)) for out in outputs], announce)


def write_texts(
    texts: Sequence[tuple[Output, str]], announce: Callable[[str], None] | None = None
) -> None:
    """Print the stdout one, stage the files, then publish them all in one Ctrl-C-free step."""
    for out, text in texts:
        if out.to_stdout:
            _print_stdout(text)
    staged: list[tuple[Output, Path, Path]] = []
    failed: list[str] = []
    written: list[Output] = []
    try:
        for out, text in texts:
            if out.to_stdout:
                continue
            path = destination(Path(out.target).expanduser())
            try:
                staged.append((out, path, stage(text, path)))
            except OSError as exc:
                failed.append(f"{out.flag} {path}: {_why(exc)}")
        with sigint_deferred():
            for out, path, tmp in staged:
                try:
                    tmp.replace(path)
                    written.append(out)
                except OSError as exc:
                    failed.append(f"{out.flag} {path}: {_why(exc)}")
            staged = [s for s in staged if s[0] not in written]
    finally:
        for _, _, tmp in staged:
            tmp.unlink(missing_ok=True)
    if announce is not None:
        for out in written:
            announce(f"wrote {out.label} → {Path(out.target).expanduser()}")
    if failed:
        done = ", ".join(f"{o.flag} {o.target}" for o in written) or "none"
        raise SwayError(
            f"could not write {'; '.join(failed)} (written: {done}); free space or fix "
            "the folder, then re-run"
        )


def stage(text: str, path: Path) -> Path:
    """Write ``text`` to a temporary next to ``path`` (fsynced) and return the temporary."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(
        dir=path.parent, prefix=TEMP_PREFIX_FORMAT.format(name=path.name), suffix=TEMP_SUFFIX
    )
    tmp = Path(name)
    try:
        with os.fdopen(fd, "wb") as handle:
            write_all(handle.fileno(), text.encode("utf-8", "backslashreplace"))
            os.fsync(handle.fileno())
        tmp.chmod(_new_file_mode())  # mkstemp makes 0600; match a plain open()
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp


def write_all(fd: int, data: bytes) -> None:
    """``os.write`` until every byte is out (a short write is not an error by itself)."""
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        if n <= 0:
            raise OSError(errno.EIO, "short write")
        view = view[n:]


def destination(path: Path) -> Path:
    """Where ``path``'s bytes go: through a symlink to its target, so the rename replaces
    the file the link points at and the link itself stays a link."""
    return path.resolve() if path.is_symlink() else path


def atomic_write(text: str, path: Path) -> None:
    """One file: stage, then rename over the target with Ctrl-C held off."""
    path = destination(path)
    tmp = stage(text, path)
    try:
        with sigint_deferred():
            tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextmanager
def sigint_deferred() -> Iterator[None]:
    """Ignore Ctrl-C while renames commit: the outputs land together or not at all."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _print_stdout(text: str) -> None:
    try:
        sys.stdout.write(text.encode("utf-8", "backslashreplace").decode("utf-8"))
        sys.stdout.flush()
    except BrokenPipeError:
        raise SwayError("stdout was closed before the report was printed") from None


def _check_folder(out: Output, path: Path, *, example: str | None = None) -> None:
    if path.is_dir():
        name = example or _example(out)
        raise _bad(out, f"is a folder; give a file path such as {path / name}")
    if path.exists() and not path.is_file():
        raise _bad(out, "is not a regular file (a device or a pipe); use '-' for stdout")
    ancestor = path.parent
    while not ancestor.exists():
        if ancestor.parent == ancestor:
            break
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise _bad(out, f"cannot be created: {ancestor} is a file, not a folder")
    try:
        fd, name = tempfile.mkstemp(dir=ancestor, prefix=".sway-write-check.", suffix=TEMP_SUFFIX)
    except OSError as exc:
        problem = f"cannot be written: the folder {ancestor} refuses new files ({_why(exc)})"
        raise _bad(out, problem) from None
    os.close(fd)
    Path(name).unlink(missing_ok=True)


def _identity(path: Path) -> str:
    """One key per file: the folder's real path plus the name (the target is replaced, not
    followed, when it is a symlink)."""
    return str(Path(os.path.realpath(path.parent)) / path.name)


def _same_file(path: Path, source: Path) -> bool:
    if _identity(path) == _identity(source.expanduser()):
        return True
    try:
        return path.exists() and path.samefile(source)
    except OSError:
        return False


def _example(out: Output) -> str:
    return {"json": "run.json", "markdown": "run.md", "junit": "run.xml", "html": "run.html"}[
        out.fmt
    ]


def _bad(out: Output, problem: str) -> SpecValidationError:
    return SpecValidationError(f"{out.flag} {out.target}: {problem}")


def _why(exc: OSError) -> str:
    return exc.strerror or str(exc)


def _md_escape(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _new_file_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


__all__ = [
    "KIND_LABELS",
    "STDOUT",
    "TEMP_SUFFIX",
    "Output",
    "atomic_write",
    "check_file_target",
    "check_outputs",
    "gate_markdown",
    "input_files",
    "render_report",
    "sigint_deferred",
    "stage",
    "write_all",
    "write_outputs",
    "write_texts",
]
