"""The sequential part of the chunkwise ops: the chunk-level state scan, with a hand-written backward."""

from __future__ import annotations

import torch

from memlm.ops.common.chunking import ChunkLayout


class _ChunkStateScan(torch.autograd.Function):
    """The sequential part of a chunkwise op, with a hand-written backward.

    For each chunk c, with ``S_c`` the state entering it:

        V'_c    = U_c - W_c S_c            (V'_c = U_c when W is None)
        S_{c+1} = a_c * S_c + K_c^T V'_c

    Only the state (forward) and its gradient (backward) are carried sequentially; the gradients of
    U, W, K and a are then formed for all chunks at once with batched matmuls.
    """

    @staticmethod
    def forward(ctx, u, w, k_t, decay, initial_state, layout):
        states, corrected, finals = [], [], []
        for doc, (first, last) in enumerate(layout.doc_bounds):
            state = _entry_state(initial_state, doc, layout, u.shape[0], k_t.shape[-2], u.shape[-1], u)
            for c in range(first, last):
                states.append(state)
                fixed = u[:, :, c]
                if w is not None:
                    fixed = fixed - w[:, :, c] @ state
                    corrected.append(fixed)
                state = decay[:, :, c] * state + k_t[:, :, c] @ fixed
            finals.append(state)
        states = torch.stack(states, dim=2)
        corrected = u if w is None else torch.stack(corrected, dim=2)  # without a correction V' is U: no copy
        ctx.save_for_backward(w, k_t, decay, states, corrected)
        ctx.layout, ctx.has_initial_state = layout, initial_state is not None
        return states, corrected, torch.cat(finals, dim=0)

    @staticmethod
    def backward(ctx, d_states, d_corrected, d_final):
        w, k_t, decay, states, corrected = ctx.saved_tensors
        layout = ctx.layout
        d_states = torch.zeros_like(states) if d_states is None else d_states
        d_corrected = torch.zeros_like(corrected) if d_corrected is None else d_corrected
        d_leaving, d_fixed, d_initial = [None] * layout.num_chunks, [None] * layout.num_chunks, []
        for doc, (first, last) in enumerate(layout.doc_bounds):
            if d_final is None:
                grad = torch.zeros_like(states[:, :, first])
            elif layout.token_index is None:
                grad = d_final
            else:
                grad = d_final[doc : doc + 1]
            for c in range(last - 1, first - 1, -1):
                d_leaving[c] = grad
                d_fixed[c] = d_corrected[:, :, c] + k_t[:, :, c].transpose(-1, -2) @ grad
                grad = decay[:, :, c] * grad + d_states[:, :, c]
                if w is not None:
                    grad = grad - w[:, :, c].transpose(-1, -2) @ d_fixed[c]
            d_initial.append(grad)
        d_leaving, d_fixed = torch.stack(d_leaving, dim=2), torch.stack(d_fixed, dim=2)
        d_w = None if w is None else -(d_fixed @ states.transpose(-1, -2))
        d_k_t = d_leaving @ corrected.transpose(-1, -2)
        d_decay = (d_leaving * states).sum(dim=tuple(i for i in (3, 4) if decay.shape[i] == 1), keepdim=True)
        d_init = torch.cat(d_initial, dim=0) if ctx.has_initial_state else None
        return d_fixed, d_w, d_k_t, d_decay, d_init, None


def _entry_state(initial_state, doc, layout, batch, dk, dv, reference):
    """State entering document ``doc``: ``[B, H, dk, dv]`` fp32."""
    heads = reference.shape[1]
    if initial_state is None:
        return reference.new_zeros(batch, heads, dk, dv)
    if layout.token_index is None:
        return initial_state.to(reference.dtype)
    return initial_state[doc : doc + 1].to(reference.dtype)


def scan_chunks(
    u: torch.Tensor,
    w: torch.Tensor | None,
    k_t: torch.Tensor,
    decay: torch.Tensor,
    initial_state: torch.Tensor | None,
    layout: ChunkLayout,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Run the state recurrence across chunks (see :class:`_ChunkStateScan`).

    Args:
        u: ``[B, H, N, C, dv]`` values written by each chunk.
        w: ``[B, H, N, C, dk]`` delta-rule correction (``V' = U - W S``), or None for plain linear attention.
        k_t: ``[B, H, N, dk, C]`` keys, transposed, already decayed to the end of their chunk.
        decay: ``[B, H, N, 1, 1]`` (scalar per head), ``[B, H, N, dk, 1]`` (per key channel) or ``[B, H, N, 1, dv]``
            (per value channel: several heads sharing keys side by side, as Mamba-2's SSD runs them): the decay of
            the whole chunk.
        initial_state: ``[num_seqs, H, dk, dv]`` or None for zeros; each document starts from its own.
        layout: chunk layout of the sequences.

    Returns:
        ``states`` ``[B, H, N, dk, dv]`` (the state entering each chunk), ``corrected`` ``[B, H, N, C, dv]``
        (``V'``; ``u`` itself, not a copy, when ``w`` is None), and ``final_state`` ``[num_seqs, H, dk, dv]``.
    """
    if initial_state is not None:
        initial_state = initial_state.float()
    return _ChunkStateScan.apply(u, w, k_t, decay, initial_state, layout)
