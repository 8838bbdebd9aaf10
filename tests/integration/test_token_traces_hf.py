"""Per-token traces on the real HF code path (tiny in-process model).

The HTML report shades each token of a scored section by the adapter's log-prob
lift. That only means something if the pieces are the text the model scored, one
per token id, and the values are exactly ft − base of the rolling log-probs the
probe computed anyway (no extra forward).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from dlm_sway.core.scoring import TokenPieces
from dlm_sway.core.sections import Document, Section

pytestmark = pytest.mark.hf

TEXTS = [
    "The zebra astronaut sings quietly to the purple moon.",
    "  Naïve café — 🚀 launches\n\ttwice, at 12:30!  ",
]
SECTIONS = (
    Section(id="zebra", kind="prose", title="Zebra", content=TEXTS[0] * 3),
    Section(id="baker", kind="prose", title="Baker", content=TEXTS[1] * 2),
)


@pytest.mark.parametrize("text", TEXTS)
def test_pieces_cover_the_text_one_per_scored_token(hf_backend: Any, text: str) -> None:
    with hf_backend.as_base() as view:
        assert isinstance(view, TokenPieces)
        pieces = view.token_pieces(text)
        rolling = view.rolling_logprob(text)
    assert len(pieces) == rolling.num_tokens
    assert "".join(pieces) == text


def test_section_probe_traces_are_ft_minus_base_per_token(hf_backend: Any) -> None:
    from dlm_sway.suite.loader import from_dict
    from dlm_sway.suite.runner import run

    loaded = from_dict(
        {
            "models": {"ft": {"kind": "hf", "base": "tiny", "adapter": "tiny-adapter"}},
            "suite": [{"name": "sis", "kind": "section_internalization"}],
        },
        document=Document(source="<two sections>", sections=SECTIONS),
    )
    result = run(loaded, hf_backend).by_name("sis")
    assert [t.label for t in result.tokens] == ["Zebra (prose)", "Baker (prose)"]
    for trace, section in zip(result.tokens, SECTIONS, strict=True):
        assert "".join(trace.pieces) == section.content
        with hf_backend.as_base() as view:
            base = view.rolling_logprob(section.content).logprobs
        with hf_backend.as_finetuned() as view:
            ft = view.rolling_logprob(section.content).logprobs
        assert trace.values[0] is None
        got = np.asarray(trace.values[1:], dtype=np.float64)
        np.testing.assert_allclose(got, ft.astype(np.float64) - base, atol=1e-4)
        assert np.abs(got).max() > 0  # the trained adapter moves some token
