"""Seed everything once per run and say honestly how reproducible the run is."""

from __future__ import annotations

import os
import random
import sys

import numpy as np

from dlm_sway.core.result import DeterminismReport


def seed_everything(seed: int) -> DeterminismReport:
    """Seed python, numpy and (if installed) torch; classify the determinism we get.

    ``strict`` on CUDA with deterministic algorithms, ``best_effort`` on CPU
    (bit-identical only on the same BLAS build), ``loose`` if torch refused.
    """
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch = sys.modules.get("torch")  # only seed torch if a backend already loaded it
    if torch is None:
        return DeterminismReport("best_effort", seed, ("torch not loaded: python/numpy seeded",))
    torch.manual_seed(seed)
    notes: list[str] = []
    if torch.cuda.is_available():
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.cuda.manual_seed_all(seed)
        try:
            torch.use_deterministic_algorithms(True, warn_only=True)
            torch.backends.cudnn.benchmark = False
        except RuntimeError as exc:
            return DeterminismReport("loose", seed, (f"deterministic algorithms refused: {exc}",))
        return DeterminismReport("strict", seed, tuple(notes))
    notes.append("CPU: bit-identical results need the same BLAS build and thread count")
    return DeterminismReport("best_effort", seed, tuple(notes))


__all__ = ["seed_everything"]
