"""Gated delta rule (GatedDeltaNet, arXiv 2412.06464), chunkwise and token-by-token.

Per head, with a state ``S`` of shape ``[dk, dv]``:

    S_t = exp(g_t) * (I - beta_t k_t k_t^T) S_{t-1} + beta_t k_t v_t^T          (1)
    o_t = S_t^T (scale * q_t)                                                   (2)

The chunkwise form (fla's ``ops/delta_rule`` notes, the "WY/UT transform"): inside a chunk of C tokens
with cumulative log decay ``G_i = g_1 + ... + g_i`` and ``Gamma_ij = exp(G_i - G_j)`` (i >= j),

    L = I + tril(diag(beta) (K K^T * Gamma), -1)                                (3)
    U = L^{-1} diag(beta) V,   W = L^{-1} diag(beta exp(G)) K                   (4)
    V' = U - W S                                                                (5)
    O  = (Q * exp(G)) S + (Q K^T * Gamma) V'                                    (6)
    S' = exp(G_C) S + (K * exp(G_C - G))^T V'                                   (7)

Only (5) and (7) run sequentially over chunks (two small matmuls per chunk); (3), (4) and (6) are
batched over the chunks of a block (long sequences run in blocks of a bounded number of chunks,
:mod:`memlm.ops.common.blocks`). Every exponent above is <= 0, so strong decay cannot overflow.

:func:`chunk_gated_delta_rule` (training, prefill) computes (3)-(7), :func:`recurrent_gated_delta_rule` (decoding)
and :func:`naive_gated_delta_rule` (the reference) compute (1)-(2) token by token; on CUDA with fla installed the
first two run fla's kernels.
"""

from __future__ import annotations

from functools import partial

import torch

from memlm.ops.common.blocks import block_tokens, run_in_blocks
from memlm.ops.common.checks import check_linear_inputs
from memlm.ops.common.chunking import ChunkLayout, from_chunks, to_chunks
from memlm.ops.common.decay import scalar_pairwise_decay
from memlm.ops.common.fla import needs_backward, use_fla, use_fla_gated_chunk
from memlm.ops.common.recurrent import (
    check_in_place,
    is_single_step,
    kept_final_state,
    recurrent_scan,
    recurrent_step,
)
from memlm.ops.common.scan import scan_chunks


def _checked_scale(op: str, q, k, v, g, beta, scale: float | None, initial_state, cu_seqlens) -> float:
    """Validate the arguments of ``op`` (ValueError naming the bad one) and return the query scale (default
    ``dk ** -0.5``)."""
    gate_shape = tuple(q.shape[:3])
    check_linear_inputs(op, q, k, v, {"g": (g, gate_shape), "beta": (beta, gate_shape)}, initial_state, cu_seqlens)
    return q.shape[-1] ** -0.5 if scale is None else scale


def chunk_gated_delta_rule(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    beta: torch.Tensor,
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    cu_seqlens: torch.Tensor | None = None,
    chunk_size: int = 64,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Gated delta rule over a whole sequence, chunk by chunk (training and prefill): per chunk, equations (3)-(7),

        V' = U - W S,   O = (Q * exp(G)) S + (Q K^T * Gamma) V',   S' = exp(G_C) S + (K * exp(G_C - G))^T V'

    Args:
        q, k: ``[B, T, H, dk]`` (the layer L2-normalizes them; this op does not).
        v: ``[B, T, H, dv]``.
        g: ``[B, T, H]`` log decay (<= 0).
        beta: ``[B, T, H]`` write strength, usually in (0, 1).
        scale: query scale, default ``dk ** -0.5``.
        initial_state: ``[N, H, dk, dv]``, N = B, or the number of documents with ``cu_seqlens``.
        output_final_state: also return the state after the last token of each sequence.
        cu_seqlens: ``[N + 1]`` offsets of packed documents in a batch of one row.
        chunk_size: tokens per chunk of the torch path.

    Returns:
        ``o`` ``[B, T, H, dv]`` in q's dtype, and ``final_state`` ``[N, H, dk, dv]`` (fp32) or None.
    """
    scale = _checked_scale("chunk_gated_delta_rule", q, k, v, g, beta, scale, initial_state, cu_seqlens)
    if use_fla_gated_chunk(q, k, v, g, beta, initial_state):
        from fla.ops.gated_delta_rule import chunk_gated_delta_rule as fla_chunk_gated_delta_rule

        return fla_chunk_gated_delta_rule(
            q, k, v, g, beta, scale=scale, initial_state=initial_state,
            output_final_state=output_final_state, cu_seqlens=cu_seqlens,
        )
    width = q.shape[-1] + v.shape[-1]
    tokens = block_tokens(q.shape[0], q.shape[2], width, chunk_size)
    step = partial(_chunk_block, scale=scale, chunk_size=chunk_size)
    o, final_state = run_in_blocks(step, (q, k, v, g, beta), initial_state, cu_seqlens, tokens)
    return o, final_state if output_final_state else None


def _chunk_block(tensors: list[torch.Tensor], initial_state: torch.Tensor | None, cu_seqlens: torch.Tensor | None,
                 scale: float, chunk_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Equations (3)-(7) over one block of whole chunks (:func:`memlm.ops.common.blocks.run_in_blocks`):
    ``(q, k, v, g, beta)`` as in :func:`chunk_gated_delta_rule` -> ``(o, final_state)``."""
    q, k, v, g, beta = tensors
    batch, seq_len, _, dk = q.shape
    dv = v.shape[-1]
    layout = ChunkLayout(batch, seq_len, chunk_size, cu_seqlens, q.device)
    q_c = to_chunks(q, layout) * scale
    k_c = to_chunks(k, layout)
    v_c = to_chunks(v, layout)
    beta_c = to_chunks(beta, layout)
    log_decay = to_chunks(g, layout).cumsum(-1)  # G, [B, H, N, C]

    chunk_size = layout.chunk_size
    gamma = scalar_pairwise_decay(log_decay)
    eye = torch.eye(chunk_size, dtype=q_c.dtype, device=q.device)
    lower = eye + ((beta_c[..., :, None] * (k_c @ k_c.transpose(-1, -2))) * gamma).tril(-1)  # (3)
    rhs = torch.cat([v_c * beta_c[..., None], k_c * (beta_c * log_decay.exp())[..., None]], dim=-1)
    lower_inv = torch.linalg.solve_triangular(lower, eye.expand_as(lower), upper=False, unitriangular=True)
    u, w = (lower_inv @ rhs).split([dv, dk], -1)  # (4)
    attn = (q_c @ k_c.transpose(-1, -2)) * gamma
    q_decayed = q_c * log_decay.exp()[..., None]
    k_to_end = (k_c * (log_decay[..., -1:] - log_decay).exp()[..., None]).transpose(-1, -2)
    chunk_decay = log_decay[..., -1].exp()[..., None, None]
    states, corrected, final_state = scan_chunks(u, w, k_to_end, chunk_decay, initial_state, layout)  # (5), (7)
    o = q_decayed @ states + attn @ corrected  # (6)
    return from_chunks(o, layout).to(q.dtype), final_state


def recurrent_gated_delta_rule(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor, beta: torch.Tensor, scale: float | None = None,
    initial_state: torch.Tensor | None = None, output_final_state: bool = False, cu_seqlens: torch.Tensor | None = None,
    inplace_final_state: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Gated delta rule token by token (decoding), equations (1)-(2):

        S_t = exp(g_t) * (I - beta_t k_t k_t^T) S_{t-1} + beta_t k_t v_t^T,   o_t = S_t^T (scale * q_t)

    fla's fused recurrent kernel on CUDA when no gradient is needed (it has no backward pass); else one token
    (``T = 1``, no ``cu_seqlens``) is :func:`~memlm.ops.common.recurrent.recurrent_step`, a few batched ops, and
    longer inputs :func:`naive_gated_delta_rule`. Same arguments and returns as :func:`chunk_gated_delta_rule`, and
    ``inplace_final_state``: write the final state into ``initial_state`` (fp32, no gradient) and return it, so a
    decoding cache keeps one state tensor (:func:`~memlm.ops.common.recurrent.check_in_place`).
    """
    scale = _checked_scale("recurrent_gated_delta_rule", q, k, v, g, beta, scale, initial_state, cu_seqlens)
    check_in_place("recurrent_gated_delta_rule", inplace_final_state, initial_state, q, k, v, g, beta)
    keep = output_final_state or inplace_final_state
    # fla's fused recurrent kernel has no backward pass: it serves decoding, memlm's torch path serves gradients
    if use_fla(q, k, v) and not needs_backward(q, k, v, g, beta, initial_state):
        from fla.ops.gated_delta_rule import fused_recurrent_gated_delta_rule

        o, final_state = fused_recurrent_gated_delta_rule(
            q, k, v, g, beta, scale=scale, initial_state=initial_state, output_final_state=keep, cu_seqlens=cu_seqlens,
        )
    elif is_single_step(q, cu_seqlens):
        o, final_state = recurrent_step(q, k, v, g, scale, initial_state, beta, inplace_final_state)  # (1)-(2)
        o = o.to(q.dtype)
    else:
        o, final_state = naive_gated_delta_rule(q, k, v, g, beta, scale, initial_state, keep, cu_seqlens)
    return o, kept_final_state(final_state, initial_state, inplace_final_state, output_final_state)


def naive_gated_delta_rule(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor, beta: torch.Tensor, scale: float | None = None,
    initial_state: torch.Tensor | None = None, output_final_state: bool = False, cu_seqlens: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The reference: equations (1)-(2) token by token in fp32 torch,

        S_t = exp(g_t) * (I - beta_t k_t k_t^T) S_{t-1} + beta_t k_t v_t^T,   o_t = S_t^T (scale * q_t)

    Same arguments and returns as :func:`chunk_gated_delta_rule`.
    """
    scale = _checked_scale("naive_gated_delta_rule", q, k, v, g, beta, scale, initial_state, cu_seqlens)

    def step(state, k_t, v_t, g_t, beta_t):
        state = state * g_t.exp()[..., None, None]
        error = v_t - torch.einsum("bhkv,bhk->bhv", state, k_t)
        return state + torch.einsum("bhk,bhv->bhkv", beta_t[..., None] * k_t, error)  # (1)

    return recurrent_scan(step, q, (k, v, g, beta), v.shape[-1], scale, initial_state, output_final_state, cu_seqlens)
