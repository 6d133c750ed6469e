"""Kimi Delta Attention mixer (KDA, Kimi Linear, arXiv 2510.26692), parametrized as transformers' and Moonshot's
Kimi Linear checkpoints are.

    q, k, v = SiLU(ShortConv([W_q x, W_k x, W_v x]))              one depthwise conv over q|k|v
    g_t     = -exp(A_log) * softplus(W_fb W_fa x_t + dt_bias)       log decay per head and key channel (low rank)
    beta_t  = sigmoid(W_b x_t)                                      write strength, per head
    q, k    = q / ||q||, k / ||k||
    o       = kda(q, k, v, g, beta)                                 memlm.ops.kda, equations (1)-(2)
    y       = W_o(RMSNorm(o) * sigmoid(W_gb W_ga x))                per-head norm with a low-rank sigmoid gate

Heads: ``linear_num_key_heads`` q/k heads of ``linear_key_head_dim``, ``linear_num_value_heads`` v heads of
``linear_value_head_dim`` (a multiple of the key heads: each q/k head serves a group of consecutive value heads;
Kimi Linear: equal); the decay has one entry per value head and key channel. Both low ranks are
``linear_value_head_dim`` (Kimi Linear's ``head_dim``).

Weight names (``q_proj``, ``k_proj``, ``v_proj``, ``conv.conv1d`` (Kimi's ``q_conv1d|k_conv1d|v_conv1d``
concatenated, as transformers' ``conv1d``), ``f_a_proj``, ``f_b_proj``, ``A_log`` ``[H]``, ``dt_bias`` ``[H * dk]``,
``b_proj``, ``g_a_proj``, ``g_b_proj``, ``o_norm``, ``o_proj``) follow Kimi Linear. The cache is transformers'
``LinearAttentionLayer``: one conv state (q|k|v) and one recurrent state.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from memlm.layers.gated_deltanet import DeltaRuleMixer
from memlm.layers.norm import GatedRMSNorm
from memlm.layers.registry import register_mixer
from memlm.layers.short_conv import ShortConvolution
from memlm.ops.kda import chunk_kda, recurrent_kda


@register_mixer("kda", "linear_attention", "conv state + recurrent state [B, H, dk, dv]", linear=True)
class KimiDeltaAttention(DeltaRuleMixer):
    """``hidden_states [B, T, hidden] -> [B, T, hidden]``; heads as :class:`DeltaRuleMixer` (its gate init: fla's
    KDA gates); state per value head ``[dk, dv]``."""

    chunk_op, recurrent_op = staticmethod(chunk_kda), staticmethod(recurrent_kda)

    def __init__(self, config, layer_idx: int):
        super().__init__(config, layer_idx)
        hidden, rank = config.hidden_size, self.head_v_dim
        self.q_proj = nn.Linear(hidden, self.key_dim, bias=False)
        self.k_proj = nn.Linear(hidden, self.key_dim, bias=False)
        self.v_proj = nn.Linear(hidden, self.value_dim, bias=False)
        self.conv = ShortConvolution(2 * self.key_dim + self.value_dim, config.linear_conv_kernel_dim)
        self.f_a_proj = nn.Linear(hidden, rank, bias=False)
        self.f_b_proj = nn.Linear(rank, self.num_v_heads * self.head_k_dim, bias=False)
        self.A_log = nn.Parameter(torch.zeros(self.num_v_heads))
        self.dt_bias = nn.Parameter(torch.zeros(self.num_v_heads * self.head_k_dim))
        self.b_proj = nn.Linear(hidden, self.num_v_heads, bias=False)
        self.g_a_proj = nn.Linear(hidden, rank, bias=False)
        self.g_b_proj = nn.Linear(rank, self.value_dim, bias=False)
        self.o_norm = GatedRMSNorm(self.head_v_dim, eps=config.rms_norm_eps, activation="sigmoid")
        self.o_proj = nn.Linear(self.value_dim, hidden, bias=False)
        self.init_mixer_weights()

    def project_qkv(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """``[B, T, hidden] -> [B, T, 2 key_dim + value_dim]``: ``W_q x | W_k x | W_v x``."""
        return torch.cat([self.q_proj(hidden_states), self.k_proj(hidden_states), self.v_proj(hidden_states)], -1)

    def gates(self, hidden_states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``g = -exp(A_log) * softplus(W_fb W_fa x + dt_bias)`` ``[B, T, Hv, dk]`` and ``beta = sigmoid(W_b x)``
        ``[B, T, Hv]``, fp32."""
        batch, seq_len, _ = hidden_states.shape
        beta = self.b_proj(hidden_states).float().sigmoid()
        gate = self.f_b_proj(self.f_a_proj(hidden_states)).float() + self.dt_bias.float()
        gate = gate.view(batch, seq_len, self.num_v_heads, self.head_k_dim)
        g = -self.A_log.float().exp()[:, None] * F.softplus(gate)
        return g, beta

    def output(self, o: torch.Tensor, hidden_states: torch.Tensor) -> torch.Tensor:
        """``o [B, T, Hv, dv] -> W_o(RMSNorm(o) * sigmoid(W_gb W_ga x)) [B, T, hidden]``."""
        batch, seq_len, _ = hidden_states.shape
        z = self.g_b_proj(self.g_a_proj(hidden_states)).view(batch, seq_len, self.num_v_heads, self.head_v_dim)
        return self.o_proj(self.o_norm(o, z).reshape(batch, seq_len, self.value_dim))
