"""Based linear-attention mixer (Arora et al., arXiv 2402.18668), ``linear_attn_type="based"``.

    q = W_q x,  k = W_k x   per head, of the small feature dimension d = linear_key_head_dim (16 in the paper)
    v = W_v x               per head, linear_value_head_dim
    o = chunk_based(q, k, v)                normalized, phi = 2nd-order Taylor map of exp (memlm.ops.based)
    y = W_o o

The state per head is ``[1 + d + d^2, dv + 1]`` (numerator | denominator), kept in transformers'
linear-attention cache layer like the other linear mixers'.
"""

from __future__ import annotations

import torch
from torch import nn

from memlm.layers.inputs import MixerInputs
from memlm.layers.linear_cache import decodes_in_place, previous_recurrent_state, store_recurrent_state
from memlm.layers.padding import RecurrentMixer
from memlm.layers.registry import register_mixer
from memlm.ops.based import chunk_based, recurrent_based


@register_mixer("based", "linear_attention", "recurrent state [B, H, 1 + d + d^2, dv + 1]", linear=True)
class BasedLinearAttention(RecurrentMixer):
    """``hidden_states [B, T, hidden] -> [B, T, hidden]``; ``linear_num_key_heads`` heads."""

    def __init__(self, config, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.num_heads = config.linear_num_key_heads
        self.feature_dim = config.linear_key_head_dim
        self.head_v_dim = config.linear_value_head_dim
        hidden = config.hidden_size
        self.q_proj = nn.Linear(hidden, self.num_heads * self.feature_dim, bias=False)
        self.k_proj = nn.Linear(hidden, self.num_heads * self.feature_dim, bias=False)
        self.v_proj = nn.Linear(hidden, self.num_heads * self.head_v_dim, bias=False)
        self.o_proj = nn.Linear(self.num_heads * self.head_v_dim, hidden, bias=False)

    def mix(self, hidden_states: torch.Tensor, mask: torch.Tensor | None, inputs: MixerInputs) -> torch.Tensor:
        batch, seq_len, _ = hidden_states.shape
        cache = inputs.cache
        recurrent_state = previous_recurrent_state(cache, self.layer_idx)
        shape = (batch, seq_len, self.num_heads, -1)
        q, k, v = (proj(hidden_states).view(shape) for proj in (self.q_proj, self.k_proj, self.v_proj))
        op_kwargs = {"initial_state": recurrent_state, "output_final_state": cache is not None,
                     "cu_seqlens": inputs.cu_seqlens, "key_mask": mask}
        o, final_state = self.attend(hidden_states, q, k, v, op_kwargs, inputs)
        if cache is not None:
            store_recurrent_state(cache, self.layer_idx, final_state)
        return self.o_proj(o.reshape(batch, seq_len, -1))

    def attend(
        self, hidden_states, q, k, v, op_kwargs: dict, inputs: MixerInputs
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The attention op on ``q, k [B, T, H, d]``, ``v [B, T, H, dv]`` -> ``(o [B, T, H, dv], final state)``:
        the recurrent form for one token after a cached state (decoding), else the chunked form."""
        state = op_kwargs["initial_state"]
        if state is None or q.shape[1] != 1:
            return chunk_based(q, k, v, **op_kwargs)
        return recurrent_based(q, k, v, inplace_final_state=decodes_in_place(inputs.cache, state, q, k, v), **op_kwargs)
