"""Argument checks shared by the linear-recurrence ops (laid out ``[B, T, H, D]``, optional ``cu_seqlens``)."""

from __future__ import annotations

from itertools import pairwise

import torch


def check_linear_inputs(
    op: str,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    gates: dict[str, tuple[torch.Tensor | None, tuple[int, ...]]],
    initial_state: torch.Tensor | None,
    cu_seqlens: torch.Tensor | None,
) -> int:
    """Validate the arguments of a linear-recurrence op and return the number of sequences.

    Args:
        op: name of the op, used in error messages.
        q, k: ``[B, T, H, dk]``; v: ``[B, T, H, dv]``.
        gates: ``name -> (tensor, expected shape)`` for the gate tensors (``g``, ``beta``).
        initial_state: ``[N, H, dk, dv]`` where N is B, or the number of documents with ``cu_seqlens``.
        cu_seqlens: ``[N + 1]`` integer offsets, starting at 0 and ending at T; only with B == 1.

    Raises:
        ValueError: naming the argument, its value and what is allowed.
    """
    if q.dim() != 4:
        raise ValueError(f"{op}: q must be [B, T, H, dk], got shape {tuple(q.shape)}")
    if k.shape != q.shape:
        raise ValueError(f"{op}: k must have q's shape {tuple(q.shape)}, got {tuple(k.shape)}")
    if v.dim() != 4 or v.shape[:3] != q.shape[:3]:
        raise ValueError(f"{op}: v must be [B, T, H, dv] with B, T, H = {tuple(q.shape[:3])}, got {tuple(v.shape)}")
    for name, (tensor, shape) in gates.items():
        if tensor is None:
            raise ValueError(f"{op}: {name} is required, with shape {shape}")
        if tuple(tensor.shape) != shape:
            raise ValueError(f"{op}: {name} must have shape {shape}, got {tuple(tensor.shape)}")
    batch, seq_len, heads, dk = q.shape
    num_seqs = batch
    if cu_seqlens is not None:
        if batch != 1:
            raise ValueError(f"{op}: cu_seqlens needs a batch of one packed row, got batch size {batch}")
        if cu_seqlens.dim() != 1 or cu_seqlens.numel() < 2 or cu_seqlens.dtype.is_floating_point:
            raise ValueError(f"{op}: cu_seqlens must be a 1-D integer tensor [N + 1], got {cu_seqlens!r}")
        offsets = cu_seqlens.tolist()
        if offsets[0] != 0 or offsets[-1] != seq_len or any(b < a for a, b in pairwise(offsets)):
            raise ValueError(
                f"{op}: cu_seqlens must rise from 0 to the sequence length {seq_len}, got {offsets}"
            )
        num_seqs = len(offsets) - 1
    if initial_state is not None:
        expected = (num_seqs, heads, dk, v.shape[-1])
        if tuple(initial_state.shape) != expected:
            raise ValueError(f"{op}: initial_state must have shape {expected}, got {tuple(initial_state.shape)}")
    return num_seqs
