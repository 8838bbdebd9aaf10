"""Fuzz the adapter loader: a broken adapter loads or is a BackendLoadError — nothing else.

Starting from the valid tiny adapter, hypothesis truncates and flips bytes of
``adapter_model.safetensors``, rewrites fields of its JSON header, and puts
random JSON values into ``adapter_config.json``. Building the HF backend on the
result must either succeed with the whole adapter loaded, or raise a
:class:`BackendLoadError` whose message names the adapter's path. Any other
exception is what a user would see as a traceback (exit 1).
"""

from __future__ import annotations

import json
import math
import shutil
import struct
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

pytest.importorskip("peft")

from tiny_model import TinyAssets  # noqa: E402

from dlm_sway.backends.hf import HFDifferentialBackend  # noqa: E402
from dlm_sway.core.errors import BackendLoadError  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")  # peft's notes on odd configs

WEIGHTS = "adapter_model.safetensors"
CONFIG = "adapter_config.json"
FUZZ = settings(
    max_examples=80,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    derandomize=True,
)

json_leaf = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(["", "q_proj", "v_proj", "all-linear", "lm_head", "LORA", "CAUSAL_LM", "x"]),
    st.text(max_size=8),
)
json_value = st.recursive(
    json_leaf,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=8,
)
CONFIG_FIELDS = [
    "r",
    "lora_alpha",
    "target_modules",
    "lora_dropout",
    "bias",
    "use_dora",
    "use_rslora",
    "fan_in_fan_out",
    "init_lora_weights",
    "rank_pattern",
    "alpha_pattern",
    "modules_to_save",
    "layers_to_transform",
    "layers_pattern",
    "task_type",
    "peft_type",
    "base_model_name_or_path",
    "exclude_modules",
    "layer_replication",
    "trainable_token_indices",
    "target_parameters",
    "lora_bias",
    "inference_mode",
]


def _check(assets: TinyAssets, adapter: Path) -> None:
    """The property: a whole load, or a BackendLoadError naming the adapter."""
    try:
        backend = HFDifferentialBackend(str(assets.base), adapter)
    except BackendLoadError as exc:
        assert str(adapter) in str(exc).replace("\n", ""), str(exc)
        return
    try:
        assert backend.load_health() == ()
    finally:
        backend.close()


def _fresh(assets: TinyAssets) -> tuple[Path, Path]:
    root = Path(tempfile.mkdtemp(prefix="sway_fuzz_"))
    return root, Path(shutil.copytree(assets.adapter, root / "adapter"))


def _header(raw: bytes) -> tuple[dict[str, Any], bytes]:
    n = struct.unpack("<Q", raw[:8])[0]
    return json.loads(raw[8 : 8 + n]), raw[8 + n :]


def _pack(header: dict[str, Any], data: bytes) -> bytes:
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + data


@FUZZ
@given(data=st.data())
def test_fuzzed_weight_bytes_load_or_fail_clearly(tiny_assets: TinyAssets, data: Any) -> None:
    raw = (tiny_assets.adapter / WEIGHTS).read_bytes()
    kind = data.draw(st.sampled_from(["truncate", "flip", "header_field", "append"]))
    if kind == "truncate":
        mutated = raw[: data.draw(st.integers(0, len(raw) - 1))]
    elif kind == "append":
        mutated = raw + data.draw(st.binary(min_size=1, max_size=64))
    elif kind == "flip":
        buf = bytearray(raw)
        for _ in range(data.draw(st.integers(1, 8))):
            # Half the flips land in the 8-byte length or the JSON header, where they matter.
            limit = len(buf) - 1 if data.draw(st.booleans()) else 8 + 1100
            buf[data.draw(st.integers(0, min(limit, len(buf) - 1)))] = data.draw(
                st.integers(0, 255)
            )
        mutated = bytes(buf)
    else:
        header, body = _header(raw)
        names = sorted(k for k in header if k != "__metadata__")
        name = data.draw(st.sampled_from(names))
        what = data.draw(st.sampled_from(["dtype", "shape", "data_offsets", "rename", "drop"]))
        if what == "rename":
            header[data.draw(st.text(min_size=1, max_size=30))] = header.pop(name)
        elif what == "drop":
            del header[name]
        elif what == "dtype":
            header[name]["dtype"] = data.draw(
                st.one_of(st.sampled_from(["F16", "BF16", "F64", "I64", "U8", "BOOL"]), json_leaf)
            )
        else:
            header[name][what] = data.draw(json_value)
        mutated = _pack(header, body)
    root, adapter = _fresh(tiny_assets)
    try:
        (adapter / WEIGHTS).write_bytes(mutated)
        _check(tiny_assets, adapter)
    finally:
        shutil.rmtree(root)


@settings(FUZZ, max_examples=60)
@given(
    changes=st.dictionaries(
        st.sampled_from(CONFIG_FIELDS), st.one_of(json_value, st.just(math.nan)), max_size=3
    ),
    drops=st.sets(st.sampled_from(CONFIG_FIELDS), max_size=2),
)
def test_fuzzed_adapter_config_loads_or_fails_clearly(
    tiny_assets: TinyAssets, changes: dict[str, Any], drops: set[str]
) -> None:
    root, adapter = _fresh(tiny_assets)
    try:
        path = adapter / CONFIG
        config = json.loads(path.read_text())
        for field in drops:
            config.pop(field, None)
        config.update(changes)
        path.write_text(json.dumps(config))  # NaN/Infinity are what json.dumps writes
        _check(tiny_assets, adapter)
    finally:
        shutil.rmtree(root)
