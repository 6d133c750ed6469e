"""Gated linear attention with a per-key-channel decay (GLA, arXiv 2312.06635; HGRN-2, arXiv 2404.07904).

Per head, with a state ``S`` of shape ``[dk, dv]``:

    S_t = Diag(exp(g_t)) S_{t-1} + k_t v_t^T                                    (1)
    o_t = S_t^T (scale * q_t)                                                   (2)

The chunkwise form: inside a chunk of C tokens with the per-channel cumulative log decay
``G_i = g_1 + ... + g_i`` (a vector of dk entries),

    A_ij = sum_c q_ic k_jc exp(G_ic - G_jc)   (j <= i, else 0)                  (3)
    O    = (Q * exp(G)) S + A V                                                 (4)
    S'   = Diag(exp(G_C)) S + (K * exp(G_C - G))^T V                            (5)

Only (5) runs sequentially over chunks; (3) and (4) are batched over all chunks. With strong decay
(HGRN-2 forget gates near 1e-5, g ~ -11 per token) G falls to -700 within a chunk, so ``exp(-G)`` is
not representable and (3) cannot be factored as ``(Q exp(G)) (K exp(-G))^T``. Instead the chunk is cut
into sub-chunks of ``s`` tokens:

- query sub-chunk ``a`` against the keys before it (j <= r, ``r`` the last position before ``a``):
  ``A_ij = sum_c [q_ic exp(G_ic - G_rc)] [k_jc exp(G_rc - G_jc)]``, a matmul;                  (3a)
- the diagonal sub-blocks: the pairwise ``[s, s, dk]`` product of (3), see :class:`_DiagonalBlocks`. (3b)

Every exponent is <= 0: (3a) only takes keys up to ``r`` and the pairs of (3b) with j > i are set to
-inf before ``exp``, so nothing overflows, in the forward pass or in the gradients, and a factor that
underflows to 0 only stands for a product that is smaller still.

:func:`chunk_gla` (training, prefill) computes (3)-(5), :func:`recurrent_gla` (decoding) and :func:`naive_gla`
(the reference) compute (1)-(2) token by token; on CUDA with fla installed the first two run fla's kernels.
"""

from __future__ import annotations

import math

import torch

from memlm.ops.common.checks import check_linear_inputs
from memlm.ops.common.chunking import ChunkLayout, from_chunks, to_chunks
from memlm.ops.common.fla import use_fla
from memlm.ops.common.recurrent import recurrent_scan
from memlm.ops.common.scan import scan_chunks

_SUB_CHUNK = 16
_PAIRWISE_ELEMENTS = 1 << 20  # bound on the [m, s, s, dk] temporaries of the diagonal blocks (4 MiB fp32)


def _pairwise_decay(log_decay: torch.Tensor) -> torch.Tensor:
    """``[m, s, dk]`` cumulative log decay -> ``[m, s, s, dk]`` ``exp(G_i - G_j)`` for j <= i, else 0."""
    size = log_decay.shape[-2]
    upper = torch.ones(size, size, dtype=torch.bool, device=log_decay.device).triu(1)[..., None]
    diff = log_decay[:, :, None, :] - log_decay[:, None, :, :]
    return diff.masked_fill_(upper, float("-inf")).exp_()


class _DiagonalBlocks(torch.autograd.Function):
    """Equation (3b): ``A_ij = sum_c q_ic k_jc exp(G_ic - G_jc)`` for ``j <= i`` inside each sub-chunk.

    Inputs are ``[M, s, dk]`` fp32 (M = all sub-chunks of all chunks, heads and rows), the output is
    ``[M, s, s]``. The ``[M, s, s, dk]`` decay tensor is never kept: it is built slice by slice in the
    forward pass and rebuilt in the backward pass, where, with ``P_ijc = dA_ij exp(G_ic - G_jc)``,

        dq_ic = sum_j P_ijc k_jc,   dk_jc = sum_i P_ijc q_ic,   dG = q * dq - k * dk.
    """

    @staticmethod
    def forward(ctx, q, k, log_decay):
        size, dk = q.shape[-2:]
        step = max(1, _PAIRWISE_ELEMENTS // (size * size * dk))
        out = q.new_empty(q.shape[0], size, size)
        for start in range(0, q.shape[0], step):
            rows = slice(start, start + step)
            weighted = _pairwise_decay(log_decay[rows]).mul_(k[rows, None, :, :])
            out[rows] = (weighted @ q[rows, :, :, None]).squeeze(-1)
        ctx.save_for_backward(q, k, log_decay)
        return out

    @staticmethod
    def backward(ctx, d_out):
        q, k, log_decay = ctx.saved_tensors
        size, dk = q.shape[-2:]
        step = max(1, _PAIRWISE_ELEMENTS // (size * size * dk))
        d_q, d_k = torch.empty_like(q), torch.empty_like(k)
        for start in range(0, q.shape[0], step):
            rows = slice(start, start + step)
            weights = _pairwise_decay(log_decay[rows]).mul_(d_out[rows, :, :, None])  # P
            d_q[rows] = (weights * k[rows, None, :, :]).sum(2)
            d_k[rows] = weights.mul_(q[rows, :, None, :]).sum(1)
        return d_q, d_k, q * d_q - k * d_k


def _intra_chunk(q_c, k_c, v_c, log_decay, sub):
    """``A V`` of equation (4) for every chunk: inputs ``[B, H, N, C, D]``, output ``[B, H, N, C, dv]``."""
    *lead, size, dk = q_c.shape
    dv = v_c.shape[-1]
    blocks = size // sub
    q_s = q_c.reshape(*lead, blocks, sub, dk)
    k_s = k_c.reshape(*lead, blocks, sub, dk)
    v_s = v_c.reshape(*lead, blocks, sub, dv)
    g_s = log_decay.reshape(*lead, blocks, sub, dk)
    flat = (x.reshape(-1, sub, dk) for x in (q_s, k_s, g_s))
    diagonal = _DiagonalBlocks.apply(*flat).view(*lead, blocks, sub, sub)  # (3b)
    o_s = diagonal @ v_s
    pieces = [o_s[..., 0, :, :]]
    for block in range(1, blocks):  # (3a): the keys before the query sub-chunk, positions [0, front)
        front = block * sub
        ref = log_decay[..., front - 1 : front, :]  # G_r, r = the last position before the sub-chunk
        q_off = q_s[..., block, :, :] * (g_s[..., block, :, :] - ref).exp()
        k_off = k_c[..., :front, :] * (ref - log_decay[..., :front, :]).exp()
        pieces.append(o_s[..., block, :, :] + (q_off @ k_off.transpose(-1, -2)) @ v_c[..., :front, :])
    return torch.stack(pieces, dim=-3).view(*lead, size, dv)


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
    o = q_decayed @ states + _intra_chunk(q_c, k_c, v_c, log_decay, math.gcd(layout.chunk_size, _SUB_CHUNK))  # (4)
    return from_chunks(o, layout).to(q.dtype), final_state if output_final_state else None


def recurrent_gla(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor, scale: float | None = None,
    initial_state: torch.Tensor | None = None, output_final_state: bool = False, cu_seqlens: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Gated linear attention token by token (decoding), equations (1)-(2):

        S_t = Diag(exp(g_t)) S_{t-1} + k_t v_t^T,   o_t = S_t^T (scale * q_t)

    fla's fused recurrent kernel on CUDA, else :func:`naive_gla`. Same arguments and returns as :func:`chunk_gla`.
    """
    scale = _checked_scale("recurrent_gla", q, k, v, g, scale, initial_state, cu_seqlens)
    if use_fla(q, k, v):
        from fla.ops.gla import fused_recurrent_gla

        return fused_recurrent_gla(
            q, k, v, gk=g, scale=scale, initial_state=initial_state,
            output_final_state=output_final_state, cu_seqlens=cu_seqlens,
        )
    return naive_gla(q, k, v, g, scale, initial_state, output_final_state, cu_seqlens)


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
