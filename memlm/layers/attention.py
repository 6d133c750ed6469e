"""Softmax attention mixer: grouped-query attention with RoPE, full or sliding-window.

Runs through transformers' attention interface, so ``config._attn_implementation`` picks ``sdpa``
(default), ``eager``, ``flash_attention_2`` or any registered kernel; the cache is transformers'
``DynamicLayer`` / ``DynamicSlidingWindowLayer``. When the model says so (``in_blocks``: ``sdpa`` or
``eager``, a whole unpadded sequence longer than two windows, as in training and prefill), a sliding-window
layer runs :func:`memlm.ops.sliding_window_attention.chunk_sliding_window_attention`, linear in the length,
instead of a dense ``[T, T]`` mask.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from memlm.layers.inputs import MixerInputs
from memlm.layers.norm import RMSNorm
from memlm.layers.registry import register_mixer
from memlm.layers.rotary import apply_rotary
from memlm.ops.sliding_window_attention import chunk_sliding_window_attention


def eager_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``softmax(Q K^T * scaling + mask) V``. q ``[B, H, T, D]``, k/v ``[B, Hkv, S, D]`` -> ``[B, T, H, D]``."""
    key = key.repeat_interleave(module.num_key_value_groups, dim=1)
    value = value.repeat_interleave(module.num_key_value_groups, dim=1)
    weights = query @ key.transpose(2, 3) * scaling
    if attention_mask is not None:
        weights = weights + attention_mask[..., : key.shape[-2]]
    weights = nn.functional.softmax(weights, dim=-1, dtype=torch.float32).to(query.dtype)
    weights = nn.functional.dropout(weights, p=dropout, training=module.training)
    return (weights @ value).transpose(1, 2).contiguous(), weights


@register_mixer("full_attention", "full_attention", "keys and values")
@register_mixer("sliding_attention", "sliding_attention", "the last sliding_window keys and values")
class Attention(nn.Module):
    """Causal GQA with RoPE. ``hidden_states [B, T, hidden] -> [B, T, hidden]``.

    Layers of type ``"sliding_attention"`` see the last ``config.sliding_window`` tokens. Options of the config
    (all off by default)::

        attention_output_gate:   q_proj -> [B, T, H, 2D] = per head [query | gate];
                                 out = o_proj(attention(q, k, v) * sigmoid(gate))         (Qwen3.5, Qwen3-Next)
        attention_qk_norm="head": q, k = RMSNorm_D(q_h), RMSNorm_D(k_h) per head, before RoPE   (Qwen3, Qwen3.5)
        attention_qk_norm="all":  q, k = RMSNorm_{H*D}(q), RMSNorm_{Hkv*D}(k) over the whole projections,
                                 then split into heads                                     (OLMo 2/3, OLMo Hybrid)
        partial rotary / "nope":  RoPE on the first rotary_dim channels / no position embedding (the model's
                                 ``inputs.position_embeddings`` is None)
    """

    def __init__(self, config, layer_idx: int):
        super().__init__()
        self.config = config
        self.layer_idx = layer_idx
        self.head_dim = config.head_dim
        self.num_heads = config.num_attention_heads
        self.num_key_value_heads = config.num_key_value_heads
        self.num_key_value_groups = self.num_heads // self.num_key_value_heads
        self.scaling = self.head_dim**-0.5 if config.attention_multiplier is None else config.attention_multiplier
        self.is_causal = True
        self.layer_type = config.layer_types[layer_idx]
        self.sliding_window = config.sliding_window if self.layer_type == "sliding_attention" else None
        self.output_gate = config.attention_output_gate
        bias = config.attention_bias
        query_width = self.num_heads * self.head_dim
        self.q_proj = nn.Linear(config.hidden_size, query_width * (2 if self.output_gate else 1), bias=bias)
        self.k_proj = nn.Linear(config.hidden_size, self.num_key_value_heads * self.head_dim, bias=bias)
        self.v_proj = nn.Linear(config.hidden_size, self.num_key_value_heads * self.head_dim, bias=bias)
        self.o_proj = nn.Linear(query_width, config.hidden_size, bias=bias)
        # the q/k norms see [B, T, 1, N*D] ("all": one norm over the projection) or [B, T, N, D] (per head)
        qk_norm = config.attention_qk_norm
        self.qk_norm_shape = (1, -1) if qk_norm == "all" else (-1, self.head_dim)
        if qk_norm is None:
            self.q_norm = self.k_norm = nn.Identity()
        else:
            key_width = self.num_key_value_heads * self.head_dim
            q_width, k_width = (query_width, key_width) if qk_norm == "all" else (self.head_dim, self.head_dim)
            self.q_norm = RMSNorm(q_width, eps=config.rms_norm_eps)
            self.k_norm = RMSNorm(k_width, eps=config.rms_norm_eps)

    def forward(self, hidden_states: torch.Tensor, inputs: MixerInputs) -> torch.Tensor:
        """Reads its layer type's mask, the rotary embeddings (None: no position embedding) and the cache from
        ``inputs``; a sliding-window layer reads the whole sequence in blocks when ``inputs.sliding_in_blocks``;
        with ``inputs.attention_weights`` (``output_attentions``) it stores its ``[B, H, T, S]`` weights there
        under its ``layer_idx``."""
        cache = inputs.cache
        batch, seq_len, _ = hidden_states.shape
        query = self.q_proj(hidden_states).view(batch, seq_len, self.num_heads, -1)  # [B, T, H, D or 2D]
        gate = None
        if self.output_gate:  # each head's 2D channels are [query | gate] (Qwen3.5's layout)
            query, gate = query.chunk(2, dim=-1)
        query = self._heads(query, self.q_norm)
        key = self._heads(self.k_proj(hidden_states), self.k_norm)
        value = self.v_proj(hidden_states).view(batch, seq_len, -1, self.head_dim).transpose(1, 2)
        if inputs.position_embeddings is not None:  # None: position_embedding_type="nope"
            cos, sin = inputs.position_embeddings
            query, key = apply_rotary(query, cos, sin), apply_rotary(key, cos, sin)
        if cache is not None:
            key, value = cache.update(key, value, self.layer_idx)
        if inputs.sliding_in_blocks and self.sliding_window is not None:
            out = chunk_sliding_window_attention(
                *(t.transpose(1, 2) for t in (query, key, value)), self.sliding_window, self.scaling
            )
            return self._output(out, gate)
        attention = ALL_ATTENTION_FUNCTIONS.get_interface(self.config._attn_implementation, eager_attention_forward)
        out, weights = attention(
            self, query, key, value, inputs.attention_masks[self.layer_type],
            dropout=self.config.attention_dropout if self.training else 0.0,
            scaling=self.scaling, sliding_window=self.sliding_window, **inputs.attention_kwargs,
        )
        if inputs.attention_weights is not None:
            inputs.attention_weights[self.layer_idx] = weights
        return self._output(out, gate)

    def _heads(self, states: torch.Tensor, norm: nn.Module) -> torch.Tensor:
        """``[B, T, N * D]`` (or ``[B, T, N, D]``) -> q/k norm (per head or over all channels) -> ``[B, N, T, D]``."""
        batch, seq_len = states.shape[:2]
        states = norm(states.reshape(batch, seq_len, *self.qk_norm_shape))
        return states.reshape(batch, seq_len, -1, self.head_dim).transpose(1, 2)

    def _output(self, out: torch.Tensor, gate: torch.Tensor | None) -> torch.Tensor:
        """``o_proj(out * sigmoid(gate))`` (no gate: ``o_proj(out)``); ``out``, ``gate`` ``[B, T, H, D]``."""
        out = out.reshape(*out.shape[:2], -1)
        if gate is not None:
            out = out * torch.sigmoid(gate.reshape(out.shape))
        return self.o_proj(out)
