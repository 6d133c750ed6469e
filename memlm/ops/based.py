"""Based linear attention (Arora et al., arXiv 2402.18668): causal linear attention with the second-order
Taylor feature map of ``exp``, normalized.

For q, k of a small dimension d (16 in the paper),

    phi(x) = [1, x / d^(1/4), vec(x x^T) / (sqrt(2) sqrt(d))]              (1)   (1 + d + d^2 features)

so that ``phi(q) . phi(k) = 1 + s + s^2 / 2`` with ``s = q . k / sqrt(d)``: the Taylor expansion of
``exp(s)`` to second order, which is at least 1/2 for every s (``((s + 1)^2 + 1) / 2``). Then

    y_i = sum_{j<=i} phi(q_i).phi(k_j) v_j / sum_{j<=i} phi(q_i).phi(k_j)   (2)

Both sums are one linear attention over ``[v, 1]`` (the last column gives the denominator), so the state
is one ``[1 + d + d^2, dv + 1]`` matrix per head. The chunked form, chunks of C tokens with ``S`` the state
entering a chunk, is

    O = Q S + tril(Q K^T) V,     S' = S + K^T V                                        (3)

(the GLA form of :mod:`memlm.ops.gla` without its decays, which would only cost time here); the recurrent
form and the CUDA path are :mod:`memlm.ops.gla`'s with zero decay (flash-linear-attention's kernels where
installed).

:func:`chunk_based` (training, prefill), :func:`recurrent_based` (decoding), :func:`naive_based` (the quadratic
reference); inputs ``[B, T, H, D]``.
"""

from __future__ import annotations

import math
from functools import partial

import torch

from memlm.ops.common.blocks import block_tokens, run_in_blocks
from memlm.ops.common.checks import check_linear_inputs
from memlm.ops.common.chunking import ChunkLayout, from_chunks, to_chunks
from memlm.ops.common.fla import use_fla
from memlm.ops.common.recurrent import check_in_place, is_single_step, kept_final_state, recurrent_step
from memlm.ops.common.scan import scan_chunks
from memlm.ops.gla import chunk_gla, recurrent_gla


def taylor_feature_map(x: torch.Tensor) -> torch.Tensor:
    """Equation (1): ``[..., d] -> [..., 1 + d + d * d]``."""
    d = x.shape[-1]
    second = (x[..., :, None] * x[..., None, :]).flatten(-2) / (math.sqrt(2) * math.sqrt(d))
    return torch.cat([x.new_ones(*x.shape[:-1], 1), x / d**0.25, second], dim=-1)


def with_denominator_column(v: torch.Tensor) -> torch.Tensor:
    """``[..., dv] -> [..., dv + 1]`` fp32: the values with a column of ones, whose attention sum is the
    denominator of equation (2)."""
    return torch.cat([v.float(), v.new_ones(*v.shape[:-1], 1, dtype=torch.float32)], dim=-1)


def _features(
    op: str, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_mask: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``phi(q)``, ``phi(k)`` (zero at masked keys) and ``[v, 1]``, all fp32 as the GLA ops compute."""
    if q.shape != k.shape:
        raise ValueError(f"{op}: q {tuple(q.shape)} and k {tuple(k.shape)} must have one shape")
    phi_q, phi_k = taylor_feature_map(q.float()), taylor_feature_map(k.float())
    if key_mask is not None:
        phi_k = phi_k * key_mask[:, :, None, None].to(phi_k.dtype)
    return phi_q, phi_k, with_denominator_column(v)


def _normalized(out: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Equation (2)'s division: numerator columns over the denominator column, in v's dtype."""
    # the denominator is >= 1/2 per key seen (module notes); 0 only before any unmasked key (left pads: y = 0)
    return (out[..., :-1] / out[..., -1:].clamp_min(1e-6)).to(v.dtype)


def chunk_based(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, initial_state: torch.Tensor | None = None,
    output_final_state: bool = False, cu_seqlens: torch.Tensor | None = None, chunk_size: int = 64,
    key_mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Equation (2) over a sequence, chunk by chunk (training and prefill), through equation (3):

        y_i = sum_{j<=i} phi(q_i).phi(k_j) v_j / sum_{j<=i} phi(q_i).phi(k_j),
        per chunk  O = Q S + tril(Q K^T) V,  S' = S + K^T V   (over phi and [v, 1])

    Args:
        q, k: ``[B, T, H, d]`` (projected to the small feature dimension).
        v: ``[B, T, H, dv]``.
        initial_state: ``[N, H, 1 + d + d^2, dv + 1]`` (numerator state | denominator state), N = B or the
            number of documents with ``cu_seqlens``.
        cu_seqlens: ``[N + 1]`` offsets of packed documents in a batch of one row.
        key_mask: ``[B, T]`` 0/1: keys at 0 (padding) add nothing to either sum (``phi(0)`` is not zero: its
            constant feature would count a pad in the denominator).

    Returns:
        ``y`` ``[B, T, H, dv]`` in v's dtype, and the final state (fp32) or None.
    """
    phi_q, phi_k, values = _features("chunk_based", q, k, v, key_mask)
    if use_fla(phi_q, phi_k, values):
        out, state = chunk_gla(
            phi_q, phi_k, values, phi_q.new_zeros(phi_q.shape), scale=1.0, initial_state=initial_state,
            output_final_state=output_final_state, cu_seqlens=cu_seqlens, chunk_size=chunk_size,
        )
    else:
        out, state = chunk_linear_attention(phi_q, phi_k, values, initial_state, cu_seqlens, chunk_size)
        state = state if output_final_state else None
    return _normalized(out, v), state


def recurrent_based(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, initial_state: torch.Tensor | None = None,
    output_final_state: bool = False, cu_seqlens: torch.Tensor | None = None, key_mask: torch.Tensor | None = None,
    inplace_final_state: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Equation (2) token by token (decoding): linear attention without decay over ``phi`` and ``[v, 1]``,

        S_t = S_{t-1} + phi(k_t) [v_t, 1]^T,   y_t = (S_t^T phi(q_t))[:dv] / (S_t^T phi(q_t))[dv]

    One token on the torch path (``T = 1``, no ``cu_seqlens``) is :func:`~memlm.ops.common.recurrent.recurrent_step`
    without a decay; otherwise :func:`memlm.ops.gla.recurrent_gla` with zero decay (fla's kernel on CUDA). Same
    arguments and returns as :func:`chunk_based` (no ``chunk_size``), and ``inplace_final_state`` as
    :func:`memlm.ops.gated_delta_rule.recurrent_gated_delta_rule` has it.
    """
    phi_q, phi_k, values = _features("recurrent_based", q, k, v, key_mask)
    if use_fla(phi_q, phi_k, values) or not is_single_step(phi_q, cu_seqlens):
        out, state = recurrent_gla(
            phi_q, phi_k, values, phi_q.new_zeros(phi_q.shape), scale=1.0, initial_state=initial_state,
            output_final_state=output_final_state, cu_seqlens=cu_seqlens, inplace_final_state=inplace_final_state,
        )
        return _normalized(out, v), state
    check_linear_inputs("recurrent_based", phi_q, phi_k, values, {}, initial_state, cu_seqlens)
    check_in_place("recurrent_based", inplace_final_state, initial_state, phi_q, phi_k, values)
    out, state = recurrent_step(phi_q, phi_k, values, None, 1.0, initial_state, in_place=inplace_final_state)
    return _normalized(out, v), kept_final_state(state, initial_state, inplace_final_state, output_final_state)


def chunk_linear_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    initial_state: torch.Tensor | None = None,
    cu_seqlens: torch.Tensor | None = None,
    chunk_size: int = 64,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Equation (3): causal linear attention without decay or scale, chunk by chunk.

    ``q, k [B, T, H, dk]``, ``v [B, T, H, dv]``, ``initial_state [N, H, dk, dv]`` -> ``(o [B, T, H, dv] fp32,
    final state [N, H, dk, dv] fp32)``; documents of ``cu_seqlens`` start from their own state.
    """
    check_linear_inputs("chunk_linear_attention", q, k, v, {}, initial_state, cu_seqlens)
    tokens = block_tokens(q.shape[0], q.shape[2], q.shape[-1] + v.shape[-1], chunk_size)
    return run_in_blocks(partial(_linear_attention_block, chunk_size=chunk_size), (q, k, v), initial_state,
                         cu_seqlens, tokens)


def _linear_attention_block(tensors: list[torch.Tensor], initial_state: torch.Tensor | None,
                            cu_seqlens: torch.Tensor | None, chunk_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Equation (3) over one block of whole chunks (:func:`memlm.ops.common.blocks.run_in_blocks`)."""
    q, k, v = tensors
    layout = ChunkLayout(q.shape[0], q.shape[1], chunk_size, cu_seqlens, q.device)
    q_c, k_c, v_c = (to_chunks(x.float(), layout) for x in (q, k, v))  # [B, H, N, C, d]
    no_decay = q_c.new_ones(*q_c.shape[:3], 1, 1)
    states, _, final_state = scan_chunks(v_c, None, k_c.transpose(-1, -2), no_decay, initial_state, layout)
    causal = torch.ones(layout.chunk_size, layout.chunk_size, dtype=torch.bool, device=q.device).tril()
    o = q_c @ states + ((q_c @ k_c.transpose(-1, -2)) * causal) @ v_c
    return from_chunks(o, layout), final_state


def naive_based(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """The reference: equation (2) as masked quadratic attention with weights ``1 + s + s^2 / 2``,

        y_i = sum_{j<=i} w_ij v_j / sum_{j<=i} w_ij,   w_ij = 1 + s_ij + s_ij^2 / 2,   s_ij = q_i . k_j / sqrt(d)
    """
    dtype = torch.promote_types(q.dtype, torch.float32)  # fp64 inputs give an fp64 reference
    s = torch.einsum("bthd,bshd->bhts", q.to(dtype), k.to(dtype)) / math.sqrt(q.shape[-1])
    causal = torch.ones(q.shape[1], q.shape[1], dtype=torch.bool, device=q.device).tril()
    weights = (1 + s + s.square() / 2) * causal
    y = torch.einsum("bhts,bshd->bthd", weights, v.to(dtype)) / weights.sum(-1).transpose(1, 2)[..., None]
    return y.to(v.dtype)
