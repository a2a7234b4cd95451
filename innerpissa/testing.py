"""Tiny random-weight models and a tiny trained BPE tokenizer, built in-process for fast offline tests."""

from __future__ import annotations

from pathlib import Path

import functools
import json

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoModelForCausalLM, LlamaConfig, PreTrainedModel, PreTrainedTokenizerFast, Qwen2Config

from . import DATA_DIR
from .models import prepare

CHATML_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
ARCHS = ("llama", "qwen2")


def _corpus() -> list[str]:
    base = DATA_DIR
    lines = [
        "Pretend you're an honest person making statements about the world.",
        "Pretend you're a dishonest person making statements about the world.",
        "Should you take this action?",
    ] + ["My choice: Yes", "My choice: No", "Yes yes No no", "Yes. No."] * 200  # make Yes/No single tokens
    lines += json.loads((base / "contrastive_suffixes" / "all_truncated_outputs.json").read_text())
    lines += json.loads((base / "contrastive_suffixes" / "true_facts.json").read_text())[:100]
    lines += (base / "daily_dilemmas" / "dilemma.csv").read_text().splitlines()[:200]
    return lines


@functools.cache
def _tokenizer_json(vocab_size: int) -> str:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=SPECIAL, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(_corpus(), trainer)
    return tok.to_str()


def tiny_tokenizer(vocab_size: int = 1024) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained on the package's own text, with a ChatML chat template."""
    tok = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(_tokenizer_json(vocab_size)),
        bos_token="<|im_start|>", eos_token="<|im_end|>", pad_token="<|endoftext|>",
    )
    tok.chat_template = CHATML_TEMPLATE
    return tok


def tiny_model(
    arch: str = "llama", vocab_size: int = 1024, hidden: int = 64, layers: int = 4, seed: int = 0
) -> tuple[PreTrainedModel, PreTrainedTokenizerFast]:
    """A random-weight decoder LM (`llama` or `qwen2`, the latter with q/k/v biases) + tiny tokenizer, fp32."""
    common = dict(
        vocab_size=vocab_size, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512, tie_word_embeddings=True,
    )
    if arch == "llama":
        config = LlamaConfig(**common)
    elif arch == "qwen2":
        config = Qwen2Config(**common)
    else:
        raise ValueError(f"unknown tiny arch {arch!r}; choose one of {ARCHS}")
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    # Random init gives near-uniform outputs; scale weights up so steering has visible effects.
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.mul_(3.0)
    tok = tiny_tokenizer(vocab_size)
    model.config.innerpissa_spec = f"tiny-{arch}-{seed}"
    prepare(model, tok)
    return model, tok


def save_tiny_model(path: Path | str, arch: str = "llama", **sizes: int) -> tuple[PreTrainedModel, PreTrainedTokenizerFast]:
    """`tiny_model(arch, **sizes)` saved as a transformers directory at `path` (what the CLI loads); returns it."""
    model, tok = tiny_model(arch, **sizes)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return model, tok
