"""Reading version 1 run files: typed fields lifted out of v1's ``evidence`` dict.

Version 1 kept the null block, the weight and null_adapter's statistics in
``evidence``; version 2 types them. A v1 file is upgraded into v2's shape and then
validated like any v2 file, and errors name the v1 path the value came from.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from dlm_sway.core.result import SCHEMA_VERSION, Direction

#: Categories of the kinds sway shipped while it wrote version 1 (frozen: a v1 file's
#: categories must not depend on what is registered when it is re-read).
V1_CATEGORIES: Mapping[str, str] = {
    "adapter_ablation": "ablation",
    "calibration_drift": "calibration",
    "cluster_kl": "adherence",
    "delta_kl": "adherence",
    "external_perplexity": "calibration",
    "null_adapter": "baseline",
    "paraphrase_invariance": "attribution",
    "preference_flip": "attribution",
    "prompt_collapse": "adherence",
    "section_internalization": "attribution",
}
#: What v1's score used for kinds it did not know.
V1_FALLBACK_CATEGORY = "adherence"
V1_PRIMARY_RANK = "rank_1.00"
V1_OPTED_OUT = "probe opted out"
#: Typed field → where a v1 file kept it (named in errors about a v1 file).
_V1_SOURCES = {
    "null": ("evidence", "null"),
    "weight": ("evidence", "weight"),
    "calibration": ("evidence", "null_stats"),
}


def upgrade_v1(data: Mapping[str, Any]) -> dict[str, Any]:
    """A version 1 document in version 2's shape: typed fields lifted out of ``evidence``.

    Only well-formed-looking parts are lifted; whatever is lifted is then validated
    like any v2 field (errors name the v1 ``evidence`` path it came from).
    """
    out = dict(data)
    out["schema_version"] = SCHEMA_VERSION
    probes = data.get("probes")
    if isinstance(probes, list):
        out["probes"] = [_upgrade_probe(p) if isinstance(p, Mapping) else p for p in probes]
    return out


def _upgrade_probe(probe: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(probe)
    kind = probe.get("kind")
    out["category"] = V1_CATEGORIES.get(kind, V1_FALLBACK_CATEGORY) if isinstance(kind, str) else ""
    evidence = probe.get("evidence")
    if not isinstance(evidence, Mapping):
        return out
    if "weight" in evidence:
        out["weight"] = evidence["weight"]
    null = evidence.get("null")
    if isinstance(null, Mapping) and null:
        harm = null.get("direction") == "harm"
        out["direction"] = Direction.HARM.value if harm else Direction.EFFECT.value
        threshold = null.get("harm_z_threshold" if harm else "z_threshold")
        out["null"] = {
            "construction": null.get("construction") or "",
            "method": null.get("method") or "t_prediction",
            "k": null.get("k", 0),
            "samples": [],
            "z_threshold": 3.0 if threshold is None else threshold,
            "log_scale": null.get("log_scale") is True,
            "non_negative": True,
            "statistic": null.get("statistic"),
            "p_empirical": null.get("p_empirical"),
            "degenerate": null.get("degenerate"),
            "z_by_rank": evidence.get("z_by_rank") or {},
        }
    if kind == "null_adapter" and isinstance(evidence.get("null_stats"), Mapping):
        out["calibration"] = _v1_calibration(evidence)
    return out


def _v1_calibration(evidence: Mapping[str, Any]) -> dict[str, Any]:
    """v1 ``null_stats`` (+ ``null_stats_by_rank``, ``skipped_kinds``) as a calibration."""
    by_rank = evidence.get("null_stats_by_rank")
    if not isinstance(by_rank, Mapping) or not by_rank:
        by_rank = {V1_PRIMARY_RANK: evidence["null_stats"]}
    primary = V1_PRIMARY_RANK if V1_PRIMARY_RANK in by_rank else next(iter(by_rank))
    failures: dict[str, Any] = {}
    skipped = evidence.get("skipped_kinds")
    for entry in skipped if isinstance(skipped, list) else []:
        # v1 listed opt-outs and failures together; only a failure is a missing null.
        if isinstance(entry, Mapping) and entry.get("name"):
            reason = entry.get("reason")
            if reason != V1_OPTED_OUT:
                failures[str(entry["name"])] = reason if isinstance(reason, str) else ""
    return {
        "by_rank": dict(by_rank),
        "primary": primary,
        "failures": failures,
        "from_cache": evidence.get("from_cache") is True,
        "cache_file": None,
    }


def v1_loc(loc: tuple[int | str, ...]) -> tuple[int | str, ...]:
    """A validation error's location in the upgraded document → where the v1 file held it."""
    if len(loc) >= 3 and loc[0] == "probes" and loc[2] in _V1_SOURCES:
        field = str(loc[2])
        rest = loc[3:]
        if field == "null" and rest[:1] == ("z_by_rank",):
            return (*loc[:2], "evidence", *rest)
        if field == "calibration":
            rest = ()  # by_rank / primary are v1's null_stats(_by_rank) as a whole
        return (*loc[:2], *_V1_SOURCES[field], *rest)
    return loc


__all__ = ["V1_CATEGORIES", "upgrade_v1", "v1_loc"]
