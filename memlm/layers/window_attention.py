"""Local softmax attention for the Titans layers: a sliding window (MAG) or the current segment (MAC).

Unlike :class:`memlm.layers.attention.Attention`, which leaves masks and keys to transformers' cache,
this attention keeps its own key/value window and builds its own mask from each token's index among
its row's real tokens (pads excluded), so a left-padded row attends exactly as it would alone:

    sliding window W:  query i sees key j  iff  0 <= i - j < W
    segment of n:      query i sees key j  iff  j <= i  and  i // n == j // n

plus ``num_persistent`` learned tokens (Titans' persistent memory) that every query sees. Keys may come
in several streams with the same indices (MAC adds the memory's retrievals as a second stream).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F
from transformers import initialization as init

from memlm.layers.rotary import apply_rotary


@dataclass
class WindowState:
    """Keys and values kept for later tokens: ``keys/values [B, Hkv, S, d]``, ``index [B, S]`` (real-token
    index, -1 for pads), ``seen [B]`` real tokens read."""

    keys: torch.Tensor
    values: torch.Tensor
    index: torch.Tensor
    seen: torch.Tensor

    def map(self, fn) -> WindowState:
        return WindowState(fn(self.keys), fn(self.values), fn(self.index), fn(self.seen))


class WindowAttention(nn.Module):
    """``x [B, T, hidden] -> [B, T, hidden]`` with RoPE and grouped-query heads.

    Args: ``window`` (sliding) or ``segment`` (exactly one), ``num_persistent`` learned tokens.
    """

    def __init__(self, config, window: int | None = None, segment: int | None = None, num_persistent: int = 0):
        super().__init__()
        if (window is None) == (segment is None):
            raise ValueError("WindowAttention needs exactly one of window or segment")
        self.window, self.segment = window, segment
        self.head_dim = config.head_dim
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = config.num_key_value_heads
        hidden, bias = config.hidden_size, config.attention_bias
        self.q_proj = nn.Linear(hidden, self.num_heads * self.head_dim, bias=bias)
        self.k_proj = nn.Linear(hidden, self.num_kv_heads * self.head_dim, bias=bias)
        self.v_proj = nn.Linear(hidden, self.num_kv_heads * self.head_dim, bias=bias)
        self.o_proj = nn.Linear(self.num_heads * self.head_dim, hidden, bias=bias)
        self.persistent = nn.Parameter(torch.randn(num_persistent, hidden) * 0.02) if num_persistent else None

    @torch.no_grad()
    def init_mixer_weights(self) -> None:
        if self.persistent is not None:
            init.normal_(self.persistent, std=0.02)

    def _heads(self, proj: nn.Linear, x: torch.Tensor) -> torch.Tensor:
        batch, length, _ = x.shape
        return proj(x).view(batch, length, -1, self.head_dim).transpose(1, 2)

    def token_index(self, mask: torch.Tensor | None, state: WindowState | None, batch: int, length: int, device):
        """``[B, T]`` index of every token among its row's real tokens (-1 for pads)."""
        seen = state.seen if state is not None else torch.zeros(batch, dtype=torch.long, device=device)
        live = torch.ones(batch, length, dtype=torch.long, device=device) if mask is None else mask.long()
        index = seen[:, None] + live.cumsum(-1) - 1
        return torch.where(live.bool(), index, torch.full_like(index, -1))

    def forward(
        self,
        x: torch.Tensor,
        position_embeddings: tuple[torch.Tensor, torch.Tensor],
        mask: torch.Tensor | None = None,
        state: WindowState | None = None,
        extra_keys: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, WindowState]:
        """``x [B, T, hidden]``; ``extra_keys [B, T, hidden]``: a second key/value stream at the same indices.

        Returns the output ``[B, T, hidden]`` and the key/value window for later calls.
        """
        batch, length, _ = x.shape
        cos, sin = position_embeddings
        index = self.token_index(mask, state, batch, length, x.device)
        query = apply_rotary(self._heads(self.q_proj, x), cos, sin)
        streams = [x] if extra_keys is None else [extra_keys, x]
        keys = torch.cat([apply_rotary(self._heads(self.k_proj, s), cos, sin) for s in streams], dim=2)
        values = torch.cat([self._heads(self.v_proj, s) for s in streams], dim=2)
        key_index = index.repeat(1, len(streams))
        if state is not None:
            keys = torch.cat([state.keys, keys], dim=2)
            values = torch.cat([state.values, values], dim=2)
            key_index = torch.cat([state.index, key_index], dim=1)

        q_i, k_i = index[:, :, None], key_index[:, None, :]
        if self.window is not None:
            allowed = (k_i >= 0) & (k_i <= q_i) & (q_i - k_i < self.window)
        else:
            allowed = (k_i >= 0) & (k_i <= q_i) & (q_i // self.segment == k_i // self.segment)
        allowed = allowed | (q_i < 0)  # a pad's query attends anywhere (its output is never used)
        if self.persistent is not None:
            p_keys = self._heads(self.k_proj, self.persistent[None].expand(batch, -1, -1))
            p_values = self._heads(self.v_proj, self.persistent[None].expand(batch, -1, -1))
            keys, values = torch.cat([p_keys, keys], dim=2), torch.cat([p_values, values], dim=2)
            allowed = torch.cat([allowed.new_ones(batch, length, p_keys.shape[2]), allowed], dim=-1)
        group = self.num_heads // self.num_kv_heads
        out = F.scaled_dot_product_attention(
            query, keys.repeat_interleave(group, dim=1).to(query.dtype),
            values.repeat_interleave(group, dim=1).to(query.dtype), attn_mask=allowed[:, None],
        )
        out = self.o_proj(out.transpose(1, 2).reshape(batch, length, -1))

        # keep what later queries may still see: the last `window` indices, or the current segment
        seen = index.max(dim=1).values.clamp_min(-1) + 1
        if state is not None:
            seen = torch.maximum(seen, state.seen)
        span = self.window if self.window is not None else self.segment
        kept_keys = keys[:, :, -key_index.shape[1]:] if self.persistent is not None else keys
        kept_values = values[:, :, -key_index.shape[1]:] if self.persistent is not None else values
        if self.window is not None:
            keep = (key_index >= 0) & (key_index >= seen[:, None] - span)
        else:
            keep = (key_index >= 0) & (key_index // span == seen[:, None] // span)
        width = max(int(keep.sum(-1).max()), 1)
        order = torch.argsort(keep.long(), dim=1, stable=True)[:, -width:]  # kept columns, in order, last
        gather = order[:, None, :, None].expand(-1, kept_keys.shape[1], -1, kept_keys.shape[-1])
        new_index = torch.where(keep.gather(1, order), key_index.gather(1, order), torch.full_like(order, -1))
        new_state = WindowState(kept_keys.gather(2, gather), kept_values.gather(2, gather), new_index, seen)
        return out, new_state
