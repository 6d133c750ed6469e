"""Kimi Delta Attention (KDA, Kimi Linear, arXiv 2510.26692): the gated delta rule with a per-key-channel decay.

Per head, with a state ``S`` of shape ``[dk, dv]`` and ``Diag(exp(g_t))`` the decay of each key channel:

    S_t = (I - beta_t k_t k_t^T) Diag(exp(g_t)) S_{t-1} + beta_t k_t v_t^T       (1)
    o_t = S_t^T (scale * q_t)                                                   (2)

the decay first, then the delta-rule write (as fla's ``chunk_kda`` and transformers' Kimi Linear compute it).
The chunkwise form: inside a chunk of C tokens with the per-channel cumulative log decay
``G_i = g_1 + ... + g_i`` (a vector of dk entries) and ``D(q, k)_ij = sum_c q_ic k_jc exp(G_ic - G_jc)``
for j <= i (else 0),

    L  = I + diag(beta) tril(D(K, K), -1)                                       (3)
    U  = L^{-1} diag(beta) V,   W = L^{-1} diag(beta) (K * exp(G))              (4)
    V' = U - W S                                                                (5)
    O  = (Q * exp(G)) S + D(Q, K) V'                                            (6)
    S' = Diag(exp(G_C)) S + (K * exp(G_C - G))^T V'                             (7)

Only (5) and (7) run sequentially over chunks (:func:`memlm.ops.common.scan.scan_chunks`); (3), (4) and (6) are
batched over the chunks of a block (:mod:`memlm.ops.common.blocks`).
``D`` is formed sub-chunk by sub-chunk without ever forming ``exp(-G)``
(:func:`memlm.ops.common.decay.decayed_scores`), so every exponent is <= 0 and strong decay cannot overflow.

With ``use_qk_l2norm_in_kernel`` q and k are first L2-normalized in fp32, ``x / sqrt(sum(x^2) + 1e-6)`` (fla's
and transformers' convention). :func:`chunk_kda` (training, prefill) computes (3)-(7), :func:`recurrent_kda`
(decoding) and :func:`naive_kda` (the reference) compute (1)-(2) token by token; on CUDA with fla installed the
first two run fla's kernels.
"""

from __future__ import annotations

import math
from functools import partial

import torch

from memlm.ops.common.blocks import block_tokens, run_in_blocks
from memlm.ops.common.checks import check_linear_inputs
from memlm.ops.common.chunking import ChunkLayout, from_chunks, to_chunks
from memlm.ops.common.decay import SUB_CHUNK, decayed_scores
from memlm.ops.common.fla import needs_backward, use_fla, use_fla_gated_chunk
from memlm.ops.common.recurrent import (
    check_in_place,
    is_single_step,
    kept_final_state,
    recurrent_scan,
    recurrent_step,
)
from memlm.ops.common.scan import scan_chunks


def _prepared(op: str, q, k, v, g, beta, scale: float | None, initial_state, cu_seqlens, l2norm: bool):
    """Validate the arguments of ``op`` (ValueError naming the bad one); return q and k (L2-normalized in fp32 with
    ``l2norm``) and the query scale (default ``dk ** -0.5``)."""
    shape = tuple(q.shape[:3])
    check_linear_inputs(op, q, k, v, {"g": (g, (*shape, q.shape[-1])), "beta": (beta, shape)}, initial_state,
                        cu_seqlens)
    if l2norm:
        q, k = (x.float() / torch.sqrt(x.float().pow(2).sum(-1, keepdim=True) + 1e-6) for x in (q, k))
    return q, k, q.shape[-1] ** -0.5 if scale is None else scale


def chunk_kda(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    beta: torch.Tensor,
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    cu_seqlens: torch.Tensor | None = None,
    use_qk_l2norm_in_kernel: bool = False,
    chunk_size: int = 64,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """KDA over a whole sequence, chunk by chunk (training and prefill): per chunk, equations (3)-(7),

        V' = U - W S,   O = (Q * exp(G)) S + D(Q, K) V',   S' = Diag(exp(G_C)) S + (K * exp(G_C - G))^T V'

    Args:
        q, k: ``[B, T, H, dk]``.
        v: ``[B, T, H, dv]``.
        g: ``[B, T, H, dk]`` log decay per key channel (<= 0); any strength.
        beta: ``[B, T, H]`` write strength, usually in (0, 1).
        scale: query scale, default ``dk ** -0.5``.
        initial_state: ``[N, H, dk, dv]``, N = B, or the number of documents with ``cu_seqlens``.
        output_final_state: also return the state after the last token of each sequence.
        cu_seqlens: ``[N + 1]`` offsets of packed documents in a batch of one row.
        use_qk_l2norm_in_kernel: L2-normalize q and k (in fp32) first.
        chunk_size: tokens per chunk of the torch path.

    Returns:
        ``o`` ``[B, T, H, dv]`` in q's dtype, and ``final_state`` ``[N, H, dk, dv]`` (fp32) or None.
    """
    dtype = q.dtype
    if use_fla_gated_chunk(q, k, v, g, beta, initial_state):
        check_linear_inputs("chunk_kda", q, k, v, {"g": (g, tuple(q.shape)), "beta": (beta, tuple(q.shape[:3]))},
                            initial_state, cu_seqlens)
        from fla.ops.kda import chunk_kda as fla_chunk_kda

        return fla_chunk_kda(
            q=q, k=k, v=v, g=g, beta=beta, scale=scale, initial_state=initial_state,
            output_final_state=output_final_state, use_qk_l2norm_in_kernel=use_qk_l2norm_in_kernel,
            cu_seqlens=cu_seqlens,
        )
    q, k, scale = _prepared("chunk_kda", q, k, v, g, beta, scale, initial_state, cu_seqlens, use_qk_l2norm_in_kernel)
    tokens = block_tokens(q.shape[0], q.shape[2], 2 * q.shape[-1] + v.shape[-1], chunk_size)
    step = partial(_chunk_block, scale=scale, chunk_size=chunk_size)
    o, final_state = run_in_blocks(step, (q, k, v, g, beta), initial_state, cu_seqlens, tokens)
    return o.to(dtype), final_state if output_final_state else None


def _chunk_block(tensors: list[torch.Tensor], initial_state: torch.Tensor | None, cu_seqlens: torch.Tensor | None,
                 scale: float, chunk_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Equations (3)-(7) over one block of whole chunks (:func:`memlm.ops.common.blocks.run_in_blocks`):
    ``(q, k, v, g, beta)`` as in :func:`chunk_kda` (q, k already normalized) -> ``(o, final_state)``."""
    q, k, v, g, beta = tensors
    dk, dv = q.shape[-1], v.shape[-1]
    layout = ChunkLayout(q.shape[0], q.shape[1], chunk_size, cu_seqlens, q.device)
    q_c = to_chunks(q, layout) * scale
    k_c = to_chunks(k, layout)
    v_c = to_chunks(v, layout)
    beta_c = to_chunks(beta, layout)[..., None]  # [B, H, N, C, 1]
    log_decay = to_chunks(g, layout).cumsum(-2)  # G, [B, H, N, C, dk]
    sub = math.gcd(layout.chunk_size, SUB_CHUNK)

    eye = torch.eye(layout.chunk_size, dtype=q_c.dtype, device=q.device)
    lower = eye + beta_c * decayed_scores(k_c, k_c, log_decay, sub).tril(-1)  # (3)
    rhs = torch.cat([v_c, k_c * log_decay.exp()], dim=-1) * beta_c
    u, w = torch.linalg.solve_triangular(lower, rhs, upper=False, unitriangular=True).split([dv, dk], -1)  # (4)
    last = log_decay[..., -1:, :]
    k_to_end = (k_c * (last - log_decay).exp()).transpose(-1, -2)
    chunk_decay = last.exp().transpose(-1, -2)  # [B, H, N, dk, 1]
    states, corrected, final_state = scan_chunks(u, w, k_to_end, chunk_decay, initial_state, layout)  # (5), (7)
    o = (q_c * log_decay.exp()) @ states + decayed_scores(q_c, k_c, log_decay, sub) @ corrected  # (6)
    return from_chunks(o, layout), final_state


def recurrent_kda(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor, beta: torch.Tensor, scale: float | None = None,
    initial_state: torch.Tensor | None = None, output_final_state: bool = False, cu_seqlens: torch.Tensor | None = None,
    use_qk_l2norm_in_kernel: bool = False, inplace_final_state: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """KDA token by token (decoding), equations (1)-(2):

        S_t = (I - beta_t k_t k_t^T) Diag(exp(g_t)) S_{t-1} + beta_t k_t v_t^T,   o_t = S_t^T (scale * q_t)

    fla's fused recurrent kernel on CUDA when no gradient is needed (it serves decoding); else one token (``T = 1``,
    no ``cu_seqlens``) is :func:`~memlm.ops.common.recurrent.recurrent_step` and longer inputs :func:`naive_kda`.
    Same arguments and returns as :func:`chunk_kda`, and ``inplace_final_state`` as
    :func:`memlm.ops.gated_delta_rule.recurrent_gated_delta_rule` has it.
    """
    check_in_place("recurrent_kda", inplace_final_state, initial_state, q, k, v, g, beta)
    keep = output_final_state or inplace_final_state
    if use_fla(q, k, v) and not needs_backward(q, k, v, g, beta, initial_state):
        check_linear_inputs("recurrent_kda", q, k, v,
                            {"g": (g, tuple(q.shape)), "beta": (beta, tuple(q.shape[:3]))}, initial_state, cu_seqlens)
        from fla.ops.kda import fused_recurrent_kda

        o, final_state = fused_recurrent_kda(
            q=q, k=k, v=v, g=g, beta=beta, scale=scale, initial_state=initial_state,
            output_final_state=keep, use_qk_l2norm_in_kernel=use_qk_l2norm_in_kernel, cu_seqlens=cu_seqlens,
        )
    elif is_single_step(q, cu_seqlens):
        dtype = q.dtype
        q, k, scale = _prepared("recurrent_kda", q, k, v, g, beta, scale, initial_state, cu_seqlens,
                                use_qk_l2norm_in_kernel)
        o, final_state = recurrent_step(q, k, v, g, scale, initial_state, beta, inplace_final_state)  # (1)-(2)
        o = o.to(dtype)
    else:
        o, final_state = naive_kda(q, k, v, g, beta, scale, initial_state, keep, cu_seqlens, use_qk_l2norm_in_kernel)
    return o, kept_final_state(final_state, initial_state, inplace_final_state, output_final_state)


def naive_kda(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor, beta: torch.Tensor, scale: float | None = None,
    initial_state: torch.Tensor | None = None, output_final_state: bool = False, cu_seqlens: torch.Tensor | None = None,
    use_qk_l2norm_in_kernel: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The reference: equations (1)-(2) token by token in fp32 torch,

        S_t = (I - beta_t k_t k_t^T) Diag(exp(g_t)) S_{t-1} + beta_t k_t v_t^T,   o_t = S_t^T (scale * q_t)

    Same arguments and returns as :func:`chunk_kda`.
    """
    dtype = q.dtype
    q, k, scale = _prepared("naive_kda", q, k, v, g, beta, scale, initial_state, cu_seqlens, use_qk_l2norm_in_kernel)

    def step(state, k_t, v_t, g_t, beta_t):
        state = state * g_t.exp()[..., None]
        error = v_t - torch.einsum("bhkv,bhk->bhv", state, k_t)
        return state + torch.einsum("bhk,bhv->bhkv", beta_t[..., None] * k_t, error)  # (1)

    o, final = recurrent_scan(step, q, (k, v, g, beta), v.shape[-1], scale, initial_state, output_final_state,
                              cu_seqlens)
    return o.to(dtype), final
