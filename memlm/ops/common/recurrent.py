"""The token-by-token recurrence behind the ``naive_*`` references of the linear-recurrence ops (each document of a
packed row restarts from its own state), and the one-token step their ``recurrent_*`` forms decode with on the
torch path (:func:`recurrent_step`: a handful of batched ops for every row and head, the state updated in place)."""

from __future__ import annotations

from collections.abc import Callable
from itertools import pairwise

import torch

from memlm.ops.common.fla import needs_backward


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


def is_single_step(q: torch.Tensor, cu_seqlens: torch.Tensor | None) -> bool:
    """Whether a ``recurrent_*`` op is one decoding step: one token per row (``q [B, 1, H, dk]``), no packed
    documents; :func:`recurrent_step` then serves it."""
    return q.shape[1] == 1 and cu_seqlens is None


def recurrent_step(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor | None,
    scale: float,
    initial_state: torch.Tensor | None,
    beta: torch.Tensor | None = None,
    in_place: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One token of a linear recurrence for every row and head at once (decoding; no loop over rows or heads):

        S' = exp(g) * S                                   the decay: per head, or per key channel (Diag(exp(g)) S)
        S' = S' + beta k (v - S'^T k)^T                   the delta rule (with ``beta``), or S' + k v^T (without)
        o  = S'^T (scale q)

    Args:
        q, k: ``[B, 1, H, dk]``; v: ``[B, 1, H, dv]``.
        g: log decay ``[B, 1, H]`` (per head) or ``[B, 1, H, dk]`` (per key channel), or None (no decay).
        scale: the query scale.
        initial_state: ``[B, H, dk, dv]`` (None: zeros).
        beta: ``[B, 1, H]`` write strength of the delta rule, or None (a plain write ``k v^T``).
        in_place: write ``S'`` into ``initial_state`` (fp32) instead of a new tensor (see :func:`check_in_place`).

    Returns:
        ``o`` ``[B, 1, H, dv]`` fp32 and ``S'`` ``[B, H, dk, dv]`` fp32 (``initial_state`` itself when ``in_place``).
    """
    q, k, v = (x.float().transpose(1, 2) for x in (q, k, v))  # [B, H, 1, d]
    batch, heads, _, dk = k.shape
    if initial_state is None:
        state = k.new_zeros(batch, heads, dk, v.shape[-1])
    else:
        state = initial_state if in_place else initial_state.float()
    if g is not None:
        decay = g.float().exp().reshape(batch, heads, -1, 1)  # [B, H, 1, 1] or [B, H, dk, 1]
        state = state.mul_(decay) if in_place else state * decay
    if beta is not None:
        v = (v - k @ state) * beta.float().transpose(1, 2)[..., None]  # beta (v - S'^T k), [B, H, 1, dv]
    # + the outer product k v^T: [B, H, dk, 1] x [B, H, 1, dv]
    state = state.addcmul_(k.transpose(-1, -2), v) if in_place else torch.addcmul(state, k.transpose(-1, -2), v)
    return ((q * scale) @ state).transpose(1, 2), state


def check_in_place(op: str, inplace_final_state: bool, initial_state: torch.Tensor | None,
                   *inputs: torch.Tensor | None) -> None:
    """``inplace_final_state`` (write the final state into ``initial_state``, so decoding never reallocates its
    cached state) needs an fp32 ``initial_state`` and no gradient through it or the ``inputs`` (an in-place
    write would change what autograd saved). Raises ValueError naming what is missing."""
    if not inplace_final_state:
        return
    if initial_state is None or initial_state.dtype != torch.float32:
        got = None if initial_state is None else initial_state.dtype
        raise ValueError(f"{op}: inplace_final_state=True needs an fp32 initial_state to write into, got {got}")
    if needs_backward(initial_state, *inputs):
        raise ValueError(f"{op}: inplace_final_state=True needs inputs without gradients (run under torch.no_grad() "
                         "or pass inplace_final_state=False)")


def kept_final_state(final_state: torch.Tensor | None, initial_state: torch.Tensor | None, inplace_final_state: bool,
                     output_final_state: bool) -> torch.Tensor | None:
    """What a ``recurrent_*`` op returns as its final state: with ``inplace_final_state``, ``initial_state`` holding
    ``final_state`` (copied there unless the op wrote it in place); None without ``output_final_state``."""
    if inplace_final_state and final_state is not initial_state:
        final_state = initial_state.copy_(final_state)
    return final_state if output_final_state else None
