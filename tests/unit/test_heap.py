"""The CLI keeps freed heap memory for reuse: a forward's activations do not fault in
fresh pages each time, and a user's own glibc malloc settings win."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from dlm_sway.cli import heap


def _glibc() -> bool:
    try:
        return "glibc" in (os.confstr("CS_GNU_LIBC_VERSION") or "")
    except (AttributeError, ValueError, OSError):  # no confstr, or a C library without the name
        return False


pytestmark = pytest.mark.skipif(not _glibc(), reason="glibc's malloc only")

#: Allocate and fill eight 4 MB blocks, free them, 20 times after a first round; print
#: the page faults those 20 rounds took.
CHURN = """
import resource, sys
import numpy as np
from dlm_sway.cli import heap
if sys.argv[1] == "keep":
    assert heap.keep_freed_memory()
def churn():
    blocks = [np.ones(1 << 19) for _ in range(8)]
    del blocks
churn()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    churn()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(mode: str) -> int:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    done = subprocess.run(
        [sys.executable, "-c", CHURN, mode], capture_output=True, text=True, env=env, check=True
    )
    return int(done.stdout)


def test_freed_blocks_are_reused_without_faulting_their_pages_in_again() -> None:
    plain, kept = _faults("plain"), _faults("keep")
    pages = (32 << 20) // os.sysconf("SC_PAGE_SIZE")  # one round's blocks
    assert plain > 5 * pages  # trimmed and faulted in anew round after round
    assert kept < pages // 10  # the first round's pages, reused


def test_the_users_own_malloc_settings_are_left_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "1000000")
    assert heap.keep_freed_memory() is False
    monkeypatch.delenv("MALLOC_TRIM_THRESHOLD_")
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.mmap_threshold=65536")
    assert heap.keep_freed_memory() is False


def test_the_command_line_sets_it_before_running() -> None:
    code = (
        "import dlm_sway.cli.heap as h; h.keep_freed_memory = lambda: print('kept') or True; "
        "from dlm_sway.cli.app import main; main()"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, "--version"], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0
    assert done.stdout.splitlines()[0] == "kept"
