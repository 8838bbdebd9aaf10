"""Everything that can go wrong when the HF backend loads a model and an adapter.

Each fault is a clear :class:`BackendLoadError` (exit 2 at the CLI) that names
the file, says what is wrong and how to fix it — raised before the base model
loads whenever the fault is visible in the adapter's files — never a traceback,
and never an adapter that is scored although only part of it loaded.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

pytest.importorskip("peft")

import torch  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402
from tiny_model import TinyAssets, _quiet_peft, lora_config  # noqa: E402

from dlm_sway.backends import hf_load  # noqa: E402
from dlm_sway.backends.hf import HFDifferentialBackend  # noqa: E402
from dlm_sway.core.errors import BackendLoadError, SpecValidationError, SwayError  # noqa: E402
from dlm_sway.suite.build import backend_from_spec  # noqa: E402
from dlm_sway.suite.loader import from_dict  # noqa: E402
from dlm_sway.suite.runner import run  # noqa: E402

WEIGHTS = "adapter_model.safetensors"
CONFIG = "adapter_config.json"


@pytest.fixture
def no_base_load(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if the base model's weights start loading."""

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the base model loaded before the adapter was validated")

    monkeypatch.setattr(hf_load.AutoModelForCausalLM, "from_pretrained", refuse)


def load(assets: TinyAssets, adapter: Path, **kw: Any) -> HFDifferentialBackend:
    return HFDifferentialBackend(str(assets.base), adapter, **kw)


def set_config(adapter: Path, **changes: Any) -> None:
    path = adapter / CONFIG
    config = json.loads(path.read_text())
    for key, value in changes.items():
        if value is _DROP:
            config.pop(key, None)
        else:
            config[key] = value
    path.write_text(json.dumps(config))


_DROP = object()


# --- corrupt weight files ----------------------------------------------------------------


def _truncations(raw: bytes) -> dict[str, bytes]:
    header = 8 + int.from_bytes(raw[:8], "little")
    return {
        "zero_bytes": b"",
        "five_bytes": raw[:5],
        "header_only": raw[:header],
        "half_header": raw[: header // 2],
        "truncated_data": raw[: (header + len(raw)) // 2],
        "one_byte_short": raw[:-1],
        "one_byte_extra": raw + b"\0",
        "garbage": b"not a safetensors file at all " * 8,
        "huge_header_length": (10**15).to_bytes(8, "little") + raw[8:],
    }


@pytest.mark.parametrize(
    "case",
    list(_truncations(b"\x10" + b"\0" * 7 + b"{}" * 8)),
)
def test_corrupt_safetensors_is_a_clear_error_before_the_base_loads(
    tiny_assets: TinyAssets, adapter_copy: Path, case: str, no_base_load: None
) -> None:
    raw = (tiny_assets.adapter / WEIGHTS).read_bytes()
    (adapter_copy / WEIGHTS).write_bytes(_truncations(raw)[case])
    with pytest.raises(BackendLoadError) as info:
        load(tiny_assets, adapter_copy)
    msg = str(info.value)
    assert str(adapter_copy / WEIGHTS) in msg
    assert "corrupt" in msg and "save_pretrained" in msg


@pytest.mark.parametrize(
    ("case", "tensors"),
    [
        ("int_dtype", lambda t: {k: v.to(torch.int64) for k, v in t.items()}),
        ("bool_dtype", lambda t: {k: v > 0 for k, v in t.items()}),
        ("no_tensors", lambda t: {}),
    ],
)
def test_weights_that_are_not_lora_tensors_are_refused(
    tiny_assets: TinyAssets, adapter_copy: Path, case: str, tensors: Any, no_base_load: None
) -> None:
    path = adapter_copy / WEIGHTS
    save_file(tensors(load_file(str(path))), str(path))
    with pytest.raises(BackendLoadError) as info:
        load(tiny_assets, adapter_copy)
    assert str(path) in str(info.value) and "save_pretrained" in str(info.value)


def _bin_adapter(tiny_assets: TinyAssets, dst: Path) -> Path:
    shutil.copytree(tiny_assets.adapter, dst)
    tensors = load_file(str(dst / WEIGHTS))
    (dst / WEIGHTS).unlink()
    torch.save(tensors, dst / "adapter_model.bin")
    return dst


def test_a_valid_bin_adapter_still_loads(tiny_assets: TinyAssets, tmp_path: Path) -> None:
    backend = load(tiny_assets, _bin_adapter(tiny_assets, tmp_path / "bin"))
    backend.close()


@pytest.mark.parametrize("case", ["zero_bytes", "garbage", "truncated", "not_a_dict"])
def test_corrupt_adapter_model_bin_is_a_clear_error(
    tiny_assets: TinyAssets, tmp_path: Path, case: str, no_base_load: None
) -> None:
    adapter = _bin_adapter(tiny_assets, tmp_path / "bin")
    path = adapter / "adapter_model.bin"
    raw = path.read_bytes()
    if case == "not_a_dict":
        torch.save([torch.zeros(2)], path)
    else:
        path.write_bytes(
            {"zero_bytes": b"", "garbage": b"\x80\x04garbage" * 20}.get(case, raw[:300])
        )
    with pytest.raises(BackendLoadError) as info:
        load(tiny_assets, adapter)
    assert str(path) in str(info.value) and "save_pretrained" in str(info.value)


# --- adapter_config.json: valid JSON, wrong values ----------------------------------------


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("r", 0),
        ("r", -4),
        ("r", "x"),
        ("r", True),
        ("r", 4.5),
        ("r", _DROP),
        ("lora_alpha", math.nan),
        ("lora_alpha", math.inf),
        ("lora_alpha", "8"),
        ("lora_alpha", _DROP),
        ("target_modules", 5),
        ("target_modules", [1, 2]),
        ("target_modules", []),
        ("target_modules", ""),
        ("target_modules", _DROP),
        ("lora_dropout", 5),
        ("lora_dropout", "0.1"),
        ("bias", "sometimes"),
        ("use_dora", "yes"),
        ("fan_in_fan_out", 1),
        ("rank_pattern", 5),
        ("rank_pattern", {"q_proj": 0}),
        ("alpha_pattern", {"q_proj": math.nan}),
        ("modules_to_save", "lm_head"),
        ("layers_to_transform", [-1]),
        ("init_lora_weights", 3),
    ],
)
def test_wrong_config_values_are_a_clear_error_before_the_base_loads(
    tiny_assets: TinyAssets, adapter_copy: Path, field: str, value: Any, no_base_load: None
) -> None:
    set_config(adapter_copy, **{field: value})
    with pytest.raises(BackendLoadError) as info:
        load(tiny_assets, adapter_copy)
    msg = str(info.value)
    assert str(adapter_copy / CONFIG) in msg
    assert f"field '{field}" in msg
    assert "save_pretrained" in msg


# --- adapters that only partly load ------------------------------------------------------


def _adapter_for_layers(tiny_assets: TinyAssets, dst: Path, layers: int) -> Path:
    from peft import get_peft_model
    from transformers import AutoConfig, LlamaForCausalLM

    config = AutoConfig.from_pretrained(tiny_assets.base)
    config.num_hidden_layers = layers
    torch.manual_seed(1)
    with _quiet_peft():
        model = get_peft_model(LlamaForCausalLM(config), lora_config())
    model.save_pretrained(dst)
    return dst


def _edit_tensors(adapter: Path, edit: Any) -> None:
    path = adapter / WEIGHTS
    save_file(edit(load_file(str(path))), str(path))


def _three_layers(assets: TinyAssets, adapter: Path) -> None:
    shutil.rmtree(adapter)
    _adapter_for_layers(assets, adapter, 3)


def _narrow_targets(assets: TinyAssets, adapter: Path) -> None:
    set_config(adapter, target_modules=["q_proj"])


def _unknown_module(assets: TinyAssets, adapter: Path) -> None:
    key = "base_model.model.model.layers.0.self_attn.k_proj.lora_A.weight"
    _edit_tensors(adapter, lambda t: {**t, key: torch.randn(4, 64)})


def _missing_modules(assets: TinyAssets, adapter: Path) -> None:
    _edit_tensors(adapter, lambda t: {k: v for k, v in t.items() if "v_proj" not in k})
    set_config(adapter, init_lora_weights=False)


def _dora_without_magnitudes(assets: TinyAssets, adapter: Path) -> None:
    set_config(adapter, use_dora=True)


PARTIAL = {
    "three_layer_adapter_on_two_layer_base": (_three_layers, "layers.2."),
    "target_modules_narrower_than_file": (_narrow_targets, "v_proj"),
    "tensor_for_untargeted_module": (_unknown_module, "k_proj"),
    "modules_without_tensors_random_init": (_missing_modules, "random"),
    "dora_without_magnitudes": (_dora_without_magnitudes, "lora_magnitude_vector"),
}


@pytest.mark.parametrize("case", list(PARTIAL))
def test_partly_loading_adapter_is_an_error(
    tiny_assets: TinyAssets, adapter_copy: Path, case: str
) -> None:
    make, needle = PARTIAL[case]
    make(tiny_assets, adapter_copy)
    with pytest.raises(BackendLoadError) as info:
        load(tiny_assets, adapter_copy)
    msg = str(info.value)
    assert "only partly loads" in msg and str(adapter_copy) in msg
    assert needle in msg
    assert "allow_partial_adapter" in msg


def test_whole_adapters_are_not_flagged(tiny_assets: TinyAssets) -> None:
    for adapter in (tiny_assets.adapter, tiny_assets.zero_adapter):
        backend = load(tiny_assets, adapter)
        assert backend.load_health() == ()
        backend.close()


def _spec(model: dict[str, Any]) -> dict[str, Any]:
    return {
        "version": 1,
        "models": {"ft": {"kind": "hf", **model}},
        "suite": [{"name": "dkl", "kind": "delta_kl", "prompts": ["The quick", "A small"]}],
    }


def test_allow_partial_adapter_scores_it_with_a_health_error(
    tiny_assets: TinyAssets, adapter_copy: Path
) -> None:
    _narrow_targets(tiny_assets, adapter_copy)
    model = {
        "base": str(tiny_assets.base),
        "adapter": str(adapter_copy),
        "options": {"allow_partial_adapter": True},
    }
    loaded = from_dict(_spec(model))
    backend = backend_from_spec(loaded.spec.models.ft)
    try:
        suite = run(loaded, backend)
    finally:
        backend.close()  # type: ignore[attr-defined]
    errors = [h for h in suite.health if h.code == "adapter_partial_load"]
    assert len(errors) == 1 and errors[0].level == "error"
    assert "v_proj" in errors[0].message


@pytest.mark.parametrize(
    ("options", "where"),
    [
        ({"allow_partial_adapter": "yes"}, "models.ft.options.allow_partial_adapter"),
        ({"allow_partial_adapter": 1}, "models.ft.options.allow_partial_adapter"),
        ({"allow_partial": True}, "models.ft.options"),
    ],
)
def test_hf_options_are_strict(tiny_assets: TinyAssets, options: Any, where: str) -> None:
    model = {"base": str(tiny_assets.base), "adapter": str(tiny_assets.adapter), "options": options}
    with pytest.raises(SpecValidationError, match=where):
        backend_from_spec(from_dict(_spec(model)).spec.models.ft)


# --- devices -----------------------------------------------------------------------------


@pytest.mark.parametrize("device", ["cuda", "cuda:0", "cuda:7", "CUDA:1"])
def test_cuda_without_cuda_fails_at_once(
    tiny_assets: TinyAssets, device: str, no_base_load: None
) -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(BackendLoadError, match=r"torch\.cuda\.is_available\(\) is False") as info:
        load(tiny_assets, tiny_assets.adapter, device=device)
    assert "device: cpu or auto" in str(info.value)


def test_cuda_index_out_of_range_fails_at_once(tiny_assets: TinyAssets, no_base_load: None) -> None:
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    with pytest.raises(BackendLoadError, match="does not exist"):
        load(tiny_assets, tiny_assets.adapter, device=f"cuda:{torch.cuda.device_count()}")


def test_mps_without_mps_fails_at_once(tiny_assets: TinyAssets, no_base_load: None) -> None:
    if torch.backends.mps.is_available():
        pytest.skip("this machine has MPS")
    with pytest.raises(BackendLoadError, match="device: cpu or auto"):
        load(tiny_assets, tiny_assets.adapter, device="mps")


@pytest.mark.parametrize("device", ["tpu", "cpu:1", "gpu", "cuda:x", ""])
def test_unknown_devices_are_refused(
    tiny_assets: TinyAssets, device: str, no_base_load: None
) -> None:
    with pytest.raises(BackendLoadError, match="unknown device"):
        load(tiny_assets, tiny_assets.adapter, device=device)


# --- hub ids with no network -------------------------------------------------------------


def test_uncached_hub_id_fails_at_once_offline_or_not(
    tiny_assets: TinyAssets, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Even with offline mode off, sway never touches the network (no ~55 s of retries)."""
    import huggingface_hub.constants as hub_constants

    from dlm_sway.backends.registry import build_backend

    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path / "empty_hub_cache"))
    started = time.monotonic()
    with pytest.raises(BackendLoadError) as info:
        build_backend("hf", base="nobody-org/not-a-model", adapter=str(tiny_assets.adapter))
    elapsed = time.monotonic() - started
    msg = str(info.value)
    assert "'nobody-org/not-a-model'" in msg
    assert "not in the local HF cache" in msg and "never downloads" in msg
    assert "builtin:smollm2-135m-instruct" in msg and "local model directory" in msg
    assert elapsed < 10, f"took {elapsed:.0f} s"


# --- context window ----------------------------------------------------------------------


def test_hf_backend_declares_its_context_and_counts_like_the_scorer(
    hf_backend: HFDifferentialBackend,
) -> None:
    from dlm_sway.core.scoring import ContextWindow

    assert isinstance(hf_backend, ContextWindow)
    assert hf_backend.max_context_tokens() == 256  # tiny_model's max_position_embeddings
    texts = ["The quick brown fox", "", "zebra " * 30]
    expected = [len(hf_backend.tokenizer(t)["input_ids"]) for t in texts]
    assert hf_backend.count_tokens(texts) == expected


def test_prompt_longer_than_the_context_is_refused_before_scoring(
    hf_backend: HFDifferentialBackend,
) -> None:
    long_prompt = "the zebra sings " * 400
    spec = _spec({"base": "unused", "adapter": "unused"})
    spec["suite"][0]["prompts"] = ["The quick", long_prompt]
    before = hf_backend.stats.to_dict()
    with pytest.raises(SwayError) as info:
        run(from_dict(spec), hf_backend)
    msg = str(info.value)
    assert "prompts[1]" in msg and "'dkl'" in msg and "256" in msg
    assert hf_backend.stats.to_dict() == before  # nothing was scored


# --- the CLI -----------------------------------------------------------------------------


def _sway(*args: str) -> Any:
    """The real Typer app in-process; an escaping exception is a traceback for a user."""
    from typer.testing import CliRunner

    from dlm_sway.cli.app import app

    result = CliRunner().invoke(app, list(args))
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(
        result.exception
    )
    assert "Traceback" not in result.output
    return result


def _write_spec(tmp_path: Path, model: dict[str, Any]) -> Path:
    path = tmp_path / "sway.yaml"
    path.write_text(yaml.safe_dump(_spec(model)), encoding="utf-8")
    return path


def test_cli_run_on_a_corrupt_adapter_exits_2_naming_the_file(
    tiny_assets: TinyAssets, adapter_copy: Path, tmp_path: Path
) -> None:
    weights = adapter_copy / WEIGHTS
    weights.write_bytes(weights.read_bytes()[:100])
    spec = _write_spec(tmp_path, {"base": str(tiny_assets.base), "adapter": str(adapter_copy)})
    done = _sway("run", str(spec))
    assert done.exit_code == 2, done.output
    assert "error:" in done.stderr and str(weights) in done.stderr.replace("\n", "")


def test_cli_device_flags_and_fields_reach_the_device_check(
    tiny_assets: TinyAssets, tmp_path: Path
) -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    spec = _write_spec(
        tmp_path,
        {"base": str(tiny_assets.base), "adapter": str(tiny_assets.adapter), "device": "cuda"},
    )
    for args in (
        ("run", str(spec)),
        ("gate", str(spec)),
        ("check", str(tiny_assets.adapter), "--base", str(tiny_assets.base), "--device", "cuda:7"),
    ):
        done = _sway(*args)
        assert done.exit_code == 2, (args, done.output)
        assert "error:" in done.stderr, args
        assert "torch.cuda.is_available() is False" in done.stderr.replace("\n", " "), args


def test_cli_run_refuses_a_prompt_longer_than_the_context_with_exit_2(
    tiny_assets: TinyAssets, tmp_path: Path
) -> None:
    spec = _spec({"base": str(tiny_assets.base), "adapter": str(tiny_assets.adapter)})
    spec["suite"][0]["prompts"] = ["The quick", "zebra " * 20_001]
    path = tmp_path / "sway.yaml"
    path.write_text(yaml.safe_dump(spec), encoding="utf-8")
    out = tmp_path / "out.json"
    done = _sway("run", str(path), "--json", str(out))
    assert done.exit_code == 2, done.output
    err = done.stderr.replace("\n", " ")
    assert "error:" in err and "prompts[1]" in err and "at most 256 tokens" in err
    assert not out.exists()
