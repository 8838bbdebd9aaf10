"""Load a training document from disk, whatever its format.

``.dlm`` files go to :mod:`dlm_sway.core.doc_dlm`; everything else (``.md``,
``.markdown``, ``.txt``, no extension…) is read as markdown by
:mod:`dlm_sway.core.doc_markdown`. Pure Python plus PyYAML: no torch, no numpy.
"""

from __future__ import annotations

from pathlib import Path

from dlm_sway.core.doc_dlm import parse_dlm
from dlm_sway.core.doc_markdown import normalise_newlines, parse_markdown
from dlm_sway.core.errors import SpecValidationError
from dlm_sway.core.sections import Document

DLM_SUFFIX = ".dlm"


def read_document_text(path: str | Path) -> str:
    """Strict UTF-8 text with LF newlines and no BOM; errors name the file."""
    p = Path(path).expanduser()
    if not p.exists():
        raise SpecValidationError(
            "training document not found; check the path (relative paths in a spec are "
            "resolved against the spec's folder)",
            source=str(p),
        )
    if not p.is_file():
        raise SpecValidationError("training document must be a file, not a folder", source=str(p))
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise SpecValidationError(f"cannot read the file: {exc.strerror}", source=str(p)) from exc
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SpecValidationError(
            f"not valid UTF-8 (first bad byte at offset {exc.start}); re-save the file as UTF-8",
            source=str(p),
        ) from exc
    return normalise_newlines(text)


def load_document(path: str | Path) -> Document:
    """Parse a training document into sections, dispatching on the file extension.

    For ``.dlm`` files the trained adapter is looked up in the dlm store
    (``$DLM_HOME``, default ``~/.dlm``) and set as ``Document.adapter_path``.
    """
    p = Path(path).expanduser()
    text = read_document_text(p)
    if p.suffix.lower() == DLM_SUFFIX:
        return parse_dlm(text, source=str(p))
    return parse_markdown(text, source=str(p))


__all__ = ["DLM_SUFFIX", "load_document", "read_document_text"]
