"""``sway check ADAPTER``: a calibrated verdict on one adapter with no spec file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape

from dlm_sway.cli._common import err_console, execute, render, user_errors, write_json
from dlm_sway.core.errors import SpecValidationError
from dlm_sway.core.result import SuiteResult, Verdict

QUICK_PROMPTS: tuple[str, ...] = (
    "The most important thing to remember is",
    "Here is a short explanation:",
    "Question: What should I know about this?\nAnswer:",
    "In summary, the main idea is",
    "A common mistake people make is",
    "The first step is to",
    "One example of this is",
    "Let me describe how it works.",
)


def infer_base(adapter: Path) -> str:
    """The base recorded by PEFT in ``adapter_config.json`` (``base_model_name_or_path``)."""
    cfg = adapter / "adapter_config.json"
    if not cfg.is_file():
        raise SpecValidationError(
            "no adapter_config.json here, so this is not a PEFT adapter directory "
            "(pass the folder that save_pretrained wrote)",
            source=str(adapter),
        )
    try:
        data = json.loads(cfg.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise SpecValidationError(
            f"unreadable adapter_config.json: {exc}", source=str(cfg)
        ) from None
    base = data.get("base_model_name_or_path") if isinstance(data, dict) else None
    if not isinstance(base, str) or not base:
        raise SpecValidationError(
            "adapter_config.json has no base_model_name_or_path; pass --base",
            source=str(cfg),
        )
    return base


def check_spec(
    *, base: str, adapter: str, prompts: list[str], runs: int, dtype: str, device: str
) -> dict[str, Any]:
    return {
        "version": 1,
        "models": {
            "ft": {"kind": "hf", "base": base, "adapter": adapter, "dtype": dtype, "device": device}
        },
        "suite": [
            {"name": "null_baseline", "kind": "null_adapter", "runs": runs},
            {"name": "divergence", "kind": "delta_kl", "prompts": prompts},
            {"name": "ablation", "kind": "adapter_ablation", "prompts": prompts},
        ],
    }


def banner(suite: SuiteResult) -> tuple[str, str]:
    """(colour, one line) summarising the delta_kl verdict, the suite's headline check."""
    dkl = next((p for p in suite.probes if p.kind == "delta_kl"), None)
    if dkl is None or dkl.raw is None:
        return "magenta", "no verdict: the divergence probe did not run (see the report)"
    z = f"{dkl.z_score:+.1f}σ" if dkl.z_score is not None else "uncalibrated"
    headline = str(dkl.evidence.get("headline", ""))
    if dkl.verdict == Verdict.PASS:
        if dkl.z_score is None:
            return "yellow", f"above threshold, uncalibrated: mean divergence {dkl.raw:.3g}"
        return "green", f"above noise: the adapter moves the model {z} beyond random adapters"
    if headline == "real but negligible":
        return "red", (
            f"negligible, indistinguishable from noise in practice: mean divergence "
            f"{dkl.raw:.2g} nats is far below what matters, though its direction is not "
            f"random ({z})"
        )
    if dkl.z_score is not None and dkl.z_score >= 1.0:
        return "yellow", f"marginal: {z} vs random adapters — not enough evidence of an effect"
    return "red", f"indistinguishable from noise: {z} vs random adapters of the same size"


def check_cmd(
    adapter: Annotated[Path, typer.Argument(help="PEFT LoRA adapter directory.")],
    base: Annotated[
        str | None,
        typer.Option(help="Base model (dir, .gguf, builtin:NAME). Default: adapter_config.json."),
    ] = None,
    prompts_file: Annotated[
        Path | None, typer.Option("--prompts", help="File with one prompt per line.")
    ] = None,
    runs: Annotated[int, typer.Option(min=1, max=200, help="Number of null adapters.")] = 10,
    dtype: Annotated[str, typer.Option(help="auto | fp32 | bf16 | fp16")] = "auto",
    device: Annotated[str, typer.Option(help="auto | cpu | cuda | mps")] = "auto",
    json_out: Annotated[str | None, typer.Option("--json", "-j", help="Write JSON here.")] = None,
) -> None:
    """Quick calibrated verdict: is this adapter's effect beyond random adapters of its size?"""
    from dlm_sway.suite.loader import from_dict

    with user_errors():
        if base is None:
            base = infer_base(adapter)
            err_console.print(f"[cyan](inferred base model: {escape(base)})[/cyan]")
        prompts = list(QUICK_PROMPTS)
        if prompts_file is not None:
            try:
                lines = prompts_file.read_text(encoding="utf-8").splitlines()
            except OSError as exc:
                raise SpecValidationError(
                    f"cannot read prompts: {exc}", source=str(prompts_file)
                ) from None
            prompts = [ln.strip() for ln in lines if ln.strip()]
            if not prompts:
                raise SpecValidationError("no prompts in file", source=str(prompts_file))
        spec = check_spec(
            base=base,
            adapter=str(adapter.resolve()),
            prompts=prompts,
            runs=runs,
            dtype=dtype,
            device=device,
        )
        loaded = from_dict(spec, source=f"sway check {adapter}")
        quiet = json_out == "-"
        suite, score = execute(loaded, show_progress=not quiet)
        if json_out:
            write_json(suite, score, json_out)
    if not quiet:
        colour, text = banner(suite)
        err_console.print(f"[bold {colour}]{escape(text)}[/bold {colour}]")
        render(suite, score)


__all__ = ["QUICK_PROMPTS", "banner", "check_cmd", "check_spec", "infer_base"]
