"""Build a tiny Llama, its tokenizer and a few LoRA adapters fully offline.

Everything here runs in-process in a few seconds on CPU so the HF backend's
invariants (views, restoration, batching) are tested against real
transformers/peft code paths rather than mocks.
"""

from __future__ import annotations

import json
import shutil
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.torch import load_file, save_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "A small model learns to predict the next word in a sentence.",
    "The weather today is sunny with a light breeze from the west.",
    "She opened the door and walked into the quiet library.",
    "Numbers like one, two, three and four are easy to count.",
    "The river flows past the old mill and into the green valley.",
    "He wrote a letter to his friend about the long journey home.",
    "Cats sleep in the sun while dogs play in the garden.",
    "The teacher asked the students to read the first chapter.",
    "Fresh bread and hot coffee make a good breakfast.",
    "The zebra astronaut sings quietly to the purple moon.",
    "Every morning the baker lights the oven before dawn.",
]

#: Distinctive text the LoRA is trained on, so the fine-tune has a real, known effect.
TRAIN_TEXT = (
    "The zebra astronaut sings quietly to the purple moon. "
    "The zebra astronaut sings quietly to the purple moon."
)

SPECIALS = ["<pad>", "<s>", "</s>", "<unk>"]


@contextmanager
def _quiet_peft() -> Iterator[None]:
    """peft 0.21 reads a property transformers 5 deprecated; keep test output clean."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")
        yield


@dataclass(frozen=True)
class TinyAssets:
    """Paths of the built artefacts (all under one temporary directory)."""

    base: Path
    adapter: Path
    zero_adapter: Path
    nan_adapter: Path
    mismatched_adapter: Path


def build_tokenizer(vocab_size: int = 384) -> PreTrainedTokenizerFast:
    """Byte-level BPE trained on :data:`CORPUS`: any text encodes, nothing maps to unk."""
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS * 4, trainer=trainer)
    bos_id = tok.token_to_id("<s>")
    # A BOS prefix like Llama's, so an empty prompt still has a position to predict from.
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos_id)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
    )


def build_model(vocab_size: int, *, hidden: int = 64) -> LlamaForCausalLM:
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        tie_word_embeddings=False,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    return LlamaForCausalLM(config).eval()


def lora_config() -> LoraConfig:
    return LoraConfig(
        r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], lora_dropout=0.0, bias="none"
    )


def train_lora(
    base: LlamaForCausalLM, tokenizer: PreTrainedTokenizerFast, out: Path, steps: int = 40
) -> None:
    """A few AdamW steps on :data:`TRAIN_TEXT`; the base module is left untouched."""
    with _quiet_peft():
        peft_model = get_peft_model(base, lora_config())
    # peft initialises B to zero; give it a start so both A and B learn quickly.
    ids = tokenizer(TRAIN_TEXT, return_tensors="pt")["input_ids"]
    params = [p for p in peft_model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=2e-2)
    peft_model.train()
    for _ in range(steps):
        loss = peft_model(input_ids=ids, labels=ids).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    peft_model.eval()
    peft_model.save_pretrained(out)
    peft_model.unload()


def _copy_adapter(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def poison_adapter(src: Path, dst: Path) -> Path:
    """Copy of ``src`` whose lora_A weights are all NaN (a diverged training run)."""
    _copy_adapter(src, dst)
    weights_path = dst / "adapter_model.safetensors"
    tensors = load_file(str(weights_path))
    poisoned = {
        k: torch.full_like(v, float("nan")) if "lora_A" in k else v for k, v in tensors.items()
    }
    save_file(poisoned, str(weights_path))
    return dst


def rewrite_adapter_config(adapter: Path, **updates: object) -> None:
    path = adapter / "adapter_config.json"
    config = json.loads(path.read_text())
    config.update(updates)
    path.write_text(json.dumps(config))


def build_tiny_assets(root: Path) -> TinyAssets:
    torch.manual_seed(0)
    tokenizer = build_tokenizer()
    vocab = len(tokenizer)
    base_dir = root / "base"
    model = build_model(vocab)
    model.save_pretrained(base_dir)
    tokenizer.save_pretrained(base_dir)

    adapter_dir = root / "adapter"
    train_lora(model, tokenizer, adapter_dir)

    # peft's default init leaves lora_B at zero: a structurally real, behaviourally no-op adapter.
    zero_dir = root / "zero_adapter"
    with _quiet_peft():
        zero = get_peft_model(build_model(vocab), lora_config())
    zero.save_pretrained(zero_dir)

    nan_dir = poison_adapter(adapter_dir, root / "nan_adapter")

    # Same targets, different hidden size: loading it onto the base is a shape mismatch.
    mismatched_dir = root / "mismatched_adapter"
    with _quiet_peft():
        other = get_peft_model(build_model(vocab, hidden=32), lora_config())
    other.save_pretrained(mismatched_dir)

    return TinyAssets(
        base=base_dir,
        adapter=adapter_dir,
        zero_adapter=zero_dir,
        nan_adapter=nan_dir,
        mismatched_adapter=mismatched_dir,
    )


def load_plain_and_peft(assets: TinyAssets) -> tuple[LlamaForCausalLM, PeftModel]:
    """Independent reference models (no sway code) for equivalence checks."""
    plain = LlamaForCausalLM.from_pretrained(assets.base).eval()
    with_adapter = LlamaForCausalLM.from_pretrained(assets.base).eval()
    with _quiet_peft():
        peft_model = PeftModel.from_pretrained(with_adapter, assets.adapter).eval()
    return plain, peft_model
