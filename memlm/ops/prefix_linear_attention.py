"""Prefix linear attention (JRT-RNN, Arora et al., arXiv 2407.05483): Based linear attention whose
queries also read the whole prefix (the prompt) non-causally, through encoder keys and values.

For a prefix of ``N`` tokens, with ``phi`` the Taylor feature map of :mod:`memlm.ops.based`,

    y_i = (sum_{j<=i} phi(q_i).phi(k_j) v_j + sum_{j<N} phi(q_i).phi(ke_j) ve_j)
          / (phi(q_i).(sum_{j<=i} phi(k_j) + sum_{j<N} phi(ke_j)))                         (1)

The encoder sums do not depend on ``i``: they are one state per sequence,

    S_enc = sum_{j<N} phi(ke_j) [ve_j, 1]^T          ([1 + d + d^2, dv + 1] per head)        (2)

and (1) is causal Based attention started from ``S_enc`` (plus any state carried over from earlier
tokens). Its final state is ``S_enc + S_dec``, the sum of the encoder and decoder states, from which
decoding continues recurrently.

:func:`chunk_prefix_linear_attention` (training, prefill), :func:`recurrent_prefix_linear_attention` (token by
token), :func:`naive_prefix_linear_attention` (the quadratic reference); inputs ``[B, T, H, D]``.
"""

from __future__ import annotations

import math

import torch

from memlm.ops.based import chunk_based, recurrent_based, taylor_feature_map, with_denominator_column


def prefix_token_mask(
    prefix_length: int | torch.Tensor,
    batch: int,
    seq_len: int,
    cu_seqlens: torch.Tensor | None = None,
    device: torch.device | None = None,
) -> torch.Tensor:
    """``[B, T]`` bool, True at the prefix tokens.

    Args:
        prefix_length: an int (every sequence), or a LongTensor ``[B]`` (one per row), or with ``cu_seqlens``
            ``[N]`` (one per packed document); each between 0 and its sequence's length.
        cu_seqlens: ``[N + 1]`` offsets of packed documents in the ``B x T`` tokens read one after the other.

    Raises:
        ValueError: naming ``prefix_length``, its value and the lengths allowed.
    """
    if cu_seqlens is None:
        starts = torch.arange(batch, device=device) * seq_len
        sequence_lengths = torch.full((batch,), seq_len, device=device)
    else:
        starts, sequence_lengths = cu_seqlens[:-1].to(device), cu_seqlens.diff().to(device)
    count = len(starts)
    what = "documents (cu_seq_lens_q)" if cu_seqlens is not None else "rows"
    if isinstance(prefix_length, int) and not isinstance(prefix_length, bool):
        lengths = torch.full((count,), prefix_length, device=device)
    elif isinstance(prefix_length, torch.Tensor) and not prefix_length.is_floating_point() and (
        prefix_length.dim() == 0 or prefix_length.shape == (count,)
    ):
        lengths = prefix_length.to(device).expand(count)
    else:
        shape = tuple(prefix_length.shape) if isinstance(prefix_length, torch.Tensor) else type(prefix_length).__name__
        raise ValueError(
            f"prefix_length must be an int or an integer tensor of shape [{count}] (one per {what}), got {shape}"
        )
    if bool((lengths < 0).any()) or bool((lengths > sequence_lengths).any()):
        raise ValueError(
            f"prefix_length={lengths.tolist()} must lie between 0 and the length of each of the {what}, "
            f"{sequence_lengths.tolist()}"
        )
    positions = torch.arange(batch * seq_len, device=device)
    sequence = torch.searchsorted(starts, positions, right=True) - 1
    return (positions - starts[sequence] < lengths[sequence]).view(batch, seq_len)


def prefix_encoder_state(
    ke: torch.Tensor, ve: torch.Tensor, prefix_mask: torch.Tensor, cu_seqlens: torch.Tensor | None = None
) -> torch.Tensor:
    """Equation (2): ``ke [B, T, H, d]``, ``ve [B, T, H, dv]``, ``prefix_mask [B, T]`` ->
    ``[N, H, 1 + d + d^2, dv + 1]`` fp32 (N = B, or the number of documents with ``cu_seqlens``)."""
    phi = taylor_feature_map(ke.float()) * prefix_mask[:, :, None, None].to(torch.float32)
    values = with_denominator_column(ve)
    if cu_seqlens is None:
        columns = prefix_mask.any(0).nonzero()
        read = int(columns[-1]) + 1 if len(columns) else 0  # no prefix token lies beyond this column
        return torch.einsum("bthf,bthv->bhfv", phi[:, :read], values[:, :read])
    bounds = cu_seqlens.tolist()
    return torch.stack([
        torch.einsum("thf,thv->hfv", phi[0, start:end], values[0, start:end])
        for start, end in zip(bounds[:-1], bounds[1:], strict=True)
    ])


def _starting_state(ke, ve, prefix_mask, initial_state, cu_seqlens) -> torch.Tensor:
    """``S_enc`` of equation (2), plus ``initial_state`` (a state carried over from earlier tokens) if given."""
    state = prefix_encoder_state(ke, ve, prefix_mask, cu_seqlens)
    return state if initial_state is None else state + initial_state


def chunk_prefix_linear_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, ke: torch.Tensor, ve: torch.Tensor, prefix_mask: torch.Tensor,
    initial_state: torch.Tensor | None = None, output_final_state: bool = False,
    cu_seqlens: torch.Tensor | None = None, chunk_size: int = 64, key_mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Equation (1) over a sequence, chunk by chunk (training and prefill): causal Based
    (:func:`memlm.ops.based.chunk_based`) started from the encoder state of equation (2),

        y_i = (sum_{j<=i} phi(q_i).phi(k_j) v_j + sum_{j<N} phi(q_i).phi(ke_j) ve_j)
              / (phi(q_i).(sum_{j<=i} phi(k_j) + sum_{j<N} phi(ke_j)))

    Args:
        q, k, ke: ``[B, T, H, d]``; v, ve: ``[B, T, H, dv]``.
        prefix_mask: ``[B, T]`` bool, True at the prefix tokens (see :func:`prefix_token_mask`); padding in it
            must already be False.
        initial_state, output_final_state, cu_seqlens, chunk_size, key_mask: as in
            :func:`memlm.ops.based.chunk_based`.

    Returns:
        ``y`` ``[B, T, H, dv]`` and the final state (encoder + decoder, fp32) or None.
    """
    return chunk_based(
        q, k, v, initial_state=_starting_state(ke, ve, prefix_mask, initial_state, cu_seqlens),
        output_final_state=output_final_state, cu_seqlens=cu_seqlens, chunk_size=chunk_size, key_mask=key_mask,
    )


def recurrent_prefix_linear_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, ke: torch.Tensor, ve: torch.Tensor, prefix_mask: torch.Tensor,
    initial_state: torch.Tensor | None = None, output_final_state: bool = False,
    cu_seqlens: torch.Tensor | None = None, key_mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Equation (1) token by token: :func:`memlm.ops.based.recurrent_based` started from ``S_enc`` of (2),

        S_0 = S_enc,   S_t = S_{t-1} + phi(k_t) [v_t, 1]^T,   y_t = (S_t^T phi(q_t))[:dv] / (S_t^T phi(q_t))[dv]

    Same arguments and returns as :func:`chunk_prefix_linear_attention` (no ``chunk_size``). Decoding after the
    prefix was read continues with :func:`memlm.ops.based.recurrent_based` from the returned state.
    """
    return recurrent_based(
        q, k, v, initial_state=_starting_state(ke, ve, prefix_mask, initial_state, cu_seqlens),
        output_final_state=output_final_state, cu_seqlens=cu_seqlens, key_mask=key_mask,
    )


def naive_prefix_linear_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, ke: torch.Tensor, ve: torch.Tensor, prefix_length: torch.Tensor
) -> torch.Tensor:
    """The reference: equation (1) as two quadratic attentions with weights ``w = 1 + s + s^2 / 2``,

        y_i = (sum_{j<=i} w(q_i, k_j) v_j + sum_{j<N} w(q_i, ke_j) ve_j)
              / (sum_{j<=i} w(q_i, k_j) + sum_{j<N} w(q_i, ke_j))

    ``prefix_length`` ``[B]``: row ``b`` reads ``ke, ve`` at positions ``< prefix_length[b]``.
    """
    dtype = torch.promote_types(q.dtype, torch.float32)
    seq_len, scale = q.shape[1], math.sqrt(q.shape[-1])
    s = torch.einsum("bthd,bshd->bhts", q.to(dtype), k.to(dtype)) / scale
    s_enc = torch.einsum("bthd,bshd->bhts", q.to(dtype), ke.to(dtype)) / scale
    positions = torch.arange(seq_len, device=q.device)
    causal = positions[None, :] <= positions[:, None]
    in_prefix = (positions[None, :] < prefix_length[:, None])[:, None, None, :]  # [B, 1, 1, S]
    weights, weights_enc = (1 + s + s.square() / 2) * causal, (1 + s_enc + s_enc.square() / 2) * in_prefix
    numerator = torch.einsum("bhts,bshd->bthd", weights, v.to(dtype)) + torch.einsum(
        "bhts,bshd->bthd", weights_enc, ve.to(dtype)
    )
    denominator = (weights.sum(-1) + weights_enc.sum(-1)).transpose(1, 2)[..., None]
    return (numerator / denominator).to(v.dtype)
