"""Multi-head Latent Attention mixer (MLA, DeepSeek-V2, arXiv 2405.04434), as Kimi Linear's full-attention layers
and DeepSeek-V2/V3 have it, with its compressed cache.

    q            = W_q x                       or  W_qb RMSNorm(W_qa x)            (mla_q_lora_rank set)
    [c; k_rope]  = W_kva x                     c: the kv_lora_rank-wide latent, k_rope: qk_rope_head_dim wide,
                                               one for all heads
    c            = RMSNorm(c)  (eps 1e-6)      the cache keeps c and k_rope per token (kv_lora_rank +
                                               qk_rope_head_dim numbers instead of 2 * H * head widths)
    [k_nope; v]  = W_kvb c                     per head, qk_nope_head_dim and v_head_dim wide
    q_h, k_h     = [q_nope; RoPE(q_rope)], [k_nope; RoPE(k_rope)]   no RoPE with position_embedding_type="nope"
                                                                    (Kimi Linear)
    y            = W_o softmax(q_h k_h^T / sqrt(qk_nope_head_dim + qk_rope_head_dim)) v

RoPE is the half-rotation one (``rope_interleave=False`` in transformers' DeepSeek-V3) on the last
``qk_rope_head_dim`` channels of q and k; its width is the model's rotary width (``head_dim *
partial_rotary_factor``), so a config with MLA and RoPE sets ``head_dim`` to ``mla_qk_rope_head_dim`` (Kimi and
DeepSeek configs do). Weight names (``q_proj`` or ``q_a_proj``/``q_a_layernorm``/``q_b_proj``,
``kv_a_proj_with_mqa``, ``kv_a_layernorm``, ``kv_b_proj``, ``o_proj``) follow DeepSeek-V3 and Kimi Linear.

The cache is transformers' ``DynamicLayer`` holding the latents as one head: keys ``c [B, 1, S, kv_lora_rank]``,
values ``k_rope [B, 1, S, qk_rope_head_dim]`` (RoPE applied); every step decompresses them with ``W_kvb``.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from memlm.layers.attention import eager_attention_forward
from memlm.layers.inputs import MixerInputs
from memlm.layers.norm import RMSNorm
from memlm.layers.registry import register_mixer
from memlm.layers.rotary import apply_rotary


@register_mixer("mla", "full_attention", "compressed latents [B, 1, S, kv_lora_rank + qk_rope_head_dim]")
class MultiHeadLatentAttention(nn.Module):
    """``hidden_states [B, T, hidden] -> [B, T, hidden]``; ``num_attention_heads`` heads."""

    def __init__(self, config, layer_idx: int):
        super().__init__()
        self.config = config
        self.layer_idx = layer_idx
        self.layer_type = config.layer_types[layer_idx]
        self.num_heads = config.num_attention_heads
        self.num_key_value_groups = 1  # every head has its own decompressed key and value
        self.q_lora_rank = config.mla_q_lora_rank
        self.kv_lora_rank = config.mla_kv_lora_rank
        self.nope_dim = config.mla_qk_nope_head_dim
        self.rope_dim = config.mla_qk_rope_head_dim
        self.v_head_dim = config.mla_v_head_dim
        self.qk_head_dim = self.nope_dim + self.rope_dim
        self.scaling = self.qk_head_dim**-0.5
        self.is_causal = True
        hidden, bias = config.hidden_size, config.attention_bias
        query_width = self.num_heads * self.qk_head_dim
        if self.q_lora_rank is None:
            self.q_proj = nn.Linear(hidden, query_width, bias=False)
        else:
            self.q_a_proj = nn.Linear(hidden, self.q_lora_rank, bias=bias)
            self.q_a_layernorm = RMSNorm(self.q_lora_rank)  # eps 1e-6, as DeepSeek-V3 and Kimi Linear
            self.q_b_proj = nn.Linear(self.q_lora_rank, query_width, bias=False)
        self.kv_a_proj_with_mqa = nn.Linear(hidden, self.kv_lora_rank + self.rope_dim, bias=bias)
        self.kv_a_layernorm = RMSNorm(self.kv_lora_rank)
        self.kv_b_proj = nn.Linear(self.kv_lora_rank, self.num_heads * (self.nope_dim + self.v_head_dim), bias=False)
        self.o_proj = nn.Linear(self.num_heads * self.v_head_dim, hidden, bias=bias)

    def forward(self, hidden_states: torch.Tensor, inputs: MixerInputs) -> torch.Tensor:
        """Reads the ``"full_attention"`` mask, the rotary embeddings (None: no RoPE) and the cache from ``inputs``;
        with ``inputs.attention_weights`` it stores its ``[B, H, T, S]`` weights there under its ``layer_idx``."""
        batch, seq_len, _ = hidden_states.shape
        if self.q_lora_rank is None:
            query = self.q_proj(hidden_states)
        else:
            query = self.q_b_proj(self.q_a_layernorm(self.q_a_proj(hidden_states)))
        query = query.view(batch, seq_len, self.num_heads, self.qk_head_dim).transpose(1, 2)  # [B, H, T, Dqk]
        latent, k_rope = self.kv_a_proj_with_mqa(hidden_states).split([self.kv_lora_rank, self.rope_dim], dim=-1)
        latent = self.kv_a_layernorm(latent)[:, None]  # [B, 1, T, kv_lora_rank]
        k_rope = k_rope[:, None]  # [B, 1, T, rope]
        q_nope, q_rope = query.split([self.nope_dim, self.rope_dim], dim=-1)
        if inputs.position_embeddings is not None:  # None: position_embedding_type="nope" (Kimi Linear)
            cos, sin = inputs.position_embeddings
            q_rope, k_rope = apply_rotary(q_rope, cos, sin), apply_rotary(k_rope, cos, sin)
        if inputs.cache is not None:  # the compressed cache: latents, one "head"
            latent, k_rope = inputs.cache.update(latent, k_rope, self.layer_idx)
        key_len = latent.shape[-2]
        kv = self.kv_b_proj(latent).view(batch, key_len, self.num_heads, -1).transpose(1, 2)
        k_nope, value = kv.split([self.nope_dim, self.v_head_dim], dim=-1)  # [B, H, S, .]
        key = torch.cat([k_nope, k_rope.expand(-1, self.num_heads, -1, -1)], dim=-1)
        query = torch.cat([q_nope, q_rope], dim=-1)
        attention = ALL_ATTENTION_FUNCTIONS.get_interface(self.config._attn_implementation, eager_attention_forward)
        out, weights = attention(
            self, query, key, value, inputs.attention_masks[self.layer_type],
            dropout=self.config.attention_dropout if self.training else 0.0, scaling=self.scaling,
            **inputs.attention_kwargs,
        )
        if inputs.attention_weights is not None:
            inputs.attention_weights[self.layer_idx] = weights
        return self.o_proj(out.reshape(batch, seq_len, self.num_heads * self.v_head_dim))
