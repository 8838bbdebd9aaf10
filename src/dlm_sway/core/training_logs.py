"""Read the loss curves trainers write, without importing any training library.

Two formats:

* HF Trainer / TRL ``trainer_state.json``: ``log_history`` is a list of dicts;
  train entries carry ``loss`` (plus ``learning_rate``, ``grad_norm``, ``epoch``),
  eval entries ``eval_loss``, and the closing summary ``train_loss`` (an average,
  not a point of the curve, so it is ignored). Python's ``json`` writes NaN as the
  bare token ``NaN``, which is read back as a float on purpose: a NaN loss is a
  finding, not a parse error.
* a ``.dlm`` store's ``logs/train-*.jsonl``: one JSON object per line; ``type:
  "step"`` records hold ``step``, ``loss``, ``lr``, ``grad_norm``, ``val_loss``.
  Files are read in name order (run id, then start time); a later run's value for
  the same step wins (a resumed run). A file is flushed line by line, so only its
  *last* line may be cut off by a crash: that line is skipped and counted, any
  other unreadable line is an error naming the file and line.

Every problem is a :class:`TrainingLogError` naming the file.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from dlm_sway.core.errors import SwayError

Series = tuple[tuple[int, float], ...]
_CHECKPOINT = re.compile(r"checkpoint-(\d+)")


class TrainingLogError(SwayError):
    """A training log exists but cannot be read as one (the message names the file)."""


@dataclass(frozen=True)
class TrainingLog:
    """One training run's logged curves, sorted by step (non-finite values kept)."""

    source: str
    format: Literal["trainer_state", "dlm_jsonl"]
    train_loss: Series
    eval_loss: Series = ()
    learning_rate: Series = ()
    grad_norm: Series = ()
    global_step: int | None = None
    files: tuple[str, ...] = ()
    notes: tuple[str, ...] = field(default=())


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _load_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise TrainingLogError(f"{path}: training log not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise TrainingLogError(f"{path}: cannot read training log: {exc}") from None
    except json.JSONDecodeError as exc:
        raise TrainingLogError(
            f"{path}: not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg}); "
            "the trainer may have been killed while writing it — use a checkpoint's copy"
        ) from None


def read_trainer_state(path: str | Path) -> TrainingLog:
    """Parse an HF Trainer / TRL ``trainer_state.json``."""
    path = Path(path)
    data = _load_json(path)
    history = data.get("log_history") if isinstance(data, dict) else None
    if not isinstance(history, list):
        raise TrainingLogError(
            f"{path}: no 'log_history' list, so this is not a trainer_state.json written by "
            "transformers' Trainer (Trainer.save_state or a checkpoint-*/ folder holds one)"
        )
    columns: dict[str, dict[int, float]] = {
        "loss": {},
        "eval_loss": {},
        "learning_rate": {},
        "grad_norm": {},
    }
    for i, entry in enumerate(history):
        if not isinstance(entry, dict):
            raise TrainingLogError(f"{path}: log_history[{i}] must be an object, got {entry!r}")
        step = entry.get("step")
        if not isinstance(step, int) or isinstance(step, bool) or step < 0:
            raise TrainingLogError(
                f"{path}: log_history[{i}].step must be a non-negative integer, got {step!r}"
            )
        for key, column in columns.items():
            if key not in entry or entry[key] is None:
                continue
            if not _number(entry[key]):
                raise TrainingLogError(
                    f"{path}: log_history[{i}].{key} must be a number, got {entry[key]!r}"
                )
            column[step] = float(entry[key])
    global_step = data.get("global_step")
    return TrainingLog(
        source=str(path),
        format="trainer_state",
        train_loss=_series(columns["loss"]),
        eval_loss=_series(columns["eval_loss"]),
        learning_rate=_series(columns["learning_rate"]),
        grad_norm=_series(columns["grad_norm"]),
        global_step=global_step if isinstance(global_step, int) else None,
        files=(str(path),),
    )


def _series(column: dict[int, float]) -> Series:
    return tuple(sorted(column.items()))


def dlm_log_files(logs_dir: Path) -> list[Path]:
    return sorted(p for p in logs_dir.glob("train-*.jsonl") if p.is_file())


def read_dlm_logs(logs_dir: str | Path) -> TrainingLog:
    """Merge the ``train-*.jsonl`` files of a ``.dlm`` store's ``logs/`` folder."""
    logs_dir = Path(logs_dir)
    files = dlm_log_files(logs_dir)
    if not files:
        raise TrainingLogError(f"{logs_dir}: no train-*.jsonl files (a .dlm store's logs/)")
    columns: dict[str, dict[int, float]] = {"loss": {}, "val_loss": {}, "lr": {}, "grad_norm": {}}
    notes: list[str] = []
    for path in files:
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise TrainingLogError(f"{path}: cannot read training log: {exc}") from None
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                if number == len(lines) and number > 1:
                    notes.append(f"{path.name}: last line cut off (skipped)")
                    continue
                raise TrainingLogError(
                    f"{path}:{number}: not valid JSON ({exc.msg}); a .dlm training log holds "
                    "one JSON object per line"
                ) from None
            if not isinstance(record, dict) or record.get("type") != "step":
                continue
            step = record.get("step")
            if not isinstance(step, int) or isinstance(step, bool):
                raise TrainingLogError(f"{path}:{number}: 'step' must be an integer, got {step!r}")
            for key, column in columns.items():
                value = record.get(key)
                if value is None:
                    continue
                if not _number(value):
                    raise TrainingLogError(
                        f"{path}:{number}: {key!r} must be a number, got {value!r}"
                    )
                column[step] = float(value)
    steps = [s for s, _ in _series(columns["loss"])]
    return TrainingLog(
        source=str(logs_dir),
        format="dlm_jsonl",
        train_loss=_series(columns["loss"]),
        eval_loss=_series(columns["val_loss"]),
        learning_rate=_series(columns["lr"]),
        grad_norm=_series(columns["grad_norm"]),
        global_step=steps[-1] if steps else None,
        files=tuple(str(p) for p in files),
        notes=tuple(notes),
    )


def checkpoint_step(path: Path) -> int | None:
    m = _CHECKPOINT.fullmatch(path.name)
    return int(m.group(1)) if m else None


def newest_checkpoint(folder: Path, marker: str) -> Path | None:
    """The ``checkpoint-N/`` with the largest N under ``folder`` that holds ``marker``."""
    if not folder.is_dir():
        return None
    found = [
        (step, d)
        for d in folder.iterdir()
        if (step := checkpoint_step(d)) is not None and (d / marker).is_file()
    ]
    return max(found)[1] if found else None


def trainer_state_candidates(adapter_dir: Path) -> list[Path]:
    """Where Trainer leaves ``trainer_state.json`` around a saved adapter, in that order:
    the adapter folder, its parent (``output_dir`` after ``save_state``), and the newest
    ``checkpoint-*/`` of either."""
    out: list[Path] = []
    for folder in (adapter_dir, adapter_dir.parent):
        if (folder / "trainer_state.json").is_file():
            out.append(folder / "trainer_state.json")
    for folder in (adapter_dir, adapter_dir.parent):
        ckpt = newest_checkpoint(folder, "trainer_state.json")
        if ckpt is not None:
            out.append(ckpt / "trainer_state.json")
    return list(dict.fromkeys(p.resolve() for p in out))


def discover(adapter_dir: str | None, dlm_store: str | None) -> tuple[TrainingLog | None, str]:
    """The most complete log around the run's adapter or in its ``.dlm`` store.

    Among ``trainer_state.json`` candidates the one with the largest ``global_step``
    wins (ties: the first found). Returns ``(None, where we looked)`` when none exists.
    """
    looked: list[str] = []
    if adapter_dir is not None:
        folder = Path(adapter_dir)
        candidates = trainer_state_candidates(folder)
        looked.append(
            f"trainer_state.json in {folder}, {folder.parent} and their checkpoint-*/ folders"
        )
        logs = [read_trainer_state(p) for p in candidates]
        if logs:
            return max(logs, key=lambda lg: lg.global_step or 0), ""
    if dlm_store is not None:
        logs_dir = Path(dlm_store) / "logs"
        looked.append(f"train-*.jsonl in {logs_dir}")
        if dlm_log_files(logs_dir):
            return read_dlm_logs(logs_dir), ""
    if not looked:
        return None, "the run has no adapter directory and no .dlm store to look in"
    return None, "no training log found (looked for " + "; ".join(looked) + ")"


def finite(series: Series) -> bool:
    return all(math.isfinite(v) for _, v in series)


__all__ = [
    "TrainingLog",
    "TrainingLogError",
    "checkpoint_step",
    "discover",
    "newest_checkpoint",
    "read_dlm_logs",
    "read_trainer_state",
    "trainer_state_candidates",
]
