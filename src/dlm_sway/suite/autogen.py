"""Build a calibrated suite from a training document (``sway autogen``).

The document's own sentences and questions become the prompts, so every probe
asks about what the adapter was trained on. The null adapter comes first (it
calibrates everything after it) and the λ ablation last (the most views).
The output is commented YAML a user can read and edit.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from dlm_sway import __version__
from dlm_sway.core.sections import Document
from dlm_sway.probes.null_adapter import DEFAULT_RUNS
from dlm_sway.suite.artifacts import Artifacts, find_artifacts

MAX_KL_PROMPTS = 16
MAX_ABLATION_PROMPTS = 6
MAX_COLLAPSE_PROMPTS = 4
CLUSTER_MIN_PROMPTS = 20
_SENTENCE = re.compile(r"(?<=[.!?])\s+(?=[A-Z*_\"'(])")
_MARKUP = re.compile(r"[*_`#>]|\[([^\]]*)\]\([^)]*\)")


@dataclass
class Plan:
    """The generated suite plus why each probe is there (or is not)."""

    suite: list[dict[str, Any]] = field(default_factory=list)
    intents: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def add(self, entry: dict[str, Any], intent: str) -> None:
        self.suite.append(entry)
        self.intents.append(intent)


def sentence_openers(text: str, *, limit: int) -> list[str]:
    """The first ~60% of each sentence (≥ 4 words): prompts the document itself continues."""
    out: list[str] = []
    for para in _blocks(text):
        flat = _MARKUP.sub(lambda m: m.group(1) or "", " ".join(para.split()))
        for sentence in _SENTENCE.split(flat):
            words = sentence.split()
            if len(words) < 6:
                continue
            cut = max(4, round(len(words) * 0.6))
            opener = " ".join(words[:cut]).rstrip(",;:")
            if opener not in out:
                out.append(opener)
            if len(out) >= limit:
                return out
    return out


_LIST_ITEM = re.compile(r"^\s*(?:[-*+]|\d+[.)])\s+")


def _blocks(text: str) -> list[str]:
    """Paragraphs, with every list item its own block (never one run-on prompt)."""
    blocks: list[str] = []
    for para in text.split("\n\n"):
        lines = para.splitlines()
        if any(_LIST_ITEM.match(ln) for ln in lines):
            item: list[str] = []
            for ln in lines:
                if _LIST_ITEM.match(ln):
                    if item:
                        blocks.append(" ".join(item))
                    item = [_LIST_ITEM.sub("", ln)]
                else:
                    item.append(ln)
            if item:
                blocks.append(" ".join(item))
        else:
            blocks.append(para)
    return blocks


def _spread(pools: list[list[str]], limit: int) -> list[str]:
    """Round-robin over per-section pools so every section is represented."""
    out: list[str] = []
    depth = 0
    while len(out) < limit and any(depth < len(p) for p in pools):
        for pool in pools:
            if depth < len(pool) and pool[depth] not in out:
                out.append(pool[depth])
                if len(out) >= limit:
                    break
        depth += 1
    return out


def plan_suite(
    document: Document, artifacts: Artifacts | None = None, *, here: Path | None = None
) -> Plan:
    """Choose probes and prompts for ``document``; record deliberate omissions.

    ``artifacts`` (see :func:`find_artifacts`) add the no-model training checks;
    ``here`` is the spec's folder, for the paths named in comments.
    """
    plan = Plan()
    _training_checks(plan, artifacts or Artifacts(), here or Path.cwd())
    questions = [p.prompt for s in document.sections for p in s.probes]
    prose_pools = [
        sentence_openers(s.content, limit=8) for s in document.sections if s.kind == "prose"
    ]
    pool = _spread([questions, *prose_pools], 40)
    kl_prompts = pool[:MAX_KL_PROMPTS]
    has_prose = any(s.kind == "prose" for s in document.sections)
    has_prefs = any(s.preferences for s in document.sections)
    content_sections = [s for s in document.sections if s.content.strip()]

    null_entry: dict[str, Any] = {
        "name": "null_baseline",
        "kind": "null_adapter",
        "runs": DEFAULT_RUNS,
    }
    plan.add(
        null_entry,
        "random adapters of the same structure and size: the yardstick for every later probe "
        "(calibration_drift is not calibrated: random adapters of a trained size regress "
        "almost no fact, so its null has no spread and would only cost time)",
    )
    if kl_prompts:
        plan.add(
            {"name": "topic_shift", "kind": "delta_kl", "prompts": kl_prompts},
            "does the adapter move next-token distributions on its own material beyond noise?",
        )
    else:
        plan.skipped.append(("delta_kl", "the document has no sentences long enough to prompt"))
    if len(content_sections) >= 2:
        plan.add(
            {
                "name": "section_attribution",
                "kind": "section_internalization",
                "max_prose_chars": 1200,
            },
            "which sections of the document moved the model (own lift minus the others')",
        )
    else:
        plan.skipped.append(("section_internalization", "needs at least 2 sections"))
    if questions:
        plan.add(
            {"name": "memorised_or_generalised", "kind": "paraphrase_invariance"},
            "does the trained answer survive a reworded question?",
        )
    else:
        plan.skipped.append(("paraphrase_invariance", "no Q/A pairs in the document"))
    if has_prefs:
        plan.add(
            {"name": "preferences", "kind": "preference_flip"},
            "did preference training flip the base model's wrong choices?",
        )
    else:
        plan.skipped.append(("preference_flip", "no preference triples in the document"))
    plan.add(
        {"name": "general_knowledge", "kind": "calibration_drift", "items_limit": 60},
        "did fitting the document break general knowledge (built-in fact pack)?",
    )
    _generation_probes(plan, document, questions=bool(questions))
    if has_prose:
        plan.add(
            {"name": "general_english", "kind": "external_perplexity"},
            "did the adapter raise perplexity on unrelated everyday English?",
        )
    else:
        plan.skipped.append(("external_perplexity", "no prose sections"))
    if kl_prompts:
        plan.add(
            {
                "name": "context_persistence",
                "kind": "prompt_collapse",
                "prompts": kl_prompts[:MAX_COLLAPSE_PROMPTS],
            },
            "does the adapter's influence survive a long unrelated context?",
        )
    if len(pool) >= CLUSTER_MIN_PROMPTS:
        plan.add(
            {"name": "topic_specificity", "kind": "cluster_kl", "prompts": pool},
            "is the shift concentrated on the document's topics rather than everywhere?",
        )
    else:
        plan.skipped.append(
            ("cluster_kl", f"needs ≥ {CLUSTER_MIN_PROMPTS} prompts, the document gave {len(pool)}")
        )
    if kl_prompts:
        plan.add(
            {
                "name": "scale_response",
                "kind": "adapter_ablation",
                "prompts": kl_prompts[:MAX_ABLATION_PROMPTS],
            },
            "does the effect grow smoothly with the LoRA scale λ? (last: the most views)",
        )
    _drop_unloadable(plan, document)
    from dlm_sway.probes.base import registry

    reg = registry()
    # Written out so the YAML shows what is calibrated (calibration_drift is on request only).
    null_entry["calibrate_kinds"] = sorted(
        {
            e["kind"]
            for e in plan.suite
            if reg[e["kind"]].calibrated and not reg[e["kind"]].null_on_request
        }
    )
    return plan


def _training_checks(plan: Plan, found: Artifacts, here: Path) -> None:
    """gradient_ghost / training_drift when their inputs exist: they read files only, run in
    milliseconds, and need no path in the spec (they look next to models.ft.adapter)."""
    if found.weights is not None:
        opt = found.optimizer_state
        source = (
            f"and the optimizer state {_rel(str(opt), here)}"
            if opt is not None
            else "(no optimizer.pt / training_state.pt saved, so weights only)"
        )
        plan.add(
            {"name": "undertrained", "kind": "gradient_ghost"},
            f"was the adapter trained enough? reads {_rel(str(found.weights), here)} {source} "
            "before any model loads",
        )
    else:
        plan.skipped.append(("gradient_ghost", "no local adapter weights to read"))
    log = found.trainer_state or found.dlm_logs
    if log is not None:
        plan.add(
            {"name": "loss_curve", "kind": "training_drift"},
            f"was the loss curve healthy (no NaN, divergence, spikes, over-fit)? reads "
            f"{_rel(str(log), here)}",
        )
    else:
        plan.skipped.append(
            (
                "training_drift",
                "no trainer_state.json next to the adapter, in its parent or a checkpoint-*/, "
                "and no .dlm store logs",
            )
        )


def _generation_probes(plan: Plan, document: Document, *, questions: bool) -> None:
    """What the fine-tune *writes*: each probe that fits this document, else why not
    (the loader's own load_problems decide the rest in :func:`_drop_unloadable`)."""
    from dlm_sway.probes.base import registry
    from dlm_sway.suite.autogen_tools import tool_cases

    reg = registry()
    cases = tool_cases(document)
    wanted: list[tuple[str, dict[str, Any], str, str | None]] = [
        (
            "leakage",
            {"name": "recital", "kind": "leakage"},
            "does the fine-tune recite its training text beyond random adapters? "
            "(intent generalize: PASS = no recital; set intent: memorize to require one)",
            None,
        ),
        (
            "style_fingerprint",
            {"name": "house_style", "kind": "style_fingerprint"},
            "does the fine-tune's prose read like the document (sentence shape, vocabulary, "
            "punctuation, function words)?",
            None,
        ),
        (
            "adapter_revert",
            {"name": "reworded_questions", "kind": "adapter_revert"},
            "does the fine-tune keep its trained answers when the question is reworded?",
            None if questions else "no Q/A pairs in the document to reword",
        ),
        (
            "multi_turn_coherence_decay",
            {"name": "dialogue_hold", "kind": "multi_turn_coherence_decay"},
            "does the adapter's effect hold over a dialogue, turn by turn?",
            None if questions else "no questions in the document to open a dialogue with",
        ),
        (
            "tool_use_fidelity",
            {"name": "tool_calls", "kind": "tool_use_fidelity", "cases": cases},
            f"are the fine-tune's tool calls still valid JSON matching the tool's schema? "
            f"({len(cases)} call(s) from the document: same tool name, same argument keys)",
            None if cases else "the document holds no JSON tool-call examples",
        ),
    ]
    for kind, entry, intent, unfit in wanted:
        if kind not in reg:
            plan.skipped.append((kind, "not available in this sway installation"))
        elif unfit is not None:
            plan.skipped.append((kind, unfit))
        else:
            plan.add(entry, intent)


def _drop_unloadable(plan: Plan, document: Document) -> None:
    """Entries the loader would refuse here (too few triples, a missing extra, ...) become
    deliberate omissions, so the generated spec always loads."""
    from dlm_sway.probes.base import build_probe

    kept = [(e, why) for e, why in zip(plan.suite, plan.intents, strict=True)]
    plan.suite.clear()
    plan.intents.clear()
    for entry, intent in kept:
        probe, spec = build_probe(entry)
        problems = (
            [] if entry["kind"] == "null_adapter" else probe.load_problems(spec, document=document)
        )
        if problems:
            plan.skipped.append((entry["kind"], problems[0]))
        else:
            plan.add(entry, intent)


def _rel(target: str, start: Path) -> str:
    """Relative to the spec's folder (the loader resolves it there), so the spec moves to
    CI or another checkout together with what it names; absolute only when no relative
    path exists (another drive)."""
    if target.startswith("builtin:"):
        return target
    path = Path(target).expanduser().resolve()
    try:
        return Path(os.path.relpath(path, start.resolve())).as_posix()
    except ValueError:
        return str(path)


def build_spec(
    document: Document, *, base: str, adapter: str, out_dir: Path
) -> tuple[dict[str, Any], Plan]:
    """The spec dict (paths relative to ``out_dir``, where the YAML will live)."""
    plan = plan_suite(document, find_artifacts(adapter, document), here=out_dir)
    spec: dict[str, Any] = {
        "version": 1,
        "dlm_source": _rel(document.source, out_dir),
        "models": {"ft": {"kind": "hf", "base": base, "adapter": _rel(adapter, out_dir)}},
        "defaults": {"seed": 0, "top_k": 256},
        "suite": plan.suite,
    }
    return spec, plan


def _dump(value: Any) -> str:
    return yaml.safe_dump(value, sort_keys=False, allow_unicode=True, width=100)


def render_yaml(spec: dict[str, Any], plan: Plan, *, document: Document) -> str:
    """Commented YAML: a header, one intent comment per probe, the skipped probes."""
    lines = [
        f"# sway suite generated by `sway autogen` {__version__} on "
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
        f"# from {document.source} ({len(document.sections)} sections)",
        "# Edit freely; `sway run --dry-run THIS_FILE` validates it without loading a model.",
        "# Order matters: null_adapter calibrates only the probes after it.",
        "# Paths are relative to this file's folder: move it together with what it names.",
        "",
    ]
    head = {k: v for k, v in spec.items() if k != "suite"}
    lines.append(_dump(head).rstrip())
    lines.append("suite:")
    for entry, intent in zip(spec["suite"], plan.intents, strict=True):
        lines.append(f"  # {intent}")
        body = _dump([entry]).rstrip().splitlines()
        lines.extend("  " + ln for ln in body)
    if plan.skipped:
        lines.append("")
        lines.append("# not included:")
        lines.extend(f"#   {kind}: {why}" for kind, why in plan.skipped)
    return "\n".join(lines) + "\n"


__all__ = [
    "Plan",
    "build_spec",
    "plan_suite",
    "render_yaml",
    "sentence_openers",
]
