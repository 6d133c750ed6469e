"""A tiny Llama teacher saved with memlm's byte tokenizer, and distillation recipes around it, for the recipe
tests."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from memlm.tokenization import byte_level_tokenizer
from tests.training.test_trainer import text_corpus


def save_teacher(path: Path, num_layers: int = 4, seed: int = 0) -> Path:
    """A random byte-level Llama (GQA, 4 layers, width 32) saved with its tokenizer in ``path``."""
    torch.manual_seed(seed)
    tokenizer = byte_level_tokenizer()
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=num_layers,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                         pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                         bos_token_id=tokenizer.bos_token_id)
    LlamaForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def distill_recipe(tmp_path: Path, teacher: Path, **sections) -> dict:
    """A recipe of a few steps per stage on a small random-word corpus; ``sections`` update its sections."""
    recipe = {
        "output_dir": str(tmp_path / "run"),
        "teacher": str(teacher),
        "student": {"keep_attention": [3], "mixer": "gated_deltanet"},
        "data": {"source": "text", "files": [str(text_corpus(tmp_path / "corpus.txt", num_docs=24))], "seq_len": 32},
        "stage1": {"steps": 4, "lr": 3e-3, "batch_size": 2},
        "stage2": {"steps": 4, "lr": 1e-3, "batch_size": 2},
        "eval": {"heldout_rows": 2, "batch_size": 2},
        "logging": {"trackers": []},
    }
    for name, values in sections.items():
        recipe[name] = {**recipe.get(name, {}), **values} if isinstance(values, dict) else values
    return recipe
