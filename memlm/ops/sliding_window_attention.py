"""Causal sliding-window softmax attention in blocks: linear in the sequence length.

Query ``i`` sees key ``j`` iff ``0 <= i - j < W`` (transformers' ``sliding_window=W``). A dense ``[T, T]`` mask
makes SDPA spend ``T^2`` work for ``T * W`` useful scores. Cut the queries into blocks of ``W``: every key a
query of block ``b`` may see lies in blocks ``b - 1`` and ``b``, so

    O_b = softmax(Q_b [K_{b-1}; K_b]^T * scaling + M) [V_{b-1}; V_b]                       (1)

with one ``[W, 2W]`` band mask ``M`` for every block (query ``r`` of the block, key ``c`` of the pair:
``0 <= (r + W) - c < W``); block ``-1`` is zeros, fully masked. Work ``2 W T`` per head instead of ``T^2``.

:func:`chunk_sliding_window_attention` (training, prefill) computes (1); :func:`naive_sliding_window_attention` is
the dense reference. Inputs and outputs are ``[B, T, H, D]``. There is no ``recurrent_*`` form: decoding reads the
layer's KV cache through transformers' attention functions.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F


def _heads_first(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor):
    """``[B, T, H, d]`` query and ``[B, T, Hkv, d]`` key/value -> ``[B, H, T, d]`` each, keys repeated per group."""
    groups = query.shape[2] // key.shape[2]
    key, value = (t.transpose(1, 2).repeat_interleave(groups, dim=1) for t in (key, value))
    return query.transpose(1, 2), key, value


def chunk_sliding_window_attention(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, window: int, scaling: float
) -> torch.Tensor:
    """Equation (1), block by block:

        O_b = softmax(Q_b [K_{b-1}; K_b]^T * scaling + M) [V_{b-1}; V_b]

    ``query [B, T, H, d]``, ``key/value [B, T, Hkv, d]`` (H a multiple of Hkv; queries and keys at the same
    positions, no padding) -> ``[B, T, H, d]``."""
    query, key, value = _heads_first(query, key, value)
    batch, heads, seq_len, dim = query.shape
    blocks = -(-seq_len // window)
    pad = blocks * window - seq_len
    query, key, value = (
        F.pad(t, (0, 0, 0, pad)).reshape(batch, heads, blocks, window, -1) for t in (query, key, value)
    )
    previous = (F.pad(t, (0, 0, 0, 0, 1, 0))[:, :, :-1] for t in (key, value))  # block b - 1 (zeros before the first)
    key, value = (torch.cat([before, now], dim=3) for before, now in zip(previous, (key, value), strict=True))
    rows = torch.arange(window, device=query.device)[:, None] + window
    columns = torch.arange(2 * window, device=query.device)[None, :]
    band = (rows - columns >= 0) & (rows - columns < window)  # [W, 2W]
    first = band.clone()
    first[:, :window] = False  # the zeros before the sequence
    mask = torch.stack([first, *([band] * (blocks - 1))])  # [blocks, W, 2W]
    out = F.scaled_dot_product_attention(query, key, value, attn_mask=mask, scale=scaling)
    return out.reshape(batch, heads, blocks * window, dim)[:, :, :seq_len].transpose(1, 2)


def naive_sliding_window_attention(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, window: int, scaling: float
) -> torch.Tensor:
    """The reference: one dense masked softmax attention,

        o_i = sum_{0 <= i - j < W} softmax_j(q_i . k_j * scaling) v_j

    Same shapes as :func:`chunk_sliding_window_attention`."""
    query, key, value = _heads_first(query, key, value)
    positions = torch.arange(query.shape[2], device=query.device)
    distance = positions[:, None] - positions[None, :]
    weights = (query @ key.transpose(-1, -2) * scaling).masked_fill((distance < 0) | (distance >= window), -torch.inf)
    return (weights.softmax(-1) @ value).transpose(1, 2)
