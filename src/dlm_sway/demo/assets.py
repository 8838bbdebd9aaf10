"""Paths to the assets shipped for ``sway demo``: the document, prompts, two adapters."""

from __future__ import annotations

from pathlib import Path

from dlm_sway.core.errors import SwayError

DEMO_DIR = Path(__file__).resolve().parent
DEMO_BASE = "builtin:smollm2-135m-instruct"
ADAPTERS = ("strong", "weak")


def adapter_dir(name: str) -> Path:
    path = DEMO_DIR / "adapters" / name
    if not (path / "adapter_config.json").is_file():
        raise SwayError(
            f"demo adapter {name!r} is missing at {path}; reinstall sway "
            "or regenerate it with scripts/train_demo_adapters.py"
        )
    return path


def document_path() -> Path:
    return DEMO_DIR / "data" / "document.md"


def prompts() -> list[str]:
    """The on-topic prompts the demo scores (one per line in data/prompts.txt)."""
    path = DEMO_DIR / "data" / "prompts.txt"
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise SwayError(f"demo prompts unreadable at {path}: {exc}") from None
    return [ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]


__all__ = ["ADAPTERS", "DEMO_BASE", "adapter_dir", "document_path", "prompts"]
