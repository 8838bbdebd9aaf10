"""Training artefacts around an adapter, found the way the no-model probes find them.

``sway autogen`` adds ``gradient_ghost`` / ``training_drift`` only when their
inputs exist, and names them in the spec's comments.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from dlm_sway.core.sections import Document


@dataclass(frozen=True)
class Artifacts:
    """Training artefacts found next to the adapter (absolute paths; None: not found)."""

    adapter: Path | None = None
    weights: Path | None = None
    trainer_state: Path | None = None
    optimizer_state: Path | None = None
    dlm_logs: Path | None = None


def find_artifacts(adapter: str | Path | None, document: Document) -> Artifacts:
    """What ``gradient_ghost`` and ``training_drift`` will find at run time, looked up
    the same way (around the adapter folder, and in a ``.dlm`` document's store)."""
    from dlm_sway.backends.adapter_files import WEIGHT_FILES
    from dlm_sway.core.dlm_store import dlm_store
    from dlm_sway.core.training_logs import dlm_log_files, trainer_state_candidates
    from dlm_sway.probes.gradient_ghost import find_optimizer_state

    logs = None
    if isinstance(document.metadata.get("dlm_id"), str):
        candidate = dlm_store(document) / "logs"
        logs = candidate if dlm_log_files(candidate) else None
    if adapter is None or str(adapter).startswith("builtin:") or not Path(adapter).is_dir():
        return Artifacts(dlm_logs=logs)
    folder = Path(adapter).expanduser().resolve()
    states = trainer_state_candidates(folder)
    return Artifacts(
        adapter=folder,
        weights=next((folder / n for n in WEIGHT_FILES if (folder / n).is_file()), None),
        trainer_state=states[0] if states else None,
        optimizer_state=find_optimizer_state(folder),
        dlm_logs=logs,
    )


__all__ = ["Artifacts", "find_artifacts"]
