"""A corrupt or incomplete null-stats cache never changes a verdict and never crashes.

Each kind of bad cache file (unreadable, truncated, valid JSON of the wrong
shape, stats that disagree with the run) is written where a real suite run on a
caching dummy backend looks for its nulls. The run must recompute (same
verdicts and z as with no cache, ``from_cache`` false), and ``sway gate`` on a
suite that fails without the cache must still fail with the bad file present.
Hypothesis then writes random JSON (and random edits of a valid payload) there.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from dlm_sway.backends.dummy import DummyDifferentialBackend
from dlm_sway.backends.registry import register_backend
from dlm_sway.cli.app import app
from dlm_sway.core.result import SuiteResult
from dlm_sway.suite.loader import LoadedSpec, load_spec
from dlm_sway.suite.runner import run

KIND = "faults_cached_dummy"
PROMPTS = ["The quick brown fox", "Alpha beta gamma delta", "Hello world", "Once upon a time"]
ENV = {"COLUMNS": "100", "NO_COLOR": "1"}


class CachedDummy(DummyDifferentialBackend):
    """The dummy plus a cache identity, as the HF backend has: its nulls get cached."""

    def cache_identity(self) -> str:
        return f"{KIND}:{self.strength}:{self.planted}:{self.adapter_seed}"


def _factory(**options: Any) -> CachedDummy:
    return CachedDummy(**options)


register_backend(KIND, _factory)


def _spec(path: Path, *, planted: float) -> Path:
    data = {
        "version": 1,
        "models": {"ft": {"kind": KIND, "base": "dummy-base", "options": {"planted": planted}}},
        "defaults": {"seed": 0},
        "suite": [
            {"name": "null", "kind": "null_adapter", "runs": 3},
            {"name": "dkl", "kind": "delta_kl", "prompts": PROMPTS},
            {"name": "abl", "kind": "adapter_ablation", "prompts": PROMPTS[:2]},
        ],
    }
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


_LOADED: dict[Path, LoadedSpec] = {}


def _run(spec: Path, planted: float) -> SuiteResult:
    """A real run: the suite's own null_adapter reads (and rewrites) the cache file."""
    if spec not in _LOADED:
        _LOADED[spec] = load_spec(str(spec))
    return run(_LOADED[spec], CachedDummy(planted=planted))


def _numbers(res: SuiteResult) -> list[tuple[str, str, Any, Any]]:
    return [(p.name, p.verdict.value, p.raw, p.z_score) for p in res.probes]


@dataclass(frozen=True)
class World:
    """One suite per adapter, its uncached result, and the valid cache file it wrote."""

    cache: Path
    spec: dict[float, Path]
    baseline: dict[float, list[tuple[str, str, Any, Any]]]
    file: dict[float, Path]
    payload: dict[float, dict[str, Any]]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    root = tmp_path_factory.mktemp("corrupt-cache")
    cache = root / "cache"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SWAY_NULL_CACHE_DIR", str(cache))
        mp.delenv("SWAY_DISABLE_NULL_CACHE", raising=False)
        specs, baseline, files, payloads = {}, {}, {}, {}
        for planted in (0.0, 1.0):
            spec = _spec(root / f"planted-{planted}.yaml", planted=planted)
            before = set(cache.glob("*.json"))
            res = _run(spec, planted)
            assert res.by_name("null").evidence["from_cache"] is False
            (file,) = set(cache.glob("*.json")) - before
            specs[planted], baseline[planted], files[planted] = spec, _numbers(res), file
            payloads[planted] = json.loads(file.read_text(encoding="utf-8"))
        # the premise: every probe fails the random direction; the trained adapter passes
        assert {v for _, v, _, _ in baseline[0.0][1:]} == {"fail"}
        assert baseline[1.0][1][:2] == ("dkl", "pass")
        yield World(cache, specs, baseline, files, payloads)


def _entry(p: dict[str, Any]) -> dict[str, Any]:
    group: dict[str, Any] = next(iter(p["by_rank"].values()))
    entry: dict[str, Any] = group["dkl"]
    return entry


def _edit(fn: Callable[[dict[str, Any]], None]) -> Callable[[dict[str, Any]], str]:
    def make(valid: dict[str, Any]) -> str:
        p = json.loads(json.dumps(valid))
        fn(p)
        return json.dumps(p)

    return make


def _groups_emptied(p: dict[str, Any]) -> None:
    p["by_rank"] = {k: {} for k in p["by_rank"]}


def _under_other_name(p: dict[str, Any]) -> None:
    p["by_rank"] = {k: {"elsewhere": g["dkl"]} for k, g in p["by_rank"].items()}


def _negative_n(p: dict[str, Any]) -> None:
    _entry(p).update(n=-5, samples=[])


def _nan(p: dict[str, Any]) -> None:
    _entry(p)["samples"][1] = math.nan


def _wrong_type(p: dict[str, Any]) -> None:
    _entry(p)["std"] = "0.1"


def _junk(p: dict[str, Any]) -> None:
    _entry(p)["junk"] = {"x": 1}
    p["extra"] = True


def _dropped_entry(p: dict[str, Any]) -> None:
    for group in p["by_rank"].values():
        group.pop("abl")


#: Name → the file's text, built from the valid payload.
BAD_FILES: dict[str, Callable[[dict[str, Any]], str]] = {
    "zero_bytes": lambda v: "",
    "truncated": lambda v: json.dumps(v)[: len(json.dumps(v)) // 2],
    "garbage": lambda v: "\x00\x01garbage\udcff",
    "array": lambda v: "[1, 2, 3]",
    "empty_object": lambda v: "{}",
    "old_format": lambda v: json.dumps({"by_rank": v["by_rank"], "sway_version": "0"}),
    "duplicate_keys": lambda v: '{"by_rank": {}, "by_rank": ' + json.dumps(v["by_rank"]) + "}",
    "groups_emptied": _edit(_groups_emptied),
    "under_other_name": _edit(_under_other_name),
    "negative_n": _edit(_negative_n),
    "nan_sample": _edit(_nan),
    "wrong_type": _edit(_wrong_type),
    "junk": _edit(_junk),
    "dropped_entry": _edit(_dropped_entry),
}


def _write(path: Path, text: str) -> None:
    path.write_text(text, encoding="utf-8", errors="surrogateescape")


@pytest.mark.parametrize("planted", [0.0, 1.0], ids=["random", "trained"])
@pytest.mark.parametrize("bad", sorted(BAD_FILES))
def test_bad_cache_file_is_recomputed(world: World, bad: str, planted: float) -> None:
    _write(world.file[planted], BAD_FILES[bad](world.payload[planted]))
    res = _run(world.spec[planted], planted)
    null = res.by_name("null")
    assert null.evidence["from_cache"] is False, null.message
    assert _numbers(res) == world.baseline[planted]
    # recomputed and written back, whole: the next run trusts it again
    assert json.loads(world.file[planted].read_text(encoding="utf-8")) == world.payload[planted]
    assert not list(world.cache.glob(".*.tmp"))


def test_cache_path_taken_by_a_directory(world: World) -> None:
    path = world.file[0.0]
    path.unlink()
    path.mkdir()
    try:
        res = _run(world.spec[0.0], 0.0)
        assert res.by_name("null").evidence["from_cache"] is False
        assert _numbers(res) == world.baseline[0.0]
    finally:
        path.rmdir()


@pytest.mark.parametrize("bad", ["groups_emptied", "under_other_name", "negative_n", "nan_sample"])
def test_gate_still_fails_with_a_bad_cache(world: World, bad: str, tmp_path: Path) -> None:
    cli = CliRunner()
    world.file[0.0].unlink(missing_ok=True)
    clean = cli.invoke(app, ["gate", str(world.spec[0.0])], env=ENV)
    assert clean.exit_code == 1, clean.output
    _write(world.file[0.0], BAD_FILES[bad](world.payload[0.0]))
    out = tmp_path / "run.json"
    dirty = cli.invoke(app, ["gate", str(world.spec[0.0]), "--json", str(out)], env=ENV)
    assert dirty.exit_code == 1, dirty.output
    assert "Traceback" not in dirty.output
    verdicts = {p["name"]: p["verdict"] for p in json.loads(out.read_text())["probes"]}
    assert verdicts == {"null": "pass", "dkl": "fail", "abl": "fail"}


# --- fuzz: random JSON where the cache file goes ---------------------------------------------

JSON_LEAF = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
)
JSON = st.recursive(
    JSON_LEAF,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=20,
)


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(node, dict):
        for k, v in node.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += _paths(v, (*prefix, i))
    return out


def _replace(node: Any, path: tuple[Any, ...], value: Any) -> Any:
    if not path:
        return value
    head, rest = path[0], path[1:]
    if isinstance(node, dict):
        return {**node, head: _replace(node[head], rest, value)}
    copy = list(node)
    copy[head] = _replace(copy[head], rest, value)
    return copy


@st.composite
def cache_texts(draw: st.DrawFn, valid: dict[str, Any]) -> str:
    """Random JSON, or the valid payload with one node replaced by random JSON."""
    if draw(st.booleans()):
        return json.dumps(draw(JSON))
    path = draw(st.sampled_from(_paths(valid)[1:]))
    return json.dumps(_replace(valid, path, draw(JSON)))


@pytest.mark.parametrize(
    ("planted", "examples"), [(0.0, 150), (1.0, 40)], ids=["random", "trained"]
)
def test_fuzz_cache_file_never_changes_the_verdict(
    world: World, planted: float, examples: int
) -> None:
    """150 random files against the suite that must FAIL (a false PASS is the risk), 40
    against the one that must PASS."""
    valid = world.payload[planted]

    @settings(
        max_examples=examples,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @given(text=cache_texts(valid))
    def check(text: str) -> None:
        _write(world.file[planted], text)
        res = _run(world.spec[planted], planted)  # never raises
        assert _numbers(res) == world.baseline[planted], text
        if json.loads(text) != valid:
            assert res.by_name("null").evidence["from_cache"] is False, text

    check()
