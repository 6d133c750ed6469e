"""Tiny random teachers built with transformers' own classes, the references of the distillation tests."""

from __future__ import annotations

import torch
import transformers

# GQA (2 query heads per key/value head), 4 layers, a vocabulary that is no power of two
TINY = dict(vocab_size=97, hidden_size=32, intermediate_size=48, num_hidden_layers=4, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=64)
# name -> (transformers class prefix, config fields beyond TINY)
TEACHERS = {
    # Llama 3's scaled RoPE, q/k/v/o biases
    "llama": ("Llama", dict(head_dim=8, attention_bias=True, rope_parameters={
        "rope_type": "llama3", "rope_theta": 500.0, "factor": 4.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
        "original_max_position_embeddings": 16})),
    "qwen3": ("Qwen3", dict(head_dim=8, tie_word_embeddings=True)),
    "qwen2": ("Qwen2", {}),
    "qwen2-sliding": ("Qwen2", dict(use_sliding_window=True, sliding_window=5, max_window_layers=2)),
    "mistral": ("Mistral", dict(head_dim=8, sliding_window=5)),
}


@torch.no_grad()
def tiny_teacher(name: str, seed: int = 0) -> torch.nn.Module:
    """A ``TEACHERS[name]`` teacher with every weight random (matrices N(0, 0.3), vectors N(1, 0.1), so norms, biases
    and q/k norms all matter), in eval mode."""
    torch.manual_seed(seed)
    prefix, fields = TEACHERS[name]
    config = getattr(transformers, f"{prefix}Config")(**TINY, **fields)
    model = getattr(transformers, f"{prefix}ForCausalLM")(config)
    for parameter in model.parameters():
        if parameter.dim() > 1:
            parameter.normal_(0.0, 0.3)
        else:
            parameter.normal_(1.0, 0.1)
    return model.eval()


def batch(seed: int = 0, rows: int = 2, length: int = 12, vocab: int = TINY["vocab_size"]):
    """``(input_ids [rows, length], attention_mask)``: row 0 left-padded by 3 tokens."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (rows, length), generator=generator)
    mask = torch.ones_like(ids)
    mask[0, :3] = 0
    return ids, mask
