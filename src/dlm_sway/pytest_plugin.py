"""pytest plugin (entry point ``pytest11: sway``): a sway spec as one test per probe.

Mark a test function::

    @pytest.mark.sway("sway.yaml")                 # path relative to pytest's rootdir
    def test_adapter(): ...

    @pytest.mark.sway("sway.yaml", threshold=0.7, weights={"ablation": 0})
    def test_adapter_strict(): ...

The function body never runs; it is replaced at collection by one item per probe
(``test_adapter[topic]``) and one gate item (``test_adapter[sway-gate]``), so
``-k topic`` selects a probe and ``--junitxml`` lists one test case per probe.

- **Lazy and shared**: collection only validates the spec (no model). The suite
  runs when the first of its items runs, once per session for each
  (spec, weights) pair, however many tests name it.
- **Verdicts map honestly**: PASS passes; WARN passes with a
  :class:`SwayVerdictWarning` in pytest's warnings summary (a real effect below
  the bar is not a failure of this probe, and ``xfail`` would claim it was
  expected; the gate item is where WARN fails, unless the spec's ``gate:``
  section allows it); FAIL fails with the verdict's words; SKIP skips with its
  reason; ERROR is reported as a pytest *error* (the probe could not run).
- **Config errors**: an unknown mark argument or a spec that does not load is
  one failing item (``test_adapter[sway-config]``) with sway's message, never a
  collection traceback.

Importing this module imports only sway's error classes (no torch, no model
code): pytest loads it at start-up in every session where sway is installed.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from dlm_sway.core.errors import SwayError

MARKER = "sway"
GATE_ITEM = "sway-gate"
CONFIG_ITEM = "sway-config"
_KNOWN_KWARGS = {"spec", "threshold", "weights"}


class SwayVerdictWarning(UserWarning):
    """A probe's WARN verdict: a real effect, but below the bar the probe asks for."""


class SwayItemError(SwayError):
    """A FAIL verdict, a failed gate or a config error; reported without a traceback."""


class _Runs:
    """One run per (spec path, weights) for the whole session; failures are remembered."""

    def __init__(self) -> None:
        self._done: dict[tuple[str, tuple[tuple[str, float], ...]], Any] = {}

    def get(self, path: Path, weights: Mapping[str, float] | None) -> Any:
        key = (str(path), tuple(sorted((weights or {}).items())))
        if key not in self._done:
            self._done[key] = _run_suite(path, weights)
        outcome = self._done[key]
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome


_RUNS = pytest.StashKey[_Runs]()


def _run_suite(path: Path, weights: Mapping[str, float] | None) -> Any:
    from dlm_sway.cli._common import execute
    from dlm_sway.suite.loader import load_spec

    try:
        loaded = load_spec(path)
        return loaded, *execute(loaded, weights=weights or None, show_progress=False)
    except SwayError as exc:
        return SwayItemError(f"sway could not run {path}: {exc}")
    except Exception as exc:  # noqa: BLE001 — kept and re-raised by every item of this spec
        return exc


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "sway(spec, threshold=None, weights=None): run a sway spec (path relative to the "
        "rootdir) as one test per probe plus a gate test; the function body is not run",
    )
    config.stash[_RUNS] = _Runs()


def _parse(marker: pytest.Mark, rootdir: Path) -> tuple[Path, float | None, dict[str, float]]:
    """The mark's spec path, threshold and weights, or a SwayItemError saying what is wrong."""
    unknown = set(marker.kwargs) - _KNOWN_KWARGS
    if unknown:
        raise SwayItemError(
            f"@pytest.mark.sway: unknown argument(s) {', '.join(sorted(unknown))}; "
            "use spec=, threshold=, weights="
        )
    if len(marker.args) > 1 or (marker.args and "spec" in marker.kwargs):
        raise SwayItemError("@pytest.mark.sway takes one spec path (positional or spec=)")
    spec = marker.args[0] if marker.args else marker.kwargs.get("spec")
    if not isinstance(spec, str | Path) or not str(spec).strip():
        raise SwayItemError(
            '@pytest.mark.sway needs a spec path, e.g. @pytest.mark.sway("sway.yaml")'
        )
    threshold = marker.kwargs.get("threshold")
    if threshold is not None and (
        isinstance(threshold, bool) or not isinstance(threshold, int | float)
    ):
        raise SwayItemError(f"@pytest.mark.sway threshold={threshold!r} must be a number in [0, 1]")
    weights = marker.kwargs.get("weights") or {}
    if not isinstance(weights, dict) or not all(
        isinstance(k, str) and isinstance(v, int | float) and not isinstance(v, bool)
        for k, v in weights.items()
    ):
        raise SwayItemError(
            f"@pytest.mark.sway weights={weights!r} must map category names to numbers"
        )
    path = Path(spec).expanduser()
    return (path if path.is_absolute() else rootdir / path), threshold, dict(weights)


def _mark_of(obj: object) -> pytest.Mark | None:
    marks = [m for m in getattr(obj, "pytestmark", []) if getattr(m, "name", None) == MARKER]
    return marks[0] if marks else None


@pytest.hookimpl(tryfirst=True)
def pytest_pycollect_makeitem(
    collector: pytest.Module | pytest.Class, name: str, obj: object
) -> list[pytest.Item] | None:
    """A function carrying ``@pytest.mark.sway`` becomes the spec's items."""
    marker = _mark_of(obj) if callable(obj) else None
    if marker is None or not collector.funcnamefilter(name):
        return None
    return list(_items(collector, name, marker))


def _items(parent: pytest.Collector, name: str, marker: pytest.Mark) -> Iterator[pytest.Item]:
    try:
        path, threshold, weights = _parse(marker, parent.config.rootpath)
        from dlm_sway.cli._common import gate_policy
        from dlm_sway.suite.loader import load_spec
        from dlm_sway.suite.score import validate_weights

        loaded = load_spec(path)
        if weights:  # merged over the defaults, like --weights
            weights = validate_weights(weights, source="@pytest.mark.sway weights")
        gate_policy(loaded, threshold=threshold)  # a bad threshold or gate section: now
    except SwayError as exc:
        yield SwayConfigItem.from_parent(parent, name=f"{name}[{CONFIG_ITEM}]", message=str(exc))
        return
    for _, pspec in loaded.probes:
        yield SwayProbeItem.from_parent(
            parent, name=f"{name}[{pspec.name}]", spec=path, weights=weights, probe=pspec.name
        )
    yield SwayGateItem.from_parent(
        parent, name=f"{name}[{GATE_ITEM}]", spec=path, weights=weights, threshold=threshold
    )


class _SwayItem(pytest.Item):
    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style: Any = None) -> str:
        if isinstance(excinfo.value, SwayItemError):
            return str(excinfo.value)
        return str(super().repr_failure(excinfo))

    def reportinfo(self) -> tuple[Path, int | None, str]:
        return self.path, None, f"sway: {self.name}"


class SwayConfigItem(_SwayItem):
    def __init__(self, *, message: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.message = message

    def runtest(self) -> None:
        raise SwayItemError(f"sway config error: {self.message}")


class SwayProbeItem(_SwayItem):
    def __init__(
        self, *, spec: Path, weights: Mapping[str, float], probe: str, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.spec, self.weights, self.probe = spec, weights, probe
        self.result: Any = None

    def setup(self) -> None:
        """The suite runs here (first item only); an ERROR verdict is a setup error."""
        from dlm_sway.core.result import Verdict

        _, suite, _ = self.config.stash[_RUNS].get(self.spec, self.weights)
        self.result = next((p for p in suite.probes if p.name == self.probe), None)
        aborted = next((p for p in suite.probes if p.kind == "preflight"), None)
        if self.result is None and aborted is not None:  # no probe ran: each one errors
            raise SwayItemError(f"ERROR {self.probe}: {aborted.message}")
        if self.result is None:
            names = ", ".join(p.name for p in suite.probes)
            raise SwayItemError(f"no result for probe {self.probe!r} (results: {names})")
        if self.result.verdict is Verdict.ERROR:
            raise SwayItemError(self._words("ERROR"))

    def _words(self, verdict: str) -> str:
        """``FAIL name (kind): message``, the headline first when the message lacks it."""
        r = self.result
        words = r.message if r.message.startswith(r.headline) else f"{r.headline}: {r.message}"
        return f"{verdict} {r.name} ({r.kind}): {words}"

    def runtest(self) -> None:
        from dlm_sway.core.result import Verdict

        verdict = self.result.verdict
        if verdict is Verdict.FAIL:
            raise SwayItemError(self._words("FAIL"))
        if verdict is Verdict.SKIP:
            pytest.skip(self._words("SKIP"))
        if verdict is Verdict.WARN:
            warnings.warn(SwayVerdictWarning(self._words("WARN")), stacklevel=1)


class SwayGateItem(_SwayItem):
    def __init__(
        self, *, spec: Path, weights: Mapping[str, float], threshold: float | None, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.spec, self.weights, self.threshold = spec, weights, threshold

    def runtest(self) -> None:
        from dlm_sway.cli._common import gate_policy
        from dlm_sway.core.gate import decide

        loaded, suite, score = self.config.stash[_RUNS].get(self.spec, self.weights)
        decision = decide(suite, score, gate_policy(loaded, threshold=self.threshold))
        if not decision.passed:
            raise SwayItemError(f"gate failed (exit {decision.exit_code}): {decision.summary()}")


__all__ = [
    "SwayConfigItem",
    "SwayGateItem",
    "SwayItemError",
    "SwayProbeItem",
    "SwayVerdictWarning",
]
