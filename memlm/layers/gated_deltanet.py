"""GatedDeltaNet mixer (Yang, Kautz, Hatamizadeh, arXiv 2412.06464), parametrized as fla and Qwen3.5 do.

    q, k, v = SiLU(ShortConv([W_q x, W_k x, W_v x]))          one depthwise conv over q|k|v
    q, k    = q / ||q||, k / ||k||
    g_t     = -exp(A_log) * softplus(W_a x_t + dt_bias)         log decay, per head
    beta_t  = sigmoid(W_b x_t)                                  write strength, per head, in [0, 1]
            (2 * sigmoid(W_b x_t), in [0, 2], with linear_allow_neg_eigval: fla's allow_neg_eigval, OLMo Hybrid)
    o       = gated_delta_rule(q, k, v, g, beta)                memlm.ops, equation (1)-(2)
    y       = W_out(RMSNorm(o) * SiLU(W_z x))                   per-head gated norm, eps linear_norm_eps
                                                                (default rms_norm_eps; OLMo Hybrid: 1e-5)

Weight names (``in_proj_qkv``, ``in_proj_z``, ``in_proj_b``, ``in_proj_a``, ``conv1d``, ``A_log``,
``dt_bias``, ``norm``, ``out_proj``) follow Qwen3.5 so checkpoints map onto vLLM's GDN layer.
The cache is transformers' ``LinearAttentionLayer``: one conv state and one recurrent state.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F
from transformers import initialization as init

from memlm.layers.inputs import MixerInputs
from memlm.layers.linear_cache import masked_and_previous_state, run_rule
from memlm.layers.norm import GatedRMSNorm
from memlm.layers.padding import RecurrentMixer
from memlm.layers.registry import register_mixer
from memlm.layers.short_conv import ShortConvolution
from memlm.ops.gated_delta_rule import chunk_gated_delta_rule, recurrent_gated_delta_rule


def l2_normalize(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """``x / sqrt(sum(x^2) + eps)`` over the last dimension (fla's convention)."""
    return x * torch.rsqrt(x.float().pow(2).sum(-1, keepdim=True) + eps).to(x.dtype)


def qk_normalized_heads(qkv: torch.Tensor, num_k_heads: int, head_k_dim: int,
                        head_v_dim: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``qkv [B, T, 2 H dk + Hv dv]`` (q|k|v after the conv) -> ``q / ||q||, k / ||k||`` ``[B, T, H, dk]`` (one
    normalization over the q and k heads together) and ``v [B, T, Hv, dv]``."""
    batch, seq_len, _ = qkv.shape
    key_dim = num_k_heads * head_k_dim
    qk = l2_normalize(qkv[..., : 2 * key_dim].unflatten(-1, (2 * num_k_heads, head_k_dim)))
    q, k = qk.split(num_k_heads, dim=2)
    return q, k, qkv[..., 2 * key_dim :].view(batch, seq_len, -1, head_v_dim)


def write_strength(logits: torch.Tensor, beta_scale: float) -> torch.Tensor:
    """The delta rule's ``beta = sigmoid(logits)`` in fp32, times ``beta_scale`` (2 with
    ``linear_allow_neg_eigval``: beta in [0, 2]; no multiply when it is 1). Shapes unchanged (``[B, T, H]``)."""
    beta = logits.float().sigmoid()
    return beta if beta_scale == 1 else beta * beta_scale


def init_dt_bias(dt_bias: nn.Parameter) -> None:
    """Mamba-2's time-step bias: ``softplus(dt_bias) = dt ~ logU(1e-3, 1e-1)`` (clamped at 1e-4), stored through the
    inverse softplus ``dt + log(1 - exp(-dt))``."""
    dt = torch.exp(torch.empty_like(dt_bias).uniform_(math.log(1e-3), math.log(1e-1))).clamp(min=1e-4)
    init.copy_(dt_bias, dt + torch.log(-torch.expm1(-dt)))  # inverse softplus


class DeltaRuleMixer(RecurrentMixer):
    """The head layout, gate init and q/k/v heads GatedDeltaNet and KDA share.

    Heads: ``linear_num_key_heads`` q/k heads of ``linear_key_head_dim``, ``linear_num_value_heads``
    v heads of ``linear_value_head_dim`` (a multiple of the key heads: each q/k head serves a group of
    consecutive value heads). Subclasses define ``conv`` (over q|k|v), ``A_log``, ``dt_bias``, their ops
    ``chunk_op`` and ``recurrent_op`` (as :func:`~memlm.layers.linear_cache.run_rule` takes them), and
    ``project_qkv``, ``gates`` and ``output``.
    """

    def __init__(self, config, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.num_k_heads = config.linear_num_key_heads
        self.num_v_heads = config.linear_num_value_heads
        self.head_k_dim = config.linear_key_head_dim
        self.head_v_dim = config.linear_value_head_dim
        self.key_dim = self.num_k_heads * self.head_k_dim
        self.value_dim = self.num_v_heads * self.head_v_dim

    @torch.no_grad()
    def init_mixer_weights(self) -> None:
        """Mamba-2 style gates (fla's GatedDeltaNet and KDA): ``A ~ U(1, 16)``, ``softplus(dt_bias) = dt ~
        logU(1e-3, 1e-1)``."""
        init.copy_(self.A_log, torch.empty_like(self.A_log).uniform_(1, 16).log())
        init_dt_bias(self.dt_bias)

    def mix(self, hidden_states: torch.Tensor, mask: torch.Tensor | None, inputs: MixerInputs) -> torch.Tensor:
        """``hidden_states [B, T, hidden] -> [B, T, hidden]``: q/k/v heads (:meth:`project_qkv`, :meth:`qkv_heads`),
        the gates ``g, beta`` (:meth:`gates`; zero on pads, so a pad neither decays nor writes the state), the op
        (``recurrent_op`` for one decoding token after a cached state, else ``chunk_op``), then :meth:`output`."""
        cache, cu_seqlens = inputs.cache, inputs.cu_seqlens
        hidden_states, recurrent_state = masked_and_previous_state(hidden_states, mask, cache, self.layer_idx)
        q, k, v = self.qkv_heads(self.project_qkv(hidden_states), cache, cu_seqlens)
        g, beta = self.gates(hidden_states)
        if mask is not None:
            beta, g = beta * mask[..., None], g * mask.view(*mask.shape, *(1,) * (g.dim() - 2))
        o = run_rule(self.chunk_op, self.recurrent_op, (q, k, v, g, beta), recurrent_state, cache, self.layer_idx,
                     cu_seqlens)
        return self.output(o, hidden_states)

    def qkv_heads(self, qkv: torch.Tensor, cache, cu_seqlens: torch.Tensor | None):
        """``qkv [B, T, 2 key_dim + value_dim]`` (q|k|v before the conv) -> ``q, k [B, T, Hv, dk]`` (conv, then
        ``q / ||q||``, ``k / ||k||``; each q/k head repeated over its group of value heads) and ``v [B, T, Hv, dv]``."""
        qkv = self.conv(qkv, cache, self.layer_idx, cu_seqlens)
        q, k, v = qk_normalized_heads(qkv, self.num_k_heads, self.head_k_dim, self.head_v_dim)
        if self.num_v_heads != self.num_k_heads:
            group = self.num_v_heads // self.num_k_heads
            q, k = q.repeat_interleave(group, dim=2), k.repeat_interleave(group, dim=2)
        return q, k, v


@register_mixer("gated_deltanet", "linear_attention", "conv state + recurrent state [B, H, dk, dv]", linear=True)
class GatedDeltaNet(DeltaRuleMixer):
    """``hidden_states [B, T, hidden] -> [B, T, hidden]``; heads as :class:`DeltaRuleMixer`. State per value head:
    ``[dk, dv]``.
    """

    chunk_op, recurrent_op = staticmethod(chunk_gated_delta_rule), staticmethod(recurrent_gated_delta_rule)

    def __init__(self, config, layer_idx: int):
        super().__init__(config, layer_idx)
        hidden = config.hidden_size
        self.in_proj_qkv = nn.Linear(hidden, 2 * self.key_dim + self.value_dim, bias=False)
        self.in_proj_z = nn.Linear(hidden, self.value_dim, bias=False)
        self.in_proj_b = nn.Linear(hidden, self.num_v_heads, bias=False)
        self.in_proj_a = nn.Linear(hidden, self.num_v_heads, bias=False)
        self.conv = ShortConvolution(2 * self.key_dim + self.value_dim, config.linear_conv_kernel_dim)
        self.A_log = nn.Parameter(torch.zeros(self.num_v_heads))
        self.dt_bias = nn.Parameter(torch.zeros(self.num_v_heads))
        self.beta_scale = 2.0 if config.linear_allow_neg_eigval else 1.0  # beta in [0, 2]: I - beta k k^T may flip
        norm_eps = config.rms_norm_eps if config.linear_norm_eps is None else config.linear_norm_eps
        self.norm = GatedRMSNorm(self.head_v_dim, eps=norm_eps)
        self.out_proj = nn.Linear(self.value_dim, hidden, bias=False)
        self.init_mixer_weights()

    def project_qkv(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """``[B, T, hidden] -> [B, T, 2 key_dim + value_dim]``: ``W_q x | W_k x | W_v x`` in one projection."""
        return self.in_proj_qkv(hidden_states)

    def gates(self, hidden_states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``g = -exp(A_log) * softplus(W_a x + dt_bias)``, ``beta = sigmoid(W_b x)`` (times 2 with
        linear_allow_neg_eigval), both ``[B, T, Hv]`` fp32."""
        beta = write_strength(self.in_proj_b(hidden_states), self.beta_scale)
        g = -self.A_log.float().exp() * F.softplus(self.in_proj_a(hidden_states).float() + self.dt_bias.float())
        return g, beta

    def output(self, o: torch.Tensor, hidden_states: torch.Tensor) -> torch.Tensor:
        """``o [B, T, Hv, dv] -> W_out(RMSNorm(o) * SiLU(W_z x)) [B, T, hidden]``."""
        batch, seq_len, _ = hidden_states.shape
        z = self.in_proj_z(hidden_states).view(batch, seq_len, self.num_v_heads, self.head_v_dim)
        return self.out_proj(self.norm(o, z).reshape(batch, seq_len, self.value_dim))
