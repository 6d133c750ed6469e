"""Decay inside a chunk: :func:`scalar_pairwise_decay` for a scalar decay per head and token (GatedDeltaNet, SSD), and
scores under a per-key-channel decay, ``A_ij = sum_c q_ic k_jc exp(G_ic - G_jc)`` (j <= i), the intra-chunk term
shared by GLA and KDA (:mod:`memlm.ops.gla`, :mod:`memlm.ops.kda`).

With strong decay (HGRN-2 forget gates near 1e-5, g ~ -11 per token) the cumulative log decay ``G`` falls to -700
within a chunk, so ``exp(-G)`` is not representable and ``A`` cannot be factored as ``(Q exp(G)) (K exp(-G))^T``.
Instead the chunk is cut into sub-chunks of ``s`` tokens:

- query sub-chunk ``a`` against the keys before it (j <= r, ``r`` the last position before ``a``):
  ``A_ij = sum_c [q_ic exp(G_ic - G_rc)] [k_jc exp(G_rc - G_jc)]``, a matmul;                  (a)
- the diagonal sub-blocks: the pairwise ``[s, s, dk]`` product, see :class:`_DiagonalBlocks`.  (b)

Every exponent is <= 0: (a) only takes keys up to ``r`` and the pairs of (b) with j > i are set to -inf before
``exp``, so nothing overflows, in the forward pass or in the gradients, and a factor that underflows to 0 only
stands for a product that is smaller still.
"""

from __future__ import annotations

import torch

SUB_CHUNK = 16
_PAIRWISE_ELEMENTS = 1 << 20  # bound on the [m, s, s, dk] temporaries of the diagonal blocks (4 MiB fp32)


def scalar_pairwise_decay(log_decay: torch.Tensor) -> torch.Tensor:
    """``Gamma`` ``[..., C, C]`` from the cumulative log decay ``G`` ``[..., C]`` of a chunk: ``exp(G_i - G_j)`` for
    j <= i, else 0 (pairs with j > i are set to -inf before ``exp``, so every exponent is <= 0)."""
    size = log_decay.shape[-1]
    upper = torch.ones(size, size, dtype=torch.bool, device=log_decay.device).triu(1)
    return (log_decay[..., :, None] - log_decay[..., None, :]).masked_fill(upper, float("-inf")).exp()


def _pairwise_decay(log_decay: torch.Tensor) -> torch.Tensor:
    """``[m, s, dk]`` cumulative log decay -> ``[m, s, s, dk]`` ``exp(G_i - G_j)`` for j <= i, else 0."""
    size = log_decay.shape[-2]
    upper = torch.ones(size, size, dtype=torch.bool, device=log_decay.device).triu(1)[..., None]
    diff = log_decay[:, :, None, :] - log_decay[:, None, :, :]
    return diff.masked_fill_(upper, float("-inf")).exp_()


class _DiagonalBlocks(torch.autograd.Function):
    """Equation (b): ``A_ij = sum_c q_ic k_jc exp(G_ic - G_jc)`` for ``j <= i`` inside each sub-chunk.

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


def decayed_scores(q_c: torch.Tensor, k_c: torch.Tensor, log_decay: torch.Tensor, sub: int) -> torch.Tensor:
    """``A_ij = sum_c q_ic k_jc exp(G_ic - G_jc)`` for ``j <= i`` (else 0) in every chunk, by (a) and (b).

    Args:
        q_c, k_c: ``[B, H, N, C, dk]`` fp32 chunks.
        log_decay: ``[B, H, N, C, dk]`` cumulative log decay ``G`` within each chunk.
        sub: sub-chunk size ``s``, a divisor of C.

    Returns:
        ``[B, H, N, C, C]``, lower triangular including the diagonal.
    """
    *lead, size, dk = q_c.shape
    blocks = size // sub
    q_s, k_s, g_s = (x.reshape(*lead, blocks, sub, dk) for x in (q_c, k_c, log_decay))
    diagonal = _DiagonalBlocks.apply(*(x.reshape(-1, sub, dk) for x in (q_s, k_s, g_s)))
    diagonal = diagonal.view(*lead, blocks, sub, sub)  # (b)
    rows = []
    for block in range(blocks):
        front = block * sub
        pieces = []
        if block:  # (a): the keys before the query sub-chunk, positions [0, front)
            ref = log_decay[..., front - 1 : front, :]  # G_r, r = the last position before the sub-chunk
            q_off = q_s[..., block, :, :] * (g_s[..., block, :, :] - ref).exp()
            k_off = k_c[..., :front, :] * (ref - log_decay[..., :front, :]).exp()
            pieces.append(q_off @ k_off.transpose(-1, -2))
        pieces.append(diagonal[..., block, :, :])
        if front + sub < size:
            pieces.append(q_c.new_zeros(*lead, sub, size - front - sub))
        rows.append(torch.cat(pieces, dim=-1))
    return torch.cat(rows, dim=-2)
