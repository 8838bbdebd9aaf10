"""``--trace PATH``: one JSON line per event of a run, for ``sway trace`` to summarise.

Events (every line has ``event`` and ``t``, seconds since the trace opened):

- ``trace``: the header (``version``, ``spec``, ``started_at``);
- ``start`` / ``end``: a probe (``what: "probe"``, ``name``, ``kind``, ``index``;
  ``end`` adds ``verdict`` and ``seconds``) or a runner phase (``what: "phase"``:
  ``preflight``, ``noise_floor``);
- ``score``: one scoring call that reached the backend's cache
  (``probe``: the probe or phase running, ``view``, ``op``, ``prompts``, ``hits``,
  ``forwards``, ``tokens``, ``seconds``). ``forwards`` counts model forwards the
  call's misses needed (one per padded batch), ``tokens`` the real tokens they
  scored, ``seconds`` the wall time of computing the misses. Backends without an
  instrumented cache (the dummy backend) write no score events;
- ``done``: the run's wall ``seconds``.

Each line is flushed as it is written, so a run that crashes or is interrupted
leaves a readable trace of everything up to that point.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from dlm_sway.core.errors import SwayError
from dlm_sway.core.result import ProbeResult

TRACE_VERSION = 1


class TraceWriter:
    """Appends events to a JSONL file; ``current`` labels the score events."""

    def __init__(self, path: str | Path, *, spec: str = "") -> None:
        self.path = Path(path).expanduser()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fh: IO[str] | None = self.path.open("w", encoding="utf-8")
        except OSError as exc:
            raise SwayError(
                f"--trace {self.path}: cannot be written ({exc.strerror or exc}); "
                "give a file path in a writable folder"
            ) from None
        self._t0 = time.perf_counter()
        self.current = "<setup>"
        self._open: list[str] = []
        self.write(
            "trace",
            version=TRACE_VERSION,
            spec=spec,
            started_at=datetime.now(UTC).isoformat(),
        )

    def write(self, event: str, **fields: Any) -> None:
        if self._fh is None:
            return
        record = {"event": event, "t": round(time.perf_counter() - self._t0, 6), **fields}
        self._fh.write(json.dumps(record, allow_nan=False, default=str) + "\n")
        self._fh.flush()

    # -- the runner's hooks ------------------------------------------------------------
    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """A runner phase outside any probe (preflight, noise floor)."""
        self.write("start", what="phase", name=name)
        previous, self.current = self.current, name
        t = time.perf_counter()
        try:
            yield
        finally:
            self.current = previous
            self.write("end", what="phase", name=name, seconds=time.perf_counter() - t)

    def probe_started(self, name: str, kind: str, index: int) -> None:
        # A stack: the runner judges entries while a null_adapter is still drawing, and
        # the null's later forwards are its own again once that entry has finished.
        self._open.append(name)
        self.current = name
        self.write("start", what="probe", name=name, kind=kind, index=index)

    def probe_finished(self, result: ProbeResult) -> None:
        self.write(
            "end",
            what="probe",
            name=result.name,
            kind=result.kind,
            verdict=result.verdict.value,
            seconds=result.duration_s,
        )
        if self._open:
            self._open.pop()
        self.current = self._open[-1] if self._open else "<between probes>"

    # -- the backend's hook (see backends.instrumentation.CallRecord) --------------------
    def scoring_call(self, record: Any) -> None:
        self.write(
            "score",
            probe=self.current,
            view=record.view_id,
            op=record.op,
            prompts=record.prompts,
            hits=record.hits,
            forwards=record.forwards,
            tokens=record.tokens,
            seconds=record.seconds,
            **({"shared": list(record.shared)} if getattr(record, "shared", ()) else {}),
        )

    @contextmanager
    def attached(self, backend: object) -> Iterator[None]:
        """Route the backend's scoring calls here while the run lasts (a no-op for
        backends without instrumented stats)."""
        stats = getattr(backend, "stats", None)
        if stats is None or not hasattr(stats, "on_call"):
            yield
            return
        previous = stats.on_call
        stats.on_call = self.scoring_call
        try:
            yield
        finally:
            stats.on_call = previous

    def close(self, *, seconds: float | None = None) -> None:
        if self._fh is None:
            return
        if seconds is not None:
            self.write("done", seconds=seconds)
        with suppress(OSError):
            self._fh.close()
        self._fh = None


__all__ = ["TRACE_VERSION", "TraceWriter"]
