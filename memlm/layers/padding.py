"""Padding and packing: the contract of the recurrent mixers (:class:`RecurrentMixer`) and its helpers.

The helpers move each row's left pads to its right end (and back), so that a
recurrent state or a chunk grid starts at the row's first real token and no pad ever enters a state."""

from __future__ import annotations

import torch
from torch import nn


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



def padding_mask_for(attention_mask: torch.Tensor | None, seq_len: int) -> torch.Tensor | None:
    """The ``[B, T]`` 0/1 mask of the current ``seq_len`` tokens, or None when nothing is padded."""
    if attention_mask is None:
        return None
    mask = attention_mask[:, -seq_len:]
    return None if bool(mask.all()) else mask


class RecurrentMixer(nn.Module):
    """Base of every mixer that keeps a state instead of per-token keys (``"linear_attention"`` and ``"conv"``
    layers), and the written contract each of them keeps.

    The contract:

    * **Left padding never enters a state.** ``mix`` gets the ``[B, T]`` padding mask of the current tokens
      (None when nothing is padded) and must make padded positions contribute nothing to any conv window,
      recurrent state or memory (zero their inputs, keys or gates, or move the pads out of the way with
      :func:`left_pad_shifts` / :func:`roll_rows`), so a left-padded row gives the outputs of the row alone.
    * **Packed documents never share a state.** With packed training rows (``inputs.cu_seqlens``), ``mix`` gets
      the ``[B, T]`` rows as one sequence ``[1, B * T]`` and must restart every state at each offset of
      ``inputs.cu_seqlens`` (the ops take ``cu_seqlens``); there is no padding mask then.

    Subclasses implement ``mix(hidden_states, padding_mask, inputs) -> [same shape as hidden_states]``.
    """

    def forward(self, hidden_states: torch.Tensor, inputs) -> torch.Tensor:
        """``hidden_states [B, T, hidden] -> [B, T, hidden]``; ``inputs``: :class:`~memlm.layers.inputs.MixerInputs`."""
        if inputs.cu_seqlens is None:
            return self.mix(hidden_states, padding_mask_for(inputs.attention_mask, hidden_states.shape[1]), inputs)
        rows = hidden_states.shape
        packed = self.mix(hidden_states.reshape(1, -1, rows[-1]), None, inputs.as_one_sequence(rows[0]))
        return packed.reshape(rows)
