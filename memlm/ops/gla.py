"""Gated linear attention with a per-key-channel decay (GLA, arXiv 2312.06635; HGRN-2, arXiv 2404.07904).

Per head, with a state ``S`` of shape ``[dk, dv]``:

    S_t = Diag(exp(g_t)) S_{t-1} + k_t v_t^T                                    (1)
    o_t = S_t^T (scale * q_t)                                                   (2)

The chunkwise form: inside a chunk of C tokens with the per-channel cumulative log decay
``G_i = g_1 + ... + g_i`` (a vector of dk entries),

    A_ij = sum_c q_ic k_jc exp(G_ic - G_jc)   (j <= i, else 0)                  (3)
    O    = (Q * exp(G)) S + A V                                                 (4)
    S'   = Diag(exp(G_C)) S + (K * exp(G_C - G))^T V                            (5)

Only (5) runs sequentially over chunks; (3) and (4) are batched over the chunks of a block
(:mod:`memlm.ops.common.blocks`). (3) is computed without
ever forming ``exp(-G)`` (which strong decay, g ~ -11 per token, makes unrepresentable): sub-chunk by sub-chunk,
every exponent <= 0 (:func:`memlm.ops.common.decay.decayed_scores`).

:func:`chunk_gla` (training, prefill) computes (3)-(5), :func:`recurrent_gla` (decoding) and :func:`naive_gla`
(the reference) compute (1)-(2) token by token; on CUDA with fla installed the first two run fla's kernels.
"""

from __future__ import annotations

import math
from functools import partial

import torch

from memlm.ops.common.blocks import block_tokens, run_in_blocks
from memlm.ops.common.checks import check_linear_inputs
from memlm.ops.common.chunking import ChunkLayout, from_chunks, to_chunks
from memlm.ops.common.decay import SUB_CHUNK, decayed_scores
from memlm.ops.common.fla import use_fla
from memlm.ops.common.recurrent import (
    check_in_place,
    is_single_step,
    kept_final_state,
    recurrent_scan,
    recurrent_step,
)
from memlm.ops.common.scan import scan_chunks


def _checked_scale(op: str, q, k, v, g, scale: float | None, initial_state, cu_seqlens) -> float:
    """Validate the arguments of ``op`` (ValueError naming the bad one) and return the query scale (default
    ``dk ** -0.5``)."""
    check_linear_inputs(op, q, k, v, {"g": (g, tuple(q.shape[:3]) + (q.shape[-1],))}, initial_state, cu_seqlens)
    return q.shape[-1] ** -0.5 if scale is None else scale


def chunk_gla(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    cu_seqlens: torch.Tensor | None = None,
    chunk_size: int = 64,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Gated linear attention over a whole sequence, chunk by chunk (training and prefill): per chunk, (3)-(5),

        O = (Q * exp(G)) S + A V,   A_ij = sum_c q_ic k_jc exp(G_ic - G_jc) (j <= i),
        S' = Diag(exp(G_C)) S + (K * exp(G_C - G))^T V

    Args:
        q, k: ``[B, T, H, dk]``.
        v: ``[B, T, H, dv]``.
        g: ``[B, T, H, dk]`` log decay per key channel (<= 0); any strength, e.g. -11 per token.
        scale: query scale, default ``dk ** -0.5``.
        initial_state: ``[N, H, dk, dv]``, N = B, or the number of documents with ``cu_seqlens``.
        output_final_state: also return the state after the last token of each sequence.
        cu_seqlens: ``[N + 1]`` offsets of packed documents in a batch of one row.
        chunk_size: tokens per chunk of the torch path.

    Returns:
        ``o`` ``[B, T, H, dv]`` in q's dtype, and ``final_state`` ``[N, H, dk, dv]`` (fp32) or None.
    """
    scale = _checked_scale("chunk_gla", q, k, v, g, scale, initial_state, cu_seqlens)
    if use_fla(q, k, v):
        from fla.ops.gla import chunk_gla as fla_chunk_gla

        return fla_chunk_gla(
            q, k, v, g=g, scale=scale, initial_state=initial_state,
            output_final_state=output_final_state, cu_seqlens=cu_seqlens,
        )
    tokens = block_tokens(q.shape[0], q.shape[2], 2 * q.shape[-1] + v.shape[-1], chunk_size)
    step = partial(_chunk_block, scale=scale, chunk_size=chunk_size)
    o, final_state = run_in_blocks(step, (q, k, v, g), initial_state, cu_seqlens, tokens)
    return o, final_state if output_final_state else None


def _chunk_block(tensors: list[torch.Tensor], initial_state: torch.Tensor | None, cu_seqlens: torch.Tensor | None,
                 scale: float, chunk_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Equations (3)-(5) over one block of whole chunks (:func:`memlm.ops.common.blocks.run_in_blocks`):
    ``(q, k, v, g)`` as in :func:`chunk_gla` -> ``(o, final_state)``."""
    q, k, v, g = tensors
    layout = ChunkLayout(q.shape[0], q.shape[1], chunk_size, cu_seqlens, q.device)
    q_c = to_chunks(q, layout) * scale
    k_c = to_chunks(k, layout)
    v_c = to_chunks(v, layout)
    log_decay = to_chunks(g, layout).cumsum(-2)  # G, [B, H, N, C, dk]

    q_decayed = q_c * log_decay.exp()
    last = log_decay[..., -1:, :]
    k_to_end = (k_c * (last - log_decay).exp()).transpose(-1, -2)
    chunk_decay = last.exp().transpose(-1, -2)  # [B, H, N, dk, 1]
    states, _, final_state = scan_chunks(v_c, None, k_to_end, chunk_decay, initial_state, layout)  # (5)
    scores = decayed_scores(q_c, k_c, log_decay, math.gcd(layout.chunk_size, SUB_CHUNK))  # (3)
    o = q_decayed @ states + scores @ v_c  # (4)
    return from_chunks(o, layout).to(q.dtype), final_state


def recurrent_gla(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor, scale: float | None = None,
    initial_state: torch.Tensor | None = None, output_final_state: bool = False, cu_seqlens: torch.Tensor | None = None,
    inplace_final_state: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Gated linear attention token by token (decoding), equations (1)-(2):

        S_t = Diag(exp(g_t)) S_{t-1} + k_t v_t^T,   o_t = S_t^T (scale * q_t)

    fla's fused recurrent kernel on CUDA; else one token (``T = 1``, no ``cu_seqlens``) is
    :func:`~memlm.ops.common.recurrent.recurrent_step` and longer inputs :func:`naive_gla`. Same arguments and
    returns as :func:`chunk_gla`, and ``inplace_final_state`` as
    :func:`memlm.ops.gated_delta_rule.recurrent_gated_delta_rule` has it.
    """
    scale = _checked_scale("recurrent_gla", q, k, v, g, scale, initial_state, cu_seqlens)
    check_in_place("recurrent_gla", inplace_final_state, initial_state, q, k, v, g)
    keep = output_final_state or inplace_final_state
    if use_fla(q, k, v):
        from fla.ops.gla import fused_recurrent_gla

        o, final_state = fused_recurrent_gla(
            q, k, v, gk=g, scale=scale, initial_state=initial_state, output_final_state=keep, cu_seqlens=cu_seqlens,
        )
    elif is_single_step(q, cu_seqlens):
        o, final_state = recurrent_step(q, k, v, g, scale, initial_state, in_place=inplace_final_state)  # (1)-(2)
        o = o.to(q.dtype)
    else:
        o, final_state = naive_gla(q, k, v, g, scale, initial_state, keep, cu_seqlens)
    return o, kept_final_state(final_state, initial_state, inplace_final_state, output_final_state)


def naive_gla(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor, scale: float | None = None,
    initial_state: torch.Tensor | None = None, output_final_state: bool = False, cu_seqlens: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The reference: equations (1)-(2) token by token in fp32 torch,

        S_t = Diag(exp(g_t)) S_{t-1} + k_t v_t^T,   o_t = S_t^T (scale * q_t)

    Same arguments and returns as :func:`chunk_gla`.
    """
    scale = _checked_scale("naive_gla", q, k, v, g, scale, initial_state, cu_seqlens)

    def step(state, k_t, v_t, g_t):
        return state * g_t.exp()[..., None] + k_t[..., None] * v_t[..., None, :]  # (1)

    return recurrent_scan(step, q, (k, v, g), v.shape[-1], scale, initial_state, output_final_state, cu_seqlens)
