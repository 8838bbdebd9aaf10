"""kind: two_model — a full fine-tune judged with the same views as an adapter."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from finetune_kinds import train_full  # noqa: E402

from dlm_sway.backends import hf_weights  # noqa: E402
from dlm_sway.backends.registry import build_backend  # noqa: E402
from dlm_sway.core.errors import BackendLoadError, SpecValidationError, ViewError  # noqa: E402
from dlm_sway.core.scoring import (  # noqa: E402
    ConstructedNullBackend,
    FullDistributions,
    PreflightCheckable,
    ScalableDifferentialBackend,
)

PROMPTS = ["The zebra astronaut", "The quick brown fox", "Fresh bread and"]


@pytest.fixture(scope="module")
def full_dir(tiny_assets: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    # The final norm is frozen: a tensor the fine-tune left unchanged.
    return train_full(tiny_assets.base, tmp_path_factory.mktemp("full") / "ft", frozen="model.norm")


def _two(base: Path, full_dir: Path, dtype: str) -> Any:
    return build_backend(
        "two_model",
        base=str(base),
        finetuned=str(full_dir),
        dtype=dtype,
        device="cpu",
        batch_size=2,
    )


@pytest.fixture(scope="module")
def two(tiny_assets: Any, full_dir: Path) -> Iterator[Any]:
    backend = _two(tiny_assets.base, full_dir, "fp32")
    yield backend
    backend.close()


def _full(view: Any) -> np.ndarray[Any, Any]:
    return np.stack([d.logprobs for d in view.next_token_full_batch(PROMPTS)])


def _states(backend: Any) -> list[dict[str, Any]]:
    return [
        {k: v.detach().clone() for k, v in m.state_dict().items()}
        for m in (backend._base_model, backend._ft_model)
    ]


def _unchanged(backend: Any, saved: list[dict[str, Any]]) -> bool:
    models = (backend._base_model, backend._ft_model)
    return all(
        all(torch.equal(m.state_dict()[k], s[k]) for k in s)
        for m, s in zip(models, saved, strict=True)
    )


def test_protocols(two: Any) -> None:
    for proto in (ScalableDifferentialBackend, ConstructedNullBackend, PreflightCheckable):
        assert isinstance(two, proto)
    with two.as_base() as view:
        assert isinstance(view, FullDistributions)
    assert two.null_constructions == ("norm_matched", "permuted")
    assert two.preflight_finite_check()[0]


def test_views_match_the_checkpoints(two: Any, tiny_assets: Any, full_dir: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_assets.base)
    for path, opener in ((tiny_assets.base, two.as_base), (full_dir, two.as_finetuned)):
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
        with torch.no_grad():
            ref = np.stack(
                [
                    model(**tok(p, return_tensors="pt")).logits[0, -1].double().log_softmax(-1)
                    for p in PROMPTS
                ]
            )
        with opener() as v:
            np.testing.assert_allclose(_full(v), ref, atol=1e-5)


def test_scaled_zero_is_base_and_one_is_ft(two: Any) -> None:
    with two.as_base() as v:
        base = _full(v)
    with two.as_finetuned() as v:
        ft = _full(v)
    assert np.abs(base - ft).max() > 0.05
    with two.as_scaled_adapter(0.0) as v:
        np.testing.assert_array_equal(_full(v), base)
    with two.as_scaled_adapter(1.0) as v:
        np.testing.assert_allclose(_full(v), ft, atol=1e-5)


def test_only_changed_tensors_are_slots_and_nulls_match_their_norms(two: Any) -> None:
    keys = {s.key for s in two.weight_slots()}
    assert "model.norm.weight" not in keys  # frozen in training: no null noise there
    assert "model.layers.0.self_attn.q_proj.weight" in keys
    norms = two.adapter_norms()
    for slot in two.weight_slots():
        change = hf_weights.null_delta(slot, 7, "norm_matched", 1.0)
        assert hf_weights.frobenius(change) == pytest.approx(norms[slot.key], rel=1e-5)
        assert torch.equal(change, hf_weights.null_delta(slot, 7, "norm_matched", 1.0))
        assert not torch.equal(change, hf_weights.null_delta(slot, 8, "norm_matched", 1.0))


def test_nulls_deterministic_and_weights_never_written(two: Any) -> None:
    saved = _states(two)
    with two.as_null_adapter(3, construction="norm_matched") as v:
        a = _full(v)
    two.instrumentation.cache.clear()
    two._live_scorer().full_instr.cache.clear()
    with two.as_null_adapter(3, construction="norm_matched") as v:
        b = _full(v)
    with two.as_null_adapter(3, construction="permuted") as v:
        c = _full(v)
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - c).max() > 1e-4
    with pytest.raises(RuntimeError, match="boom"), two.as_scaled_adapter(0.5) as v:
        v.next_token_dist("The quick")
        raise RuntimeError("boom")
    assert _unchanged(two, saved)
    with two.as_base() as v:  # no hook left behind: the base view is the base again
        assert v.next_token_dist("The quick").logprobs.shape[0] > 0


def test_init_scale_is_refused_and_custom_lora_nulls_too(two: Any) -> None:
    with pytest.raises(ViewError, match="norm_matched or permuted"):
        two.as_null_adapter(0)
    with pytest.raises(ViewError, match="LoRA"):
        two.null_view(0, lambda s, g: (s.a, s.b), view_id="x")


def test_cache_identity_tracks_checkpoint_contents(
    tiny_assets: Any, full_dir: Path, two: Any, tmp_path: Path
) -> None:
    other = train_full(tiny_assets.base, tmp_path / "other", steps=3)
    again = build_backend("two_model", base=str(tiny_assets.base), finetuned=str(other))
    try:
        assert again.cache_identity() != two.cache_identity()
    finally:
        again.close()


def test_mismatched_architecture_is_a_load_error(tiny_assets: Any, tmp_path: Path) -> None:
    from tiny_model import build_model

    small = tmp_path / "small"
    build_model(384, hidden=32).save_pretrained(small)
    shutil.copy(tiny_assets.base / "tokenizer.json", small / "tokenizer.json")
    with pytest.raises(BackendLoadError, match="shapes|not the same architecture"):
        build_backend("two_model", base=str(tiny_assets.base), finetuned=str(small))


@pytest.mark.parametrize(
    ("fields", "source"),
    [
        ({"kind": "two_model", "base": "b"}, "models.ft.finetuned"),
        ({"kind": "two_model", "base": "b", "finetuned": "f", "adapter": "a"}, "models.ft.adapter"),
        ({"kind": "hf", "base": "b", "adapter": "a", "finetuned": "f"}, "models.ft.finetuned"),
    ],
)
def test_spec_mistakes_name_the_field(fields: dict[str, str], source: str) -> None:
    from dlm_sway.suite.build import backend_options
    from dlm_sway.suite.spec import ModelSpec

    with pytest.raises(SpecValidationError) as info:
        backend_options(ModelSpec(**fields))
    assert source in str(info.value)


def test_bf16_on_cpu_states_the_bases_floor_and_matches_a_plain_cast(
    two: Any, tiny_assets: Any, full_dir: Path
) -> None:
    """A half dtype on CPU is never silent for a full fine-tune either: the base's drift
    from fp32 is a health line, and the cast weights equal ``.to(bf16)`` of both."""
    from transformers import AutoModelForCausalLM

    half = _two(tiny_assets.base, full_dir, "bf16")
    try:
        (line,) = [c for c in half.load_health() if c.code == "dtype_floor"]
        assert line.level in ("info", "warn") and "bf16 on CPU" in line.message
        assert "JS ≤" in line.message and "fp32's" in line.message
        for mine, source in ((half._base_model, tiny_assets.base), (half._ft_model, full_dir)):
            plain = AutoModelForCausalLM.from_pretrained(str(source), dtype=torch.float32)
            plain.to(torch.bfloat16)
            theirs = plain.state_dict()
            assert all(torch.equal(v, theirs[k]) for k, v in mine.state_dict().items())
        with half.as_finetuned() as view:
            assert np.isfinite(view.next_token_full("The zebra astronaut").logprobs).all()
    finally:
        half.close()
    assert not [c for c in two.load_health() if c.code == "dtype_floor"]  # fp32: no floor
