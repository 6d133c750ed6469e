"""Mamba-2's state-space duality (SSD, Dao & Gu, arXiv 2405.21060), chunkwise and token by token.

Per head ``h`` (of ``H``; B and C are shared by the ``H / G`` heads of each of ``G`` groups), with a state ``h_t``
of shape ``[d_state, head_dim]`` and a scalar decay per head and token:

    a_t = exp(dt_t * A)                       A < 0, dt_t >= 0 (the layer's softplus(dt + dt_bias), clamped)  (1)
    h_t = a_t h_{t-1} + dt_t B_t x_t^T                                                                        (2)
    y_t = h_t^T C_t + D x_t                                                                                   (3)

This is linear attention with a scalar decay: queries ``C``, keys ``dt * B``, values ``x``, log decay
``g = dt * A``. Inside a chunk with ``G_i = g_1 + ... + g_i`` and ``Gamma_ij = exp(G_i - G_j)`` (j <= i, else 0):

    Y  = (C * exp(G)) S + ((C (dt B)^T) * Gamma) X + D X                                                      (4)
    S' = exp(G_C) S + (dt B * exp(G_C - G))^T X                                                               (5)

``C B^T`` is formed once per group of heads sharing B and C. Only (5) runs sequentially over chunks
(:func:`memlm.ops.common.scan.scan_chunks`); every exponent is <= 0, so strong decay cannot overflow.
:func:`chunk_ssd` (training, prefill) computes (4)-(5), :func:`recurrent_ssd`
(decoding) and :func:`naive_ssd` (the reference) compute (1)-(3) token by token; on CUDA with fla installed the
first two run fla's simple-GLA kernels (``chunk_simple_gla`` / ``fused_recurrent_simple_gla``: linear attention with
a scalar log decay per head and token, which (1)-(3) are with the substitution above). The state is laid out
``[N, H, d_state, head_dim]`` (keys first, as every memlm op); transformers' Mamba-2 cache holds its transpose.
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


def _checked_group(op: str, x, dt, A, B, C, D, initial_state, cu_seqlens) -> int:
    """Validate the arguments of ``op`` (ValueError naming the bad one) and return the heads per group."""
    if x.dim() != 4:
        raise ValueError(f"{op}: x must be [B, T, H, head_dim], got shape {tuple(x.shape)}")
    batch, seq_len, heads, _ = x.shape
    if B.dim() != 4 or B.shape[:2] != x.shape[:2] or B.shape[2] == 0 or heads % B.shape[2]:
        raise ValueError(f"{op}: B must be [B, T, G, d_state] with B, T = {tuple(x.shape[:2])} and G dividing "
                         f"H = {heads}, got {tuple(B.shape)}")
    if C.shape != B.shape:
        raise ValueError(f"{op}: C must have B's shape {tuple(B.shape)}, got {tuple(C.shape)}")
    if tuple(A.shape) != (heads,):
        raise ValueError(f"{op}: A must have shape ({heads},) (one per head), got {tuple(A.shape)}")
    if D is not None and tuple(D.shape) != (heads,):
        raise ValueError(f"{op}: D must be None or have shape ({heads},), got {tuple(D.shape)}")
    per_head = B.new_zeros(()).expand(batch, seq_len, heads, B.shape[-1])  # the shape B and C take per head
    check_linear_inputs(op, per_head, per_head, x, {"dt": (dt, (batch, seq_len, heads))}, initial_state, cu_seqlens)
    return heads // B.shape[2]


def _as_linear_attention(dt, A, B, C, group: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The substitution of the module docstring: queries ``C`` and keys ``dt * B`` per head ``[B, T, H, d_state]``
    (each group's B and C repeated for its ``group`` heads) and the log decay ``g = dt * A`` ``[B, T, H]``, in fp32."""
    dt = dt.float()
    q = C.float().repeat_interleave(group, dim=2)
    k = B.float().repeat_interleave(group, dim=2) * dt[..., None]
    return q, k, dt * A.float()


def _fla_ssd(kernel: str, x, dt, A, B, C, D, initial_state, output_final_state, cu_seqlens, group):
    """(1)-(3) by fla's simple-GLA ``kernel`` (CUDA), with the skip ``D x`` added here."""
    import fla.ops.simple_gla

    q, k, g = _as_linear_attention(dt, A, B, C, group)
    y, final_state = getattr(fla.ops.simple_gla, kernel)(
        q=q.to(x.dtype), k=k.to(x.dtype), v=x, g=g, scale=1.0, initial_state=initial_state,
        output_final_state=output_final_state, cu_seqlens=cu_seqlens,
    )
    return _skip(y, x, D), final_state


def _skip(y: torch.Tensor, x: torch.Tensor, D: torch.Tensor | None) -> torch.Tensor:
    """``y + D x`` (equation (3)'s skip) in fp32, returned in x's dtype."""
    y = y.float() if D is None else y.float() + D.float()[:, None] * x.float()
    return y.to(x.dtype)


def chunk_ssd(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    cu_seqlens: torch.Tensor | None = None,
    chunk_size: int = 64,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The SSD scan over a whole sequence, chunk by chunk (training and prefill): per chunk, (4)-(5),

        Y = (C * exp(G)) S + ((C (dt B)^T) * Gamma) X + D X,   S' = exp(G_C) S + (dt B * exp(G_C - G))^T X

    Args:
        x: ``[B, T, H, head_dim]``.
        dt: ``[B, T, H]`` time steps (>= 0; the layer applies softplus, ``dt_bias`` and the limits).
        A: ``[H]`` (< 0; the layer's ``-exp(A_log)``).
        B, C: ``[B, T, G, d_state]``, G dividing H (head h reads group ``h // (H / G)``).
        D: ``[H]`` skip weights, or None.
        initial_state: ``[N, H, d_state, head_dim]``, N = B, or the number of documents with ``cu_seqlens``.
        output_final_state: also return the state after the last token of each sequence.
        cu_seqlens: ``[N + 1]`` offsets of packed documents in a batch of one row.
        chunk_size: tokens per chunk.

    Returns:
        ``y`` ``[B, T, H, head_dim]`` in x's dtype, and ``final_state`` ``[N, H, d_state, head_dim]`` (fp32) or None.
    """
    group = _checked_group("chunk_ssd", x, dt, A, B, C, D, initial_state, cu_seqlens)
    if use_fla_gated_chunk(x, B, C, dt, A, D, initial_state):
        return _fla_ssd("chunk_simple_gla", x, dt, A, B, C, D, initial_state, output_final_state, cu_seqlens, group)
    tokens = block_tokens(x.shape[0], x.shape[2], 2 * x.shape[-1] + B.shape[-1], chunk_size)
    step = partial(_chunk_block, A=A, group=group, chunk_size=chunk_size)
    y, final_state = run_in_blocks(step, (x, dt, B, C), initial_state, cu_seqlens, tokens)
    return _skip(y, x, D), final_state if output_final_state else None


class _WithinChunks(torch.autograd.Function):
    """The intra-chunk term of (4), ``((C B^T) * Gamma * dt_j) X``, for each head of each group:
    ``cb [B, G, 1, N, C, C]`` (``C B^T``, shared by the group's heads), ``log_decay`` and ``dt`` ``[B, G, r, N, C]``
    and ``x [B, G, r, N, C, head_dim]`` -> ``[B, G, r, N, C, head_dim]``.

    It saves only its inputs (``x`` is a view of the op's input) and recomputes ``Gamma`` and the scores in the
    backward pass: autograd through the formula would keep three ``[C, C]`` tensors per head and chunk and a copy of
    ``x`` (24 of SSD's 74 KB/token at 32 heads of 64). With ``S = cb * Gamma * dt_j`` the scores and ``dS`` their
    gradient, ``Q = dS * cb * Gamma``:

        d cb = sum over the group's heads of dS * Gamma * dt_j,   d dt_j = sum_i Q_ij,
        d G_i = sum_j Q_ij dt_j - sum_j Q_ji dt_i
    """

    @staticmethod
    def forward(ctx, cb, log_decay, dt, x):
        ctx.save_for_backward(cb, log_decay, dt, x)
        return (cb * (scalar_pairwise_decay(log_decay) * dt[..., None, :])) @ x

    @staticmethod
    def backward(ctx, dy):
        cb, log_decay, dt, x = ctx.saved_tensors
        gamma = scalar_pairwise_decay(log_decay)
        decayed_dt = gamma * dt[..., None, :]
        dx = (cb * decayed_dt).transpose(-1, -2) @ dy
        d_scores = dy @ x.transpose(-1, -2)
        d_cb = (d_scores * decayed_dt).sum(2, keepdim=True)
        q = d_scores * cb * gamma
        d_product = q * dt[..., None, :]
        return d_cb, d_product.sum(-1) - d_product.sum(-2), q.sum(-2), dx


def _chunk_block(tensors: list[torch.Tensor], initial_state: torch.Tensor | None, cu_seqlens: torch.Tensor | None,
                 A: torch.Tensor, group: int, chunk_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Equations (4)-(5) without the skip over one block of whole chunks
    (:func:`memlm.ops.common.blocks.run_in_blocks`): ``(x, dt, B, C)`` as in :func:`chunk_ssd` ->
    ``(y [B, L, H, head_dim] fp32, final_state)``.

    B and C are never repeated per head. The intra-chunk term broadcasts each group's ``C B^T`` over its heads; the
    state scan (5) runs per group on the ``group`` heads' states side by side, ``[B, G, N, d_state, group * head_dim]``
    (one key ``B``, values ``dt X`` weighted per head, a decay per value column), so that ``C S`` in (4) is one
    matmul per group.
    """
    x, dt, B, C = tensors
    batch, _, _, head_dim = x.shape
    groups = B.shape[2]
    layout = ChunkLayout(batch, x.shape[1], chunk_size, cu_seqlens, x.device)
    c_c, b_c = to_chunks(C, layout), to_chunks(B, layout)  # per group, [B, G, N, C, d_state]
    v_c, dt_c = to_chunks(x, layout), to_chunks(dt, layout)  # per head, [B, H, N, C, head_dim] and [B, H, N, C]
    log_decay = (dt_c * A.float()[:, None, None]).cumsum(-1)  # G, [B, H, N, C]
    within = _WithinChunks.apply((c_c @ b_c.transpose(-1, -2))[:, :, None], *(
        t.unflatten(1, (groups, group)) for t in (log_decay, dt_c, v_c))).flatten(1, 2)  # [B, H, N, C, head_dim]

    def side_by_side(per_head: torch.Tensor) -> torch.Tensor:
        """``[B, H, N, C]`` -> ``[B, G, N, C, group, 1]``: a per-head factor for the heads of a group side by side."""
        return per_head.unflatten(1, (groups, group)).movedim(2, -1)[..., None]

    v_g = to_chunks(x.reshape(*x.shape[:2], groups, group * head_dim), layout)  # [B, G, N, C, group * head_dim]
    weights_to_end = dt_c * (log_decay[..., -1:] - log_decay).exp()
    u = (v_g.unflatten(-1, (group, head_dim)) * side_by_side(weights_to_end)).flatten(-2)
    chunk_decay = side_by_side(log_decay[..., -1:].exp()).expand(-1, -1, -1, -1, -1, head_dim).flatten(-2)
    states, _, final_state = scan_chunks(u, None, b_c.transpose(-1, -2), chunk_decay,
                                         _side_by_side_state(initial_state, groups), layout)  # (5)
    carried = (c_c @ states).unflatten(-1, (group, head_dim)) * side_by_side(log_decay.exp())
    y = from_chunks(within, layout) + from_chunks(carried.movedim(-2, 2).flatten(1, 2), layout)  # (4)
    return y, _per_head_state(final_state, group)


def _side_by_side_state(state: torch.Tensor | None, groups: int) -> torch.Tensor | None:
    """``[N, H, d_state, head_dim]`` -> ``[N, G, d_state, group * head_dim]`` (each group's heads side by side)."""
    if state is None:
        return None
    return state.unflatten(1, (groups, -1)).movedim(2, 3).flatten(-2)


def _per_head_state(state: torch.Tensor, group: int) -> torch.Tensor:
    """Inverse of :func:`_side_by_side_state`, contiguous (decoding reads it as one block per head)."""
    return state.unflatten(-1, (group, -1)).movedim(3, 2).flatten(1, 2).contiguous()


def recurrent_ssd(
    x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
    D: torch.Tensor | None = None, initial_state: torch.Tensor | None = None, output_final_state: bool = False,
    cu_seqlens: torch.Tensor | None = None, inplace_final_state: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The SSD recurrence token by token (decoding), equations (1)-(3):

        h_t = exp(dt_t A) h_{t-1} + dt_t B_t x_t^T,   y_t = h_t^T C_t + D x_t

    Same arguments and returns as :func:`chunk_ssd` (without ``chunk_size``); one token is one step. On CUDA with fla
    installed and no gradient needed (decoding) fla's fused recurrent simple-GLA kernel runs it; else one token
    (``T = 1``, no ``cu_seqlens``) is :func:`~memlm.ops.common.recurrent.recurrent_step` and longer inputs
    :func:`naive_ssd`. ``inplace_final_state`` as :func:`memlm.ops.gated_delta_rule.recurrent_gated_delta_rule` has it.
    """
    group = _checked_group("recurrent_ssd", x, dt, A, B, C, D, initial_state, cu_seqlens)
    check_in_place("recurrent_ssd", inplace_final_state, initial_state, x, dt, A, B, C, D)
    keep = output_final_state or inplace_final_state
    if use_fla(x, B, C) and not needs_backward(x, dt, A, B, C, D, initial_state):
        y, final_state = _fla_ssd("fused_recurrent_simple_gla", x, dt, A, B, C, D, initial_state, keep, cu_seqlens,
                                  group)
    elif is_single_step(x, cu_seqlens):
        q, k, g = _as_linear_attention(dt, A, B, C, group)
        y, final_state = recurrent_step(q, k, x, g, 1.0, initial_state, in_place=inplace_final_state)  # (1)-(2)
        y = _skip(y, x, D)
    else:
        y, final_state = naive_ssd(x, dt, A, B, C, D, initial_state, keep, cu_seqlens)
    return y, kept_final_state(final_state, initial_state, inplace_final_state, output_final_state)


def naive_ssd(
    x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
    D: torch.Tensor | None = None, initial_state: torch.Tensor | None = None, output_final_state: bool = False,
    cu_seqlens: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The reference: equations (1)-(3) token by token in fp32 torch,

        h_t = exp(dt_t A) h_{t-1} + dt_t B_t x_t^T,   y_t = h_t^T C_t + D x_t

    Same arguments and returns as :func:`recurrent_ssd`.
    """
    group = _checked_group("naive_ssd", x, dt, A, B, C, D, initial_state, cu_seqlens)
    q, k, g = _as_linear_attention(dt, A, B, C, group)

    def step(state, k_t, x_t, g_t):
        return state * g_t.exp()[..., None, None] + k_t[..., None] * x_t[..., None, :]  # (1)-(2)

    y, final_state = recurrent_scan(step, q, (k, x, g), x.shape[-1], 1.0, initial_state, output_final_state,
                                    cu_seqlens)
    return _skip(y, x, D), final_state
