"""memlm's Multi-head Latent Attention against transformers' DeepSeek-V3 attention (half-rotation RoPE), with the
same weights; Kimi Linear's (no RoPE) is compared through whole models in tests/convert/test_kimi_linear.py."""

import pytest
import torch
from transformers import DeepseekV3Config
from transformers.models.deepseek_v3.modeling_deepseek_v3 import DeepseekV3Attention, DeepseekV3RotaryEmbedding

from memlm import MemLMConfig
from memlm.layers.inputs import MixerInputs
from memlm.layers.mla import MultiHeadLatentAttention
from memlm.layers.rotary import RotaryEmbedding

WIDTHS = dict(hidden_size=32, num_attention_heads=4, kv_lora_rank=12, qk_nope_head_dim=8, qk_rope_head_dim=4,
              v_head_dim=6)


@pytest.mark.parametrize("q_lora_rank", [None, 10])
@torch.no_grad()
def test_mla_matches_deepseek_v3_attention(q_lora_rank):
    torch.manual_seed(0)
    reference_config = DeepseekV3Config(**WIDTHS, q_lora_rank=q_lora_rank, num_key_value_heads=4,
                                        rope_interleave=False, num_hidden_layers=1, vocab_size=10,
                                        attn_implementation="sdpa")
    reference = DeepseekV3Attention(reference_config, layer_idx=0).eval()
    for parameter in reference.parameters():
        parameter.normal_(0, 0.3 if parameter.ndim > 1 else 1.0)
    config = MemLMConfig(vocab_size=10, num_hidden_layers=1, mixer_types=["mla"], head_dim=4,
                         hidden_size=32, num_attention_heads=4, mla_q_lora_rank=q_lora_rank, mla_kv_lora_rank=12,
                         mla_qk_nope_head_dim=8, mla_qk_rope_head_dim=4, mla_v_head_dim=6, attn_implementation="sdpa")
    ours = MultiHeadLatentAttention(config, layer_idx=0).eval()
    assert ours.load_state_dict(reference.state_dict()) is not None  # the same names and shapes
    x = torch.randn(2, 11, 32)
    positions = torch.arange(11)[None].expand(2, -1)
    expected, _ = reference(x, DeepseekV3RotaryEmbedding(reference_config)(x, positions), None)
    inputs = MixerInputs(attention_mask=None, attention_masks={"full_attention": None}, position_ids=positions,
                         position_embeddings=RotaryEmbedding(config)(x, positions))
    torch.testing.assert_close(ours(x, inputs), expected, atol=1e-5, rtol=1e-5)


def test_mla_with_rope_needs_the_rotary_width():
    with pytest.raises(ValueError, match="mla_qk_rope_head_dim=6 is not allowed with RoPE"):
        MemLMConfig(vocab_size=10, num_hidden_layers=1, mixer_types=["mla"], hidden_size=32, num_attention_heads=4,
                    head_dim=4, mla_qk_rope_head_dim=6)
    with pytest.raises(ValueError, match="attention_output_gate=True is not allowed with mla layers"):
        MemLMConfig(vocab_size=10, num_hidden_layers=1, mixer_types=["mla"], hidden_size=32, num_attention_heads=4,
                    attention_output_gate=True)
    with pytest.raises(ValueError, match="mla_kv_lora_rank must be a positive integer"):
        MemLMConfig(vocab_size=10, num_hidden_layers=1, mixer_types=["mla"], hidden_size=32, num_attention_heads=4,
                    mla_kv_lora_rank=0)
