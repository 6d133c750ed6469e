"""The token-by-token recurrence behind the ``naive_*`` references (and the CPU decoding path) of the
linear-recurrence ops; each document of a packed row restarts from its own state."""

from __future__ import annotations

from collections.abc import Callable
from itertools import pairwise

import torch


def recurrent_scan(
    step: Callable[..., torch.Tensor],
    q: torch.Tensor,
    per_token: tuple[torch.Tensor, ...],
    value_dim: int,
    scale: float,
    initial_state: torch.Tensor | None,
    output_final_state: bool,
    cu_seqlens: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Token-by-token recurrence shared by the reference ops; each document restarts from its own state.

    Args:
        step: ``step(state, *token_inputs) -> state`` advances the fp32 state ``[B, H, dk, dv]`` by one
            token; ``token_inputs`` are the slices ``[B, H, ...]`` (fp32) of ``per_token`` at that token.
        q: ``[B, T, H, dk]``; the output is ``o_t = S_t^T (scale * q_t)``.
        per_token: the other ``[B, T, ...]`` inputs (k, v, gates).
        value_dim: dv.

    Returns:
        ``o`` ``[B, T, H, dv]`` in q's dtype and ``final_state`` ``[N, H, dk, dv]`` or None.
    """
    batch, _, heads, dk = q.shape
    outputs, finals = [], []
    docs = zip(*(split_documents(x, cu_seqlens) for x in (q, *per_token)), strict=True)
    for doc, (q_d, *inputs) in enumerate(docs):
        if initial_state is None:
            state = q.new_zeros(q_d.shape[0], heads, dk, value_dim, dtype=torch.float32)
        else:
            state = (initial_state[doc : doc + 1] if cu_seqlens is not None else initial_state).float()
        for t in range(q_d.shape[1]):
            state = step(state, *(x[:, t].float() for x in inputs))
            outputs.append(torch.einsum("bhkv,bhk->bhv", state, q_d[:, t].float() * scale))
        finals.append(state)
    o = torch.stack(outputs, dim=1) if outputs else q.new_zeros(batch, 0, heads, value_dim)
    return o.to(q.dtype), torch.cat(finals, dim=0) if output_final_state else None


def split_documents(x: torch.Tensor, cu_seqlens: torch.Tensor | None) -> list[torch.Tensor]:
    """``[1, T, ...]`` packed row -> list of ``[1, T_i, ...]`` documents (or ``[x]`` without ``cu_seqlens``)."""
    if cu_seqlens is None:
        return [x]
    offsets = cu_seqlens.tolist()
    return [x[:, start:end] for start, end in pairwise(offsets)]
