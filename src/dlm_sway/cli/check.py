"""``sway check ADAPTER``: a calibrated verdict on one adapter with no spec file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.markup import escape

from dlm_sway.cli._common import (
    announce,
    err_console,
    execute,
    gate_policy,
    render,
    user_errors,
)
from dlm_sway.cli.run import AdaptersOpt, HtmlOpt, TraceOpt
from dlm_sway.core.errors import SpecValidationError, SwayError

if TYPE_CHECKING:  # imported in the functions that need them: keeps `sway --help` instant
    from dlm_sway.core.result import SuiteResult
    from dlm_sway.suite.loader import LoadedSpec

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
    """(colour, one line) summarising the delta_kl verdict, the suite's headline check.

    Read from the result's typed verdict and headline (the judge's words), so the
    banner never says less or more than the report does.
    """
    from dlm_sway.core.result import Verdict

    dkl = next((p for p in suite.probes if p.kind == "delta_kl"), None)
    if dkl is None or dkl.raw is None:
        return "magenta", "no verdict: the divergence probe did not run (see the report)"
    z = f"{dkl.z_score:+.1f}σ" if dkl.z_score is not None else "uncalibrated"
    if dkl.verdict == Verdict.PASS:
        if dkl.z_score is None:
            return "yellow", f"above threshold, uncalibrated: mean divergence {dkl.raw:.3g}"
        return "green", f"above noise: the adapter moves the model {z} beyond random adapters"
    if dkl.headline == "not calibrated":
        return "magenta", (
            "no verdict: the null adapters could not be measured, so no claim about noise "
            "can be made (see the report)"
        )
    if dkl.headline == "real but negligible":
        return "red", (
            f"negligible, indistinguishable from noise in practice: mean divergence "
            f"{dkl.raw:.2g} nats is far below what matters, though its direction is not "
            f"random ({z})"
        )
    if dkl.verdict == Verdict.WARN:
        return "yellow", (
            f"marginal: {z} vs random adapters — a real effect, but below the bar "
            "(see the report for how many nulls would reach it)"
        )
    if dkl.headline == "indistinguishable from noise" and dkl.z_score is None:
        return "red", (
            f"indistinguishable from noise: mean divergence {dkl.raw:.2g} nats "
            "(the adapter changes nothing measurable)"
        )
    if dkl.z_score is None:
        return (
            "red",
            f"below threshold, uncalibrated: mean divergence {dkl.raw:.3g} ({dkl.headline})",
        )
    if dkl.headline == "below the numerical noise floor":
        return "red", (
            f"indistinguishable from noise: mean divergence {dkl.raw:.2g} nats is within "
            "the base model's own numerical jitter"
        )
    return "red", f"indistinguishable from noise: {z} vs random adapters of the same size"


def check_cmd(
    adapter: Annotated[
        Path | None, typer.Argument(help="PEFT LoRA adapter directory (or use --adapters).")
    ] = None,
    base: Annotated[
        str | None,
        typer.Option(help="Base model (dir, .gguf, builtin:NAME). Default: adapter_config.json."),
    ] = None,
    prompts_file: Annotated[
        Path | None, typer.Option("--prompts", help="File with one prompt per line.")
    ] = None,
    runs: Annotated[
        int,
        typer.Option(
            min=2, max=200, help="Number of null adapters (at least 2: one null has no spread)."
        ),
    ] = 10,
    dtype: Annotated[str, typer.Option(help="auto | fp32 | bf16 | fp16")] = "auto",
    device: Annotated[str, typer.Option(help="auto | cpu | cuda | mps")] = "auto",
    json_out: Annotated[str | None, typer.Option("--json", "-j", help="Write JSON here.")] = None,
    html_out: HtmlOpt = None,
    trace: TraceOpt = None,
    adapters: AdaptersOpt = None,
) -> None:
    """Quick calibrated verdict: is this adapter's effect beyond random adapters of its size?

    Exit 0 with the verdict whatever it is; exit 2 on bad input, or when nothing was
    judged (the divergence and ablation probes both could not run).
    """
    with user_errors():
        from dlm_sway.cli.outputs import check_outputs, input_files, write_outputs
        from dlm_sway.core.gate import decide
        from dlm_sway.suite.loader import from_dict

        if adapters:
            if adapter is not None:
                raise SpecValidationError(
                    "give the adapter either as ADAPTER or with --adapters, not both "
                    "(add it as one more --adapters value)"
                )
            if trace is not None:
                raise SpecValidationError("--trace records one run; not with --adapters")
            from dlm_sway.suite.many_adapters import expand_adapters

            adapter = expand_adapters(adapters)[0].path
        if adapter is None:
            raise SpecValidationError(
                "no adapter: pass ADAPTER (a PEFT adapter folder) or --adapters 'out/checkpoint-*'"
            )
        if base is None:
            base = infer_base(adapter)
            err_console.print(f"[cyan](inferred base model: {escape(base)})[/cyan]")
        prompts = list(QUICK_PROMPTS) if prompts_file is None else read_prompts(prompts_file)
        spec = check_spec(
            base=base,
            adapter=str(adapter.resolve()),
            prompts=prompts,
            runs=runs,
            dtype=dtype,
            device=device,
        )
        loaded = from_dict(spec, source=f"sway check {adapter}")
        inputs = [
            *input_files("adapter", adapter),
            *input_files("base model", base),
            *input_files("prompts file", prompts_file),
        ]
        if adapters:
            _check_many(loaded, adapters, json_out, html_out, inputs)
            return
        outputs = check_outputs(
            [("--json", json_out, "json"), ("--html", html_out, "html")], inputs=inputs
        )
        quiet = any(out.to_stdout for out in outputs)
        suite, score = execute(loaded, show_progress=not quiet, trace_path=trace)
        decision = decide(suite, score, gate_policy(loaded))
        write_outputs(outputs, suite, score, announce=announce)
        if not quiet:
            colour, text = banner(suite)
            err_console.print(f"[bold {colour}]{escape(text)}[/bold {colour}]")
            render(suite, score)
        if decision.nothing_judged:
            raise SwayError(decision.summary())


def _check_many(
    loaded: LoadedSpec,
    adapters: list[str],
    json_out: str | None,
    html_out: str | None,
    inputs: list[tuple[str, Path]],
) -> None:
    """``check --adapters``: every adapter's banner after the reports and the table."""
    from dlm_sway.cli.many import run_adapters

    runs, decisions = run_adapters(
        loaded,
        adapters,
        requested=[("--json", json_out, "json"), ("--html", html_out, "html")],
        weights=loaded.weights,
        policy=gate_policy(loaded),
        extra_inputs=inputs,
    )
    for run in runs:
        colour, text = banner(run.suite)
        err_console.print(
            f"[bold {colour}]{escape(run.ref.label)}: {escape(text)}[/bold {colour}]",
            soft_wrap=True,
        )
    blind = [r.ref.label for r, d in zip(runs, decisions, strict=True) if d.nothing_judged]
    if blind:
        raise SwayError(f"nothing was judged for {', '.join(blind)} (see the reports)")


PROMPTS_FIX = "pass a UTF-8 text file with one prompt per line"


def read_prompts(path: Path) -> list[str]:
    """The prompts of a ``--prompts`` file: one per non-blank line, or a SpecValidationError."""
    where = str(path)
    if path.is_dir():
        raise SpecValidationError(f"is a folder; {PROMPTS_FIX}", source=where)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise SpecValidationError(f"prompts file not found; {PROMPTS_FIX}", source=where) from None
    except OSError as exc:
        raise SpecValidationError(
            f"cannot read prompts: {exc.strerror or exc}; {PROMPTS_FIX}", source=where
        ) from None
    if b"\x00" in data:
        raise SpecValidationError(
            f"looks like a binary file (it holds NUL bytes); {PROMPTS_FIX}", source=where
        )
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise SpecValidationError(
            f"is not UTF-8 text (byte {exc.start}: {exc.reason}); {PROMPTS_FIX} — re-save it "
            "as UTF-8",
            source=where,
        ) from None
    prompts: list[str] = []
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        control = next((c for c in stripped if (ord(c) < 32 and c != "\t") or c == "\x7f"), None)
        if control is not None:
            raise SpecValidationError(
                f"line {number} holds the control character {control!r}, so this is not a "
                f"prompts file; {PROMPTS_FIX}",
                source=where,
            )
        if stripped:
            prompts.append(stripped)
    if not prompts:
        raise SpecValidationError(f"no prompts in file (it is empty); {PROMPTS_FIX}", source=where)
    return prompts


__all__ = ["QUICK_PROMPTS", "banner", "check_cmd", "check_spec", "infer_base", "read_prompts"]
