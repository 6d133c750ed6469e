"""Mamba-2 mixer (Dao & Gu, arXiv 2405.21060), parametrized and named as transformers' ``Mamba2Mixer`` (and the
Mamba-2 layers of Granite-4.0-H, Bamba, Nemotron-H, Falcon-H1).

    z, xBC, dt_raw = split(in_proj(u))                      gate [I], x|B|C [I + 2 G N], time steps [H]
    x, B, C = split(SiLU(conv1d(xBC)))                      one depthwise causal conv (with bias) over x|B|C
    dt      = clamp(softplus(dt_raw + dt_bias), time_step_limit)
    A       = -exp(A_log)
    y       = ssd(x, dt, A, B, C, D)                        memlm.ops.ssd: h_t = exp(dt_t A) h_{t-1} + dt_t B_t x_t^T,
                                                            y_t = h_t^T C_t + D x_t
    out     = out_proj(norm(y * SiLU(z)))                   gated RMSNorm per group of I / G channels (gate first)

``I = mamba_num_heads * mamba_head_dim``, ``G = mamba_n_groups``, ``N = mamba_d_state``. Weight names:
``in_proj``, ``conv.conv1d`` (memlm's :class:`ShortConvolution`, transformers' ``conv1d``), ``dt_bias``,
``A_log``, ``D``, ``norm``, ``out_proj``. The cache is transformers' ``LinearAttentionLayer``: the conv state and
the recurrent state ``[B, H, N, head_dim]``.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F
from transformers import initialization as init

from memlm.layers.gated_deltanet import init_dt_bias
from memlm.layers.inputs import MixerInputs
from memlm.layers.linear_cache import decodes_in_place, previous_recurrent_state, store_recurrent_state
from memlm.layers.padding import RecurrentMixer
from memlm.layers.registry import register_mixer
from memlm.layers.short_conv import ShortConvolution
from memlm.ops.ssd import chunk_ssd, recurrent_ssd


class GroupGatedRMSNorm(nn.Module):
    """Mamba-2's output norm, gate first: ``y = weight * RMSNorm_g(x * SiLU(gate))``, the RMS taken over each
    group of ``group_size`` channels, in fp32. ``x, gate: [..., dim]``."""

    def __init__(self, dim: int, group_size: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.group_size = group_size
        self.eps = eps

    def forward(self, x: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
        gated = x.float() * F.silu(gate.float())
        groups = gated.unflatten(-1, (-1, self.group_size))
        normed = (groups * torch.rsqrt(groups.pow(2).mean(-1, keepdim=True) + self.eps)).flatten(-2)
        return self.weight * normed.to(x.dtype)


@register_mixer("mamba2", "linear_attention", "conv state + recurrent state [B, H, d_state, head_dim]", linear=True)
class Mamba2(RecurrentMixer):
    """``hidden_states [B, T, hidden] -> [B, T, hidden]`` (see the module docstring)."""

    def __init__(self, config, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.num_heads = config.mamba_num_heads
        self.head_dim = config.mamba_head_dim
        self.n_groups = config.mamba_n_groups
        self.d_state = config.mamba_d_state
        self.chunk_size = config.mamba_chunk_size
        self.time_step_limit = config.mamba_time_step_limit
        self.inner = self.num_heads * self.head_dim
        self.conv_dim = self.inner + 2 * self.n_groups * self.d_state
        hidden = config.hidden_size
        self.in_proj = nn.Linear(hidden, self.inner + self.conv_dim + self.num_heads, bias=config.mamba_proj_bias)
        self.conv = ShortConvolution(self.conv_dim, config.mamba_conv_kernel, bias=config.mamba_conv_bias)
        self.dt_bias = nn.Parameter(torch.zeros(self.num_heads))
        self.A_log = nn.Parameter(torch.zeros(self.num_heads))
        self.D = nn.Parameter(torch.ones(self.num_heads))
        eps = config.rms_norm_eps if config.mamba_norm_eps is None else config.mamba_norm_eps
        self.norm = GroupGatedRMSNorm(self.inner, self.inner // self.n_groups, eps)
        self.out_proj = nn.Linear(self.inner, hidden, bias=config.mamba_proj_bias)
        self.init_mixer_weights()

    @torch.no_grad()
    def init_mixer_weights(self) -> None:
        """Mamba-2's: ``A = 1..H``, ``D = 1``, ``softplus(dt_bias) = dt ~ logU(1e-3, 1e-1)``."""
        init.copy_(self.A_log, torch.arange(1, self.num_heads + 1, dtype=torch.float32).log())
        init.ones_(self.D)
        init_dt_bias(self.dt_bias)

    def mix(self, hidden_states: torch.Tensor, mask: torch.Tensor | None, inputs: MixerInputs) -> torch.Tensor:
        batch, seq_len, _ = hidden_states.shape
        cache, cu_seqlens = inputs.cache, inputs.cu_seqlens
        keep = None if mask is None else mask[..., None].to(hidden_states.dtype)
        projected = self.in_proj(hidden_states)
        if keep is not None:  # padding never enters the conv window (in_proj's bias included) or the state
            projected = projected * keep
        gate, xbc, dt = projected.split([self.inner, self.conv_dim, self.num_heads], dim=-1)
        xbc = self.conv(xbc, cache, self.layer_idx, cu_seqlens)
        if keep is not None:
            xbc = xbc * keep
        x, B, C = xbc.split([self.inner, self.n_groups * self.d_state, self.n_groups * self.d_state], dim=-1)
        dt = F.softplus(dt.float() + self.dt_bias.float())
        if self.time_step_limit is not None:
            dt = dt.clamp(*self.time_step_limit)
        if keep is not None:
            dt = dt * keep.float()  # dt = 0: no decay and no write at a pad

        recurrent_state = previous_recurrent_state(cache, self.layer_idx)
        x = x.view(batch, seq_len, self.num_heads, self.head_dim)
        B, C = (t.view(batch, seq_len, self.n_groups, self.d_state) for t in (B, C))
        ssd_inputs = (x, dt, -self.A_log.float().exp(), B, C, self.D)
        if recurrent_state is not None and seq_len == 1:  # decoding: the new state is written into the cached one
            y, final_state = recurrent_ssd(*ssd_inputs, initial_state=recurrent_state, output_final_state=True,
                                           cu_seqlens=cu_seqlens,
                                           inplace_final_state=decodes_in_place(cache, recurrent_state, *ssd_inputs))
        else:
            y, final_state = chunk_ssd(*ssd_inputs, initial_state=recurrent_state, output_final_state=cache is not None,
                                       cu_seqlens=cu_seqlens, chunk_size=self.chunk_size)
        if cache is not None:
            store_recurrent_state(cache, self.layer_idx, final_state)
        return self.out_proj(self.norm(y.reshape(batch, seq_len, self.inner), gate))
