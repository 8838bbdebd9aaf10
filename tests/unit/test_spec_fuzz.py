"""Property tests: any mutation of a valid spec either loads into a sound spec or is a clean error.

``load_spec`` may only return a :class:`LoadedSpec` whose every value is usable
(finite, in range, printable) or raise :class:`SpecValidationError` with a
printable message: never another exception. The CLI on the same inputs exits 0,
1 or 2, prints ``error:`` with exit 2, and never a traceback.
"""

from __future__ import annotations

import copy
import json
import math
import tempfile
from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from dlm_sway.cli.app import app
from dlm_sway.core.errors import SpecValidationError
from dlm_sway.probes._fields import SEED_MAX, Z_BAR_MAX, Z_BAR_MIN
from dlm_sway.probes.base import registry
from dlm_sway.suite.loader import LoadedSpec, from_dict, load_spec

BASE: dict[str, Any] = {
    "version": 1,
    "models": {
        "ft": {"kind": "dummy", "base": "dummy-base", "adapter": "builtin:x", "device": "cpu"}
    },
    "defaults": {"seed": 3, "top_k": 64, "score_weights": {"adherence": 0.5}},
    "suite": [
        {"name": "null", "kind": "null_adapter", "runs": 3, "seed_base": 10},
        {"name": "dkl", "kind": "delta_kl", "prompts": ["The fox", "Hello world"]},
        {
            "name": "abl",
            "kind": "adapter_ablation",
            "prompts": ["Once upon"],
            "lambdas": [0.0, 0.5, 1.0, 1.25],
            "assert_saturation_between": [0.3, 1.05],
            "assert_z_gte": 3.0,
            "weight": 1.0,
        },
    ],
}

KINDS = sorted(registry())
NASTY = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([-5, -1, 0, 1, 2, 2**32 - 1, 2**32, 2**64 + 1, 10**30]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([-100.0, 1.6, 1.645, 40.0, 41.0, 0.7, 1e308, -0.0]),
    st.text(max_size=6),
    st.text(alphabet=st.characters(categories=["Cs"]), min_size=1, max_size=2),
    st.sampled_from(["", " ", "\n", "tpu", "cuda:x", "cuda:0", "7", "true", ".nan", "\x00"]),
    st.lists(st.one_of(st.integers(-3, 3), st.floats(), st.text(max_size=3)), max_size=4),
    st.dictionaries(st.text(max_size=4), st.integers(-2, 2), max_size=2),
    st.sampled_from([*KINDS, "nope"]),
)


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every path to a value inside ``node`` (dict keys and list indices)."""
    out: list[tuple[Any, ...]] = []
    items = node.items() if isinstance(node, dict) else enumerate(node)
    for key, value in items:
        out.append((*prefix, key))
        if isinstance(value, dict | list) and value:
            out.extend(_paths(value, (*prefix, key)))
    return out


def _containers(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Paths of every mapping (where a key can be added)."""
    out = [prefix] if isinstance(node, dict) else []
    items = node.items() if isinstance(node, dict) else enumerate(node)
    for key, value in items:
        if isinstance(value, dict | list):
            out.extend(_containers(value, (*prefix, key)))
    return out


def _at(root: Any, path: tuple[Any, ...]) -> Any:
    for key in path:
        root = root[key]
    return root


@st.composite
def mutated_specs(draw: st.DrawFn) -> dict[str, Any]:
    spec = copy.deepcopy(BASE)
    for _ in range(draw(st.integers(min_value=1, max_value=3))):
        op = draw(st.sampled_from(["set", "set", "set", "add", "delete", "kind", "duplicate"]))
        if op == "set":
            path = draw(st.sampled_from(_paths(spec)))
            _at(spec, path[:-1])[path[-1]] = draw(NASTY)
        elif op == "add":
            where = draw(st.sampled_from(_containers(spec)))
            key = draw(st.sampled_from(["seed", "runs", "weight", "extra", "suite", "", "nul"]))
            _at(spec, where)[key] = draw(NASTY)
        elif op == "delete":
            path = draw(st.sampled_from(_paths(spec)))
            parent = _at(spec, path[:-1])
            del parent[path[-1]]
        elif op == "kind" and isinstance(spec.get("suite"), list) and spec["suite"]:
            i = draw(st.integers(0, len(spec["suite"]) - 1))
            if isinstance(spec["suite"][i], dict):
                spec["suite"][i]["kind"] = draw(st.sampled_from([*KINDS, "nope"]))
        elif op == "duplicate" and isinstance(spec.get("suite"), list) and spec["suite"]:
            spec["suite"].append(copy.deepcopy(spec["suite"][-1]))
    return spec


@st.composite
def spec_texts(draw: st.DrawFn) -> str:
    """A mutated spec as YAML or JSON text, sometimes with a duplicated or cut line."""
    spec = draw(mutated_specs())
    text = json.dumps(spec) if draw(st.booleans()) else yaml.safe_dump(spec, sort_keys=False)
    edit = draw(st.sampled_from(["none", "none", "dup_line", "cut", "dup_key"]))
    lines = text.splitlines(keepends=True)
    if edit == "dup_line" and len(lines) > 1:
        i = draw(st.integers(0, len(lines) - 1))
        lines.insert(i, lines[i])
    elif edit == "cut":
        return text[: draw(st.integers(0, len(text)))]
    elif edit == "dup_key":
        lines.append(
            draw(st.sampled_from(["suite: []\n", "defaults: {seed: 1}\n", "models: {}\n"]))
        )
    return "".join(lines)


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in (*_strings(k), *_strings(v))]
    if isinstance(value, list | tuple):
        return [s for v in value for s in _strings(v)]
    return []


def _numbers(value: Any) -> list[float]:
    if isinstance(value, bool):
        return []
    if isinstance(value, int | float):
        return [float(value)]
    if isinstance(value, dict):
        return [n for v in value.values() for n in _numbers(v)]
    if isinstance(value, list | tuple):
        return [n for v in value for n in _numbers(v)]
    return []


def assert_sound(loaded: LoadedSpec) -> None:
    """What an accepted spec guarantees to everything after the loader."""
    spec = loaded.spec
    dumped = [spec.model_dump(), *(p.model_dump() for _, p in loaded.probes)]
    for text in _strings(dumped):
        text.encode("utf-8")  # no lone surrogate anywhere
    assert all(math.isfinite(n) for n in _numbers(dumped))
    assert 0 <= spec.defaults.seed <= SEED_MAX
    assert spec.models.ft.device in {
        "auto",
        "cpu",
        "mps",
        "cuda",
    } or spec.models.ft.device.startswith("cuda:")
    assert all(0 <= w < math.inf for w in loaded.weights.values())
    judged = 0
    for probe, pspec in loaded.probes:
        assert pspec.name.strip() == pspec.name != ""
        assert 0 <= pspec.weight < math.inf
        z = getattr(pspec, "assert_z_gte", None)
        if z is not None:
            assert Z_BAR_MIN <= z <= Z_BAR_MAX
        seed_base = getattr(pspec, "seed_base", None)
        if seed_base is not None:
            assert 0 <= seed_base <= SEED_MAX
        judged += pspec.enabled and probe.category != "baseline"
    assert judged >= 1


def check(load: Any) -> None:
    try:
        loaded = load()
    except SpecValidationError as exc:
        message = str(exc)
        assert message.strip()
        message.encode("utf-8")  # printable on any terminal
        return
    assert isinstance(loaded, LoadedSpec)
    assert_sound(loaded)


FUZZ = settings(
    max_examples=250,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@FUZZ
@given(spec=mutated_specs())
def test_from_dict_accepts_sound_specs_or_raises_a_spec_error(spec: dict[str, Any]) -> None:
    check(lambda: from_dict(spec))


@FUZZ
@given(text=spec_texts())
def test_load_spec_accepts_sound_specs_or_raises_a_spec_error(text: str) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "sway.yaml"
        path.write_text(text, encoding="utf-8", errors="surrogatepass")
        check(lambda: load_spec(path))


@FUZZ
@given(raw=st.binary(max_size=200))
def test_arbitrary_bytes_are_a_spec_error(raw: bytes) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "sway.yaml"
        path.write_bytes(raw)
        check(lambda: load_spec(path))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=spec_texts(), command=st.sampled_from([["run", "--dry-run"], ["gate"]]))
def test_cli_never_tracebacks_on_a_mutated_spec(text: str, command: list[str]) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "sway.yaml"
        path.write_text(text, encoding="utf-8", errors="surrogatepass")
        result = CliRunner().invoke(app, [*command, str(path)])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    assert "Traceback" not in result.output
    assert result.exit_code in (0, 1, 2), result.output
    if result.exit_code == 2:
        assert "error:" in result.output
    if command == ["run", "--dry-run"]:
        assert result.exit_code in (0, 2), result.output
