"""Padding helpers of the mixers: move each row's left pads to its right end (and back), so that a
recurrent state or a chunk grid starts at the row's first real token and no pad ever enters a state."""

from __future__ import annotations

import torch


def roll_rows(x: torch.Tensor, shifts: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """Roll every row ``b`` of ``x`` (batch first) by ``shifts[b]`` along ``dim``."""
    length = x.shape[dim]
    index = (torch.arange(length, device=x.device)[None, :] - shifts[:, None]) % length  # [B, T]
    shape = [x.shape[0]] + [1] * (x.dim() - 1)
    shape[dim] = length
    return x.gather(dim, index.view(shape).expand_as(x))


def left_pad_shifts(mask: torch.Tensor | None) -> torch.Tensor | None:
    """For a ``[B, T]`` 0/1 mask, the per-row shifts that move left pads to the right (None if no row has any).

    Raises ValueError for a row padded on both sides.
    """
    if mask is None:
        return None
    real = mask.long().sum(-1)
    left_padded = (mask[:, 0] == 0) & (real > 0)
    if bool((left_padded & (mask[:, -1] == 0)).any()):
        raise ValueError("attention_mask: the pads of a row must all be on its left or all on its right")
    if not bool(left_padded.any()):
        return None
    return torch.where(left_padded, real - mask.shape[1], torch.zeros_like(real))

