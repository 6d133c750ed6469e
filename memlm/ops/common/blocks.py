"""Long sequences in blocks of a bounded number of chunks, so that a chunked op's per-token cost does not grow
with the sequence length.

A chunked op batches its intra-chunk work over all chunks at once: every intermediate (``[B, H, N, C, D]`` chunks,
``[B, H, N, C, C]`` scores, ``[B, H, N, dk, dv]`` chunk states) spans the whole sequence. Once those outgrow the
cache (32 MiB of L3 holds one ``[1, 16384, 4, 128]`` fp32 tensor), each of the op's dozen passes over them goes
to main memory and the cost per token rises with T (chunked GatedDeltaNet, 1 thread: 21.6 us/token at 4k, 45.1
at 32k). :func:`run_in_blocks` cuts the sequence into blocks of whole chunks, runs the op on each block from the
state the previous block left, and concatenates the outputs: the same chunks, the same arithmetic, with a working
set bounded by the block. The state recurrence is exact across the cut (the chunkwise form already cuts the
sequence at every chunk), so the result equals one call over the whole sequence up to rounding.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

BLOCK_ELEMENTS = 1 << 19  # bound on one ``[B, L, H, D]`` fp32 block input (2 MiB): every intermediate stays cached
MIN_BLOCK_CHUNKS = 4  # never fewer chunks than this per block (the batched matmuls need some width)

BlockStep = Callable[[list[torch.Tensor], torch.Tensor | None, torch.Tensor | None],
                     tuple[torch.Tensor, torch.Tensor]]


def block_tokens(batch: int, heads: int, width: int, chunk_size: int) -> int:
    """Tokens per block: a multiple of ``chunk_size`` with ``batch * tokens * heads * width <= BLOCK_ELEMENTS``,
    at least ``MIN_BLOCK_CHUNKS`` chunks."""
    per_chunk = batch * chunk_size * heads * width
    return chunk_size * max(MIN_BLOCK_CHUNKS, BLOCK_ELEMENTS // per_chunk)


def run_in_blocks(
    step: BlockStep,
    tensors: Sequence[torch.Tensor],
    initial_state: torch.Tensor | None,
    cu_seqlens: torch.Tensor | None,
    tokens: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run ``step`` over blocks of ``tokens`` tokens, each starting from the state the previous one left.

    Args:
        step: ``step(block_tensors, initial_state, cu_seqlens) -> (out [B, L, ...], final_state [n, ...])``, the
            op over one block of ``L <= tokens`` tokens (``initial_state`` None: zeros; ``cu_seqlens`` None: one
            sequence per row).
        tensors: ``[B, T, ...]`` inputs, cut along T.
        initial_state: ``[N, ...]`` state entering each sequence (N = B, or the documents of ``cu_seqlens``), or
            None for zeros.
        cu_seqlens: ``[N + 1]`` offsets of packed documents in a batch of one row; a document crossing a block
            boundary continues in the next block from the state it reached.
        tokens: the block length, a multiple of the op's chunk size.

    Returns:
        ``out`` ``[B, T, ...]`` (the blocks' outputs concatenated) and ``final_state`` ``[N, ...]`` (fp32).
    """
    seq_len = tensors[0].shape[1]
    if seq_len <= tokens:
        return step(list(tensors), initial_state, cu_seqlens)
    # one split per input: slicing each block out separately would give the backward pass one full-length zero
    # gradient per block (quadratic in T)
    pieces = list(zip(*(t.split(tokens, dim=1) for t in tensors), strict=True))
    if cu_seqlens is None:
        outputs, state = [], initial_state
        for block in pieces:
            out, state = step(list(block), state, None)
            outputs.append(out)
        return torch.cat(outputs, dim=1), state
    offsets = cu_seqlens.tolist()
    states: list[torch.Tensor | None] = (
        [None] * (len(offsets) - 1) if initial_state is None else list(initial_state.float())
    )
    outputs = []
    for index, block in enumerate(pieces):
        start, end = index * tokens, min((index + 1) * tokens, seq_len)
        docs = [d for d in range(len(offsets) - 1) if offsets[d] < end and offsets[d + 1] > start]
        local = [max(offsets[d], start) - start for d in docs] + [min(offsets[docs[-1] + 1], end) - start]
        entering = None
        if any(states[d] is not None for d in docs):
            known = next(states[d] for d in docs if states[d] is not None)
            entering = torch.stack([known.new_zeros(known.shape) if states[d] is None else states[d] for d in docs])
        out, final = step(list(block), entering, torch.tensor(local, dtype=cu_seqlens.dtype, device=cu_seqlens.device))
        outputs.append(out)
        for d, leaving in zip(docs, final.unbind(0), strict=True):
            states[d] = leaving
    known = next(s for s in states if s is not None)  # every block holds a document, so some state was reached
    final_state = torch.stack([known.new_zeros(known.shape) if s is None else s for s in states])
    return torch.cat(outputs, dim=1), final_state.float()
