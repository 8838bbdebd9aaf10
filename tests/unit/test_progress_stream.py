"""Verdicts stream to the terminal as each probe finishes (the first answer in seconds)."""

from __future__ import annotations

import io

from dlm_sway.cli.progress import RichProgress
from dlm_sway.core.result import ProbeResult, Verdict


def _finish(enabled: bool) -> str:
    progress = RichProgress(enabled=enabled)
    sink = io.StringIO()
    progress._progress.console.file = sink
    with progress:
        progress.probe_started("shift", 0, 2)
        progress.probe_finished(
            ProbeResult(name="shift", kind="delta_kl", verdict=Verdict.PASS, headline="above noise")
        )
        progress.probe_started("[red]x", 1, 2)
        progress.probe_finished(ProbeResult(name="[red]x", kind="delta_kl", verdict=Verdict.FAIL))
    return sink.getvalue()


def test_each_verdict_is_printed_when_its_probe_finishes() -> None:
    out = _finish(enabled=True)
    assert "provisional" in out  # Holm can still change a streamed PASS
    assert "PASS  shift (delta_kl) above noise" in out
    assert "FAIL  [red]x (delta_kl)" in out  # names are text, never markup


def test_quiet_when_progress_is_off() -> None:
    assert _finish(enabled=False) == ""
