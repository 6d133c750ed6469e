"""HGRN-2 mixer (Qin et al., arXiv 2404.07904): gated linear RNN with state expansion, on ``chunk_gla``.

    f_t = lb + (1 - lb) * sigmoid(W_f x_t)         forget gate, per state channel, lower-bounded
    k_t = 1 - f_t,  q_t = SiLU(W_q x_t),  i_t = W_i x_t
    S_t = Diag(f_t) S_{t-1} + k_t i_t^T,  o_t = S_t^T q_t     (memlm.ops.chunk_gla with g = log f)
    y   = W_o RMSNorm(o)

The lower bound ``lb`` rises with depth: ``softmax(lower_bounds, 0).cumsum(0) - softmax(...)[0]``,
one row per HGRN-2 layer, 0 at the first (:class:`ForgetLowerBounds`, held by the model and passed to every
layer, which computes its own row inside its forward, so a checkpointed layer recomputes it).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from memlm.layers.inputs import MixerInputs
from memlm.layers.linear_cache import masked_and_previous_state, run_rule
from memlm.layers.norm import RMSNorm
from memlm.layers.padding import RecurrentMixer
from memlm.layers.registry import register_mixer
from memlm.ops.gla import chunk_gla, recurrent_gla


class ForgetLowerBounds(nn.Module):
    """The learned, depth-increasing lower bounds of the HGRN-2 forget gates: ``[num_layers, forget_dim]``."""

    def __init__(self, num_layers: int, forget_dim: int):
        super().__init__()
        self.lower_bounds = nn.Parameter(torch.zeros(num_layers, forget_dim))

    def forward(self) -> torch.Tensor:
        probs = self.lower_bounds.float().softmax(0)
        return probs.cumsum(0) - probs[0]


@register_mixer("hgrn2", "linear_attention", "recurrent state [B, H, dk, dv]", linear=True)
class HGRN2(RecurrentMixer):
    """``hidden_states [B, T, hidden] -> [B, T, hidden]``.

    ``linear_num_key_heads`` heads; each has a forget/query/key dimension ``linear_key_head_dim`` (the
    state expansion) and an input dimension ``linear_value_head_dim``. State per head ``[dk, dv]``.
    """

    def __init__(self, config, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.num_heads = config.linear_num_key_heads
        self.head_f_dim = config.linear_key_head_dim
        self.head_i_dim = config.linear_value_head_dim
        self.forget_dim = self.num_heads * self.head_f_dim
        self.input_dim = self.num_heads * self.head_i_dim
        self.q_proj = nn.Linear(config.hidden_size, self.forget_dim, bias=False)
        self.f_proj = nn.Linear(config.hidden_size, self.forget_dim, bias=False)
        self.i_proj = nn.Linear(config.hidden_size, self.input_dim, bias=False)
        self.g_norm = RMSNorm(self.input_dim, eps=config.rms_norm_eps)
        self.o_proj = nn.Linear(self.input_dim, config.hidden_size, bias=False)
        # this layer's row of the model's ForgetLowerBounds (a chained copy keeps it: cola.chain)
        self.lower_bound_row = config.layers_of_mixer("hgrn2").index(layer_idx)

    def mix(self, hidden_states: torch.Tensor, mask: torch.Tensor | None, inputs: MixerInputs) -> torch.Tensor:
        """``inputs.forget_lower_bounds``: the model's :class:`ForgetLowerBounds`; the first HGRN-2 layer's row is
        0, so it has no bound."""
        cache, cu_seqlens, forget_lower_bounds = inputs.cache, inputs.cu_seqlens, inputs.forget_lower_bounds
        lower_bound = (
            forget_lower_bounds()[self.lower_bound_row]
            if forget_lower_bounds is not None and self.lower_bound_row > 0 else None
        )
        batch, seq_len, _ = hidden_states.shape
        # padding never enters the state (g = k = 0 there, below)
        hidden_states, recurrent_state = masked_and_previous_state(hidden_states, mask, cache, self.layer_idx)

        shape = (batch, seq_len, self.num_heads, -1)
        q = F.silu(self.q_proj(hidden_states)).view(shape)
        f = self.f_proj(hidden_states).float()
        # log f_t; the first layer has no bound, and logsigmoid stays finite for any f
        g = F.logsigmoid(f) if lower_bound is None else torch.log(lower_bound + (1 - lower_bound) * f.sigmoid())
        k = -torch.expm1(g)  # 1 - f_t
        if mask is not None:
            g, k = g * mask[..., None], k * mask[..., None]
        g, k = g.view(shape), k.view(shape).to(q.dtype)
        v = self.i_proj(hidden_states).view(shape)

        o = run_rule(chunk_gla, recurrent_gla, (q, k, v, g), recurrent_state, cache, self.layer_idx, cu_seqlens)
        return self.o_proj(self.g_norm(o.reshape(batch, seq_len, self.input_dim)))
