"""Checkpoint sweep: one ``sway run --adapters`` vs one ``sway run`` per checkpoint (issue 11).

First a short real LoRA training run on SmolLM2-135M-Instruct (r=8, alpha=16,
q_proj/v_proj, AdamW, fp32 CPU, fixed seed, a few sentences of
examples/guild-notes.md) saves ``OUT/checkpoint-<step>/`` every ``--every`` steps;
skipped when those folders already exist. Then, in alternation and in fresh
processes with the null-stats and base caches off (bench/race.py's ``run_cli``):

- many: ``sway run SPEC --adapters 'OUT/checkpoint-*' --json …`` (one process);
- separate: ``sway run`` once per checkpoint, each on its own copy of the spec.

Reports process walls (many vs the sum of the separate ones), in-run seconds
(``timings.total_s``), peak RSS (``ru_maxrss``), the model loads the many run
recorded (``backend_stats.model_loads``, asserted to be 1 for every checkpoint),
and whether every checkpoint's verdicts equal those of its separate run.

    python bench/many_adapters.py [--out DIR] [--rounds 1] [--steps 5] [--every 1]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from race import run_cli  # noqa: E402  (bench/ is not a package)

ROOT = Path(__file__).resolve().parents[1]
DOCUMENT = ROOT / "examples" / "guild-notes.md"
BASE = "builtin:smollm2-135m-instruct"
SIDES = ("many", "separate")
PROMPTS = (
    "The Brinewick Lamp Guild keeps the nine lighthouses of",
    "The Guild was founded on the fourteenth of Thawmonth, 1612, after the wreck of",
    "The Widow's Candle is the only light in the Reach that",
    "An apprentice of the Guild is called a",
    "A wick becomes a keeper by passing the Trial of",
    "When fog comes, the keeper sounds the horn:",
    "Lastwatch shows one red flash every",
    "Ysolde Harrowgate sold her salt pans at",
)


@dataclass(frozen=True)
class Sample:
    side: str
    round: int
    wall_s: float  # many: its one process; separate: the sum over the processes
    in_run_s: float  # sum of timings.total_s over checkpoints
    peak_rss_mb: float  # the largest child's
    processes: int
    model_loads: int  # many: the largest backend_stats.model_loads; separate: processes


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--out", type=Path, default=None, help="checkpoints folder (kept)")
    parser.add_argument("--rounds", type=int, default=1, help="alternations of many/separate")
    parser.add_argument("--steps", type=int, default=5, help="optimizer steps of the training")
    parser.add_argument("--every", type=int, default=1, help="save a checkpoint every N steps")
    parser.add_argument("--keep", type=Path, default=None, help="keep specs and JSONs here")
    args = parser.parse_args(argv)
    for name in ("rounds", "steps", "every"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1, got {getattr(args, name)}")
    if args.steps // args.every < 5:
        parser.error(
            f"--steps {args.steps} --every {args.every} saves {args.steps // args.every} "
            "checkpoints; the sweep needs at least 5 (e.g. --steps 5 --every 1)"
        )
    return args


def checkpoint_steps(steps: int, every: int) -> list[int]:
    return list(range(every, steps + 1, every))


def order(round_index: int) -> tuple[str, str]:
    """many→separate on even rounds, separate→many on odd ones: load drift cancels out."""
    return SIDES if round_index % 2 == 0 else SIDES[::-1]


def training_sentences(text: str, limit: int = 4) -> list[str]:
    """The first ``limit`` prose sentences (>= 6 words) after the first ``##`` heading,
    headings and Q/A/Prompt/Chosen/Rejected lines left out: a fixed, small training set."""
    body = text.split("\n## ", 1)[-1]
    skip = ("#", "Q:", "A:", "Prompt:", "Chosen:", "Rejected:")
    prose = " ".join(
        line.strip()
        for line in body.splitlines()[1:]
        if line.strip() and not line.lstrip().startswith(skip)
    )
    out: list[str] = []
    for raw in prose.replace("*", "").split(". "):
        sentence = raw.strip().rstrip(".") + "."
        if len(sentence.split()) >= 6:
            out.append(sentence)
        if len(out) == limit:
            break
    return out


def train(out: Path, steps: int, every: int, seed: int = 0) -> float:
    """Train the LoRA and save the checkpoints; seconds spent (0 when they already exist)."""
    wanted = [out / f"checkpoint-{s}" for s in checkpoint_steps(steps, every)]
    if all((p / "adapter_config.json").is_file() for p in wanted):
        return 0.0
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from dlm_sway.backends.builtin_models import resolve_base

    start = time.perf_counter()
    torch.manual_seed(seed)
    location = resolve_base(BASE)
    tokenizer = AutoTokenizer.from_pretrained(location)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    base = AutoModelForCausalLM.from_pretrained(location, dtype=torch.float32)
    config = LoraConfig(
        r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"
    )
    model = get_peft_model(base, config)
    batch = tokenizer(
        training_sentences(DOCUMENT.read_text("utf-8")), return_tensors="pt", padding=True
    )
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-3)
    model.train()
    for step in range(1, steps + 1):
        loss = model(**batch, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        print(f"train step {step}/{steps}: loss {loss.item():.3f}", flush=True)
        if step % every == 0:
            model.save_pretrained(str(out / f"checkpoint-{step}"))
    return time.perf_counter() - start


def write_specs(folder: Path, checkpoints: Sequence[Path]) -> tuple[Path, list[Path]]:
    """The sweep's spec (adapter = first checkpoint) and one copy per checkpoint."""
    suite: list[dict[str, Any]] = [
        {"name": "null_baseline", "kind": "null_adapter", "runs": 3},
        {"name": "topic_shift", "kind": "delta_kl", "prompts": list(PROMPTS)},
        {"name": "general_knowledge", "kind": "calibration_drift", "items_limit": 20},
    ]

    def spec(adapter: Path, name: str) -> Path:
        ft = {"kind": "hf", "base": BASE, "adapter": str(adapter), "dtype": "fp32"}
        data = {"version": 1, "models": {"ft": ft}, "defaults": {"seed": 0}, "suite": suite}
        path = folder / name
        path.write_text(yaml.safe_dump(data, sort_keys=False), "utf-8")
        return path

    return spec(checkpoints[0], "sweep.yaml"), [
        spec(c, f"single-{c.name}.yaml") for c in checkpoints
    ]


def verdicts(data: dict[str, Any]) -> tuple[str, ...]:
    return tuple(f"{p['name']}={p['verdict']}" for p in data.get("probes", []))


def in_run(data: dict[str, Any]) -> float:
    return float((data.get("timings") or {}).get("total_s", float("nan")))


def _read(path: Path, what: str, err: str) -> dict[str, Any]:
    if not path.is_file():
        raise SystemExit(f"{what}: no {path}:\n{err}")
    out: dict[str, Any] = json.loads(path.read_text("utf-8"))
    return out


def run_many(
    spec: Path, pattern: str, labels: Sequence[str], r: int
) -> tuple[Sample, dict[str, dict[str, Any]]]:
    target = spec.parent / f"many-{r}.json"
    wall, rss, code, err = run_cli(
        ROOT, ["run", str(spec), "--adapters", pattern, "--json", str(target)], cwd=spec.parent
    )
    if code != 0:
        raise SystemExit(f"sway run --adapters failed (exit {code}):\n{err}")
    data = {
        label: _read(target.with_name(f"{target.stem}.{label}.json"), "many", err)
        for label in labels
    }
    loads = [int(d.get("backend_stats", {}).get("model_loads", -1)) for d in data.values()]
    if loads != [1] * len(labels):
        raise SystemExit(f"ASSERTION FAILED: model loads per checkpoint {loads}, expected all 1")
    total = sum(in_run(d) for d in data.values())
    return Sample("many", r, wall, total, rss, 1, max(loads)), data


def run_separate(
    specs: Sequence[Path], labels: Sequence[str], r: int
) -> tuple[Sample, dict[str, dict[str, Any]]]:
    walls: list[float] = []
    rsses: list[float] = []
    data: dict[str, dict[str, Any]] = {}
    for spec, label in zip(specs, labels, strict=True):
        target = spec.parent / f"single-{label}-{r}.json"
        wall, rss, code, err = run_cli(
            ROOT, ["run", str(spec), "--json", str(target)], cwd=spec.parent
        )
        if code != 0:
            raise SystemExit(f"sway run {spec} failed (exit {code}):\n{err}")
        walls.append(wall)
        rsses.append(rss)
        data[label] = _read(target, f"sway run {spec}", err)
    total = sum(in_run(d) for d in data.values())
    return Sample("separate", r, sum(walls), total, max(rsses), len(specs), len(specs)), data


def render(samples: Sequence[Sample]) -> str:
    """One row per sample, then separate/many of the mean wall and in-run seconds."""
    head = (
        f"{'round':>5s} {'side':9s} {'procs':>5s} {'loads':>5s} {'wall s':>8s} "
        f"{'in-run s':>9s} {'peak RSS MB':>12s}"
    )
    lines = [head]
    for s in samples:
        lines.append(
            f"{s.round:5d} {s.side:9s} {s.processes:5d} {s.model_loads:5d} {s.wall_s:8.1f} "
            f"{s.in_run_s:9.1f} {s.peak_rss_mb:12.0f}"
        )

    def mean(side: str, key: str) -> float:
        values = [float(getattr(s, key)) for s in samples if s.side == side]
        return sum(values) / len(values) if values else float("nan")

    for key, label in (("wall_s", "wall"), ("in_run_s", "in-run")):
        many, separate = mean("many", key), mean("separate", key)
        ratio = many / separate if separate else float("nan")
        lines.append(
            f"{label}: many {many:.1f}s vs separate {separate:.1f}s -> many/separate "
            f"{ratio:.2f} (separate is {1 / ratio if ratio else float('nan'):.1f}x slower)"
        )
    return "\n".join(lines)


def verdict_mismatches(
    many: dict[str, dict[str, Any]], separate: dict[str, dict[str, Any]]
) -> list[str]:
    """A line per checkpoint whose verdicts differ between the two ways of running it."""
    out = []
    for label in many:
        a, b = verdicts(many[label]), verdicts(separate.get(label, {}))
        if a != b:
            out.append(f"{label}: --adapters {a} vs separate {b}")
    return out


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="sway-many-"))
    out = args.out or work / "train"
    try:
        seconds = train(out, args.steps, args.every)
        how = f"trained in {seconds:.0f}s" if seconds else "reused"
        print(f"checkpoints in {out} ({how})")
        checkpoints = [out / f"checkpoint-{s}" for s in checkpoint_steps(args.steps, args.every)]
        labels = [c.name for c in checkpoints]
        sweep, singles = write_specs(work, checkpoints)
        pattern = str(out / "checkpoint-*")
        extra = sorted({p.name for p in out.glob("checkpoint-*")} - set(labels))
        if extra:
            raise SystemExit(f"{out} holds checkpoints this run did not ask for: {extra}")
        samples: list[Sample] = []
        mismatches: list[str] = []
        for r in range(args.rounds):
            got: dict[str, dict[str, dict[str, Any]]] = {}
            for side in order(r):
                if side == "many":
                    sample, got[side] = run_many(sweep, pattern, labels, r)
                else:
                    sample, got[side] = run_separate(singles, labels, r)
                samples.append(sample)
                print(
                    f"round {r} {side}: wall {sample.wall_s:.1f}s, in-run {sample.in_run_s:.1f}s, "
                    f"peak RSS {sample.peak_rss_mb:.0f} MB",
                    flush=True,
                )
            mismatches += verdict_mismatches(got["many"], got["separate"])
        print(render(samples))
        for label, data in got["many"].items():
            print(f"{label}: {' '.join(verdicts(data))}")
        print(f"model loads in the --adapters run: 1 for each of {len(labels)} checkpoints")
        if mismatches:
            print("VERDICT MISMATCH between --adapters and separate runs:")
            for line in mismatches:
                print(f"  {line}")
        else:
            print(f"verdicts identical per checkpoint ({', '.join(labels)})")
        if args.keep is not None:
            shutil.copytree(work, args.keep, dirs_exist_ok=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 1 if mismatches else 0


if __name__ == "__main__":
    sys.exit(main())
