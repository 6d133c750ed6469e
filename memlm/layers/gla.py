"""GLA mixer (Gated Linear Attention, Yang et al., arXiv 2312.06635), parametrized as fla's ``GatedLinearAttention``.

    q, k, v = W_q x, W_k x, W_v x                               no short conv, no feature map (fla's defaults)
    g_t     = logsigmoid(W_gk2 W_gk1 x_t + b) / normalizer      per key channel log decay, low-rank (rank r)
    S_t     = Diag(exp(g_t)) S_{t-1} + k_t v_t^T,  o_t = S_t^T (q_t / sqrt(dk))     memlm.ops.chunk_gla
    y       = W_o(RMSNorm(o) * SiLU(W_g x))                     per-head norm, then the swish output gate

Heads: ``linear_num_key_heads`` heads, each with a key width ``linear_key_head_dim`` (fla: ``hidden * expand_k /
num_heads``) and a value width ``linear_value_head_dim`` (``hidden * expand_v / num_heads``); ``r =
gla_gate_low_rank_dim`` (16), ``normalizer = gla_gate_logit_normalizer`` (16), norm eps ``linear_norm_eps`` (None:
``rms_norm_eps``). Weight names are fla's (``q_proj``, ``k_proj``, ``v_proj``, ``g_proj``, ``gk_proj.0``,
``gk_proj.1``, ``g_norm_swish_gate``, ``o_proj``). The cache is transformers' ``LinearAttentionLayer``: one
recurrent state ``[B, H, dk, dv]``.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from memlm.layers.inputs import MixerInputs
from memlm.layers.linear_cache import masked_and_previous_state, run_rule
from memlm.layers.norm import GatedRMSNorm
from memlm.layers.padding import RecurrentMixer
from memlm.layers.registry import register_mixer
from memlm.ops.gla import chunk_gla, recurrent_gla


class FlaHeads(RecurrentMixer):
    """What fla's GLA and DeltaNet layers share: ``linear_num_key_heads`` heads of key width ``linear_key_head_dim``
    and value width ``linear_value_head_dim``, the bias-free ``q_proj``, ``k_proj`` (``hidden -> H * dk``),
    ``v_proj`` (``hidden -> H * dv``) and ``o_proj`` (``H * dv -> hidden``), and the output norm's eps."""

    def __init__(self, config, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.num_heads = config.linear_num_key_heads
        self.head_k_dim = config.linear_key_head_dim
        self.head_v_dim = config.linear_value_head_dim
        self.key_dim = self.num_heads * self.head_k_dim
        self.value_dim = self.num_heads * self.head_v_dim
        self.q_proj = nn.Linear(config.hidden_size, self.key_dim, bias=False)
        self.k_proj = nn.Linear(config.hidden_size, self.key_dim, bias=False)
        self.v_proj = nn.Linear(config.hidden_size, self.value_dim, bias=False)
        self.o_proj = nn.Linear(self.value_dim, config.hidden_size, bias=False)
        self.norm_eps = config.rms_norm_eps if config.linear_norm_eps is None else config.linear_norm_eps


@register_mixer("gla", "linear_attention", "recurrent state [B, H, dk, dv]", linear=True)
class GatedLinearAttention(FlaHeads):
    """``hidden_states [B, T, hidden] -> [B, T, hidden]``."""

    def __init__(self, config, layer_idx: int):
        super().__init__(config, layer_idx)
        hidden = config.hidden_size
        self.g_proj = nn.Linear(hidden, self.value_dim, bias=False)
        self.gk_proj = nn.Sequential(
            nn.Linear(hidden, config.gla_gate_low_rank_dim, bias=False),
            nn.Linear(config.gla_gate_low_rank_dim, self.key_dim, bias=True),
        )
        self.gate_logit_normalizer = config.gla_gate_logit_normalizer
        self.g_norm_swish_gate = GatedRMSNorm(self.head_v_dim, eps=self.norm_eps)

    def mix(self, hidden_states: torch.Tensor, mask: torch.Tensor | None, inputs: MixerInputs) -> torch.Tensor:
        batch, seq_len, _ = hidden_states.shape
        cache, cu_seqlens = inputs.cache, inputs.cu_seqlens
        # a pad has k = v = 0 and (below) g = 0: the state passes it unchanged
        hidden_states, recurrent_state = masked_and_previous_state(hidden_states, mask, cache, self.layer_idx)

        shape = (batch, seq_len, self.num_heads, -1)
        q = self.q_proj(hidden_states).view(shape)
        k = self.k_proj(hidden_states).view(shape)
        v = self.v_proj(hidden_states).view(shape)
        g = F.logsigmoid(self.gk_proj(hidden_states).float()) / self.gate_logit_normalizer
        if mask is not None:
            g = g * mask[..., None]
        g = g.view(shape)

        o = run_rule(chunk_gla, recurrent_gla, (q, k, v, g), recurrent_state, cache, self.layer_idx, cu_seqlens)

        gate = self.g_proj(hidden_states).view(batch, seq_len, self.num_heads, self.head_v_dim)
        return self.o_proj(self.g_norm_swish_gate(o, gate).reshape(batch, seq_len, self.value_dim))
