"""Prefix linear attention (JRT-RNN, arXiv 2407.05483): mixer ``"prefix_linear_attention"``, a linear layer.

    q = W_q x,  k = W_k x,  ke = W_ke x         per head, of the feature dimension d = linear_key_head_dim
    v = W_v x,  ve = W_ve x                     per head, linear_value_head_dim
    o = chunk_prefix_linear_attention(q, k, v, ke, ve, prefix)  (memlm.ops.prefix_linear_attention)
    y = W_o o

Every position reads the prefix (the prompt) through the encoder keys and values ``ke, ve``, non-causally,
and its own past through ``k, v``, causally. Without a prefix (``prefix_mask`` None) the layer is causal
Based linear attention. The prefix must come in the first call: after it, the cache holds the sum of the
encoder and decoder states (``[B, H, 1 + d + d^2, dv + 1]``) and decoding continues recurrently.
"""

from __future__ import annotations

from torch import nn

from memlm.layers.based import BasedLinearAttention
from memlm.layers.inputs import MixerInputs
from memlm.layers.registry import register_mixer
from memlm.ops.prefix_linear_attention import chunk_prefix_linear_attention


@register_mixer("prefix_linear_attention", "linear_attention",
                "recurrent state [B, H, 1 + d + d^2, dv + 1] (encoder + decoder)")
class PrefixLinearAttention(BasedLinearAttention):
    """``hidden_states [B, T, hidden] -> [B, T, hidden]``: Based linear attention plus the encoder projections
    ``k_enc_proj``, ``v_enc_proj`` of the prefix; ``linear_num_key_heads`` heads."""

    def __init__(self, config, layer_idx: int):
        super().__init__(config, layer_idx)
        self.k_enc_proj = nn.Linear(config.hidden_size, self.num_heads * self.feature_dim, bias=False)
        self.v_enc_proj = nn.Linear(config.hidden_size, self.num_heads * self.head_v_dim, bias=False)

    def attend(self, hidden_states, q, k, v, op_kwargs: dict, inputs: MixerInputs):
        """``inputs.prefix_mask``: ``[B, T]`` bool, True at the prefix tokens (see
        :func:`memlm.ops.prefix_linear_attention.prefix_token_mask`); None reads no prefix (causal Based)."""
        prefix_mask = inputs.prefix_mask
        if prefix_mask is None:
            return super().attend(hidden_states, q, k, v, op_kwargs, inputs)
        if op_kwargs["initial_state"] is not None:
            raise ValueError(
                f"layer {self.layer_idx}: the prefix must be read in the first call, but the cache already holds "
                "a state; continue with prefix_length=None"
            )
        if op_kwargs["key_mask"] is not None:  # padding is never part of the prefix
            prefix_mask = prefix_mask & op_kwargs["key_mask"].bool()
        ke = self.k_enc_proj(hidden_states).view(q.shape)
        ve = self.v_enc_proj(hidden_states).view(v.shape)
        return chunk_prefix_linear_attention(q, k, v, ke, ve, prefix_mask, **op_kwargs)
