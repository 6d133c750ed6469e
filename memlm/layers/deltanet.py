"""DeltaNet mixer (Schlag et al., arXiv 2102.11174; Yang et al., arXiv 2406.06484), parametrized as fla's ``DeltaNet``.

    q, k, v = SiLU(ShortConv([W_q x, W_k x, W_v x]))          depthwise conv over q|k|v (fla's three convs)
    q, k    = q / ||q||, k / ||k||                              fla's qk_activation="silu", qk_norm="l2"
    beta_t  = sigmoid(W_b x_t)                                  per head (2 * sigmoid with linear_allow_neg_eigval)
    S_t     = (I - beta_t k_t k_t^T) S_{t-1} + beta_t k_t v_t^T,  o_t = S_t^T (q_t / sqrt(dk))
            the delta rule: memlm.ops.gated_delta_rule with g = 0 (exp(0) = 1 is exact, no decay factor)
    y       = W_o(RMSNorm(o))                                   per-head norm (fla's o_norm)
            = W_o(RMSNorm(o) * SiLU(W_g x))                     with deltanet_use_gate (fla's use_gate)

Heads: ``linear_num_key_heads`` heads of key width ``linear_key_head_dim`` and value width
``linear_value_head_dim``; conv width ``linear_conv_kernel_dim``; norm eps ``linear_norm_eps`` (None:
``rms_norm_eps``). Weight names are fla's (``q_proj``, ``k_proj``, ``v_proj``, ``b_proj``, ``g_proj``, ``o_norm``,
``o_proj``) but for the convolution: fla's ``{q,k,v}_conv1d`` are one ``conv`` over q|k|v here (their channels
concatenated; the importer concatenates the weights), so the cache keeps one conv state, as for GatedDeltaNet.
"""

from __future__ import annotations

import torch
from torch import nn

from memlm.layers.gated_deltanet import qk_normalized_heads, write_strength
from memlm.layers.gla import FlaHeads
from memlm.layers.inputs import MixerInputs
from memlm.layers.linear_cache import masked_and_previous_state, run_rule
from memlm.layers.norm import GatedRMSNorm, RMSNorm
from memlm.layers.registry import register_mixer
from memlm.layers.short_conv import ShortConvolution
from memlm.ops.gated_delta_rule import chunk_gated_delta_rule, recurrent_gated_delta_rule


@register_mixer("deltanet", "linear_attention", "conv state + recurrent state [B, H, dk, dv]", linear=True)
class DeltaNet(FlaHeads):
    """``hidden_states [B, T, hidden] -> [B, T, hidden]``."""

    def __init__(self, config, layer_idx: int):
        super().__init__(config, layer_idx)
        self.b_proj = nn.Linear(config.hidden_size, self.num_heads, bias=False)
        self.conv = ShortConvolution(2 * self.key_dim + self.value_dim, config.linear_conv_kernel_dim)
        self.beta_scale = 2.0 if config.linear_allow_neg_eigval else 1.0
        self.use_gate = config.deltanet_use_gate
        if self.use_gate:
            self.g_proj = nn.Linear(config.hidden_size, self.value_dim, bias=False)
        self.o_norm = (GatedRMSNorm if self.use_gate else RMSNorm)(self.head_v_dim, eps=self.norm_eps)

    def mix(self, hidden_states: torch.Tensor, mask: torch.Tensor | None, inputs: MixerInputs) -> torch.Tensor:
        batch, seq_len, _ = hidden_states.shape
        cache, cu_seqlens = inputs.cache, inputs.cu_seqlens
        # padding never enters the conv or recurrent state (beta = 0 there, below)
        hidden_states, recurrent_state = masked_and_previous_state(hidden_states, mask, cache, self.layer_idx)

        qkv = torch.cat([self.q_proj(hidden_states), self.k_proj(hidden_states), self.v_proj(hidden_states)], -1)
        qkv = self.conv(qkv, cache, self.layer_idx, cu_seqlens)
        q, k, v = qk_normalized_heads(qkv, self.num_heads, self.head_k_dim, self.head_v_dim)
        shape = (batch, seq_len, self.num_heads, -1)

        beta = write_strength(self.b_proj(hidden_states), self.beta_scale)
        if mask is not None:
            beta = beta * mask[..., None]
        g = torch.zeros_like(beta)  # no decay

        o = run_rule(chunk_gated_delta_rule, recurrent_gated_delta_rule, (q, k, v, g, beta), recurrent_state, cache,
                     self.layer_idx, cu_seqlens)

        o = self.o_norm(o, self.g_proj(hidden_states).view(shape)) if self.use_gate else self.o_norm(o)
        return self.o_proj(o.reshape(batch, seq_len, self.value_dim))
