"""Tiny decoders of every family that memlm.cola supports."""

import pytest
import torch
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
)

from memlm import MemLMConfig, MemLMForCausalLM

SIZES = dict(vocab_size=61, hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=128, pad_token_id=0, eos_token_id=None,
             bos_token_id=None)


def tiny_decoder(name: str):
    torch.manual_seed(0)
    if name == "llama":
        model = LlamaForCausalLM(LlamaConfig(**SIZES))
    elif name == "qwen2-sliding":
        model = Qwen2ForCausalLM(Qwen2Config(**SIZES, use_sliding_window=True, sliding_window=5, max_window_layers=2))
    elif name == "qwen3":
        model = Qwen3ForCausalLM(Qwen3Config(**SIZES, head_dim=8))
    elif name == "mistral":
        model = MistralForCausalLM(MistralConfig(**SIZES, sliding_window=6))
    else:
        layer_types = {"memlm-gdn": ["linear_attention", "full_attention"] * 2,
                       "memlm-titans": ["memory", "sliding_attention", "memory_as_gate", "full_attention"]}[name]
        model = MemLMForCausalLM(MemLMConfig(**SIZES, layer_types=layer_types, sliding_window=5,
                                             memory_chunk_size=8))
    model.eval()
    with torch.no_grad():  # larger logits than the default init, so greedy choices are not near-ties
        model.lm_head.weight.mul_(20)
    return model



@pytest.fixture(scope="session")
def build():
    """``build(name)``: a tiny seeded model in eval mode (see ``tiny_decoder``)."""
    return tiny_decoder
