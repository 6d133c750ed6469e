"""Chunk layout of the chunkwise ops: where each token of a ``[B, T]`` batch (or a packed row with
``cu_seqlens``) goes when the sequence is cut into chunks, and the moves between ``[B, T, H, D]`` and
``[B, H, N, C, D]``."""

from __future__ import annotations

from itertools import pairwise

import torch


class ChunkLayout:
    """Where each token of a ``[B, T]`` batch goes when the sequence is cut into chunks.

    The chunk is ``chunk_size`` tokens, or the smallest power of two (at least 16) that holds the longest
    sequence when that is shorter.

    Every document starts on a fresh chunk and is right-padded to a whole number of chunks. Padded
    positions get zero keys, values and gates (``g = 0``, ``beta = 0``), which leaves the state unchanged,
    so the state after a document's last chunk is its exact final state.
    """

    def __init__(self, batch: int, seq_len: int, chunk_size: int, cu_seqlens: torch.Tensor | None, device):
        longest = seq_len if cu_seqlens is None else int((cu_seqlens[1:] - cu_seqlens[:-1]).max())
        # Short sequences get a smaller chunk (a power of two, at least 16) instead of mostly padding.
        chunk_size = min(chunk_size, max(16, 1 << max(0, longest - 1).bit_length()))
        self.chunk_size = chunk_size
        self.seq_len = seq_len
        if cu_seqlens is None:
            num_chunks = max(1, -(-seq_len // chunk_size))
            self.doc_bounds = [(0, num_chunks)]
            self.token_index = None
            self.padded_len = num_chunks * chunk_size
        else:
            offsets = cu_seqlens.tolist()
            index, bounds, chunk = [], [], 0
            for start, end in pairwise(offsets):
                doc_chunks = max(1, -(-(end - start) // chunk_size))
                index.extend(range(chunk * chunk_size, chunk * chunk_size + end - start))
                bounds.append((chunk, chunk + doc_chunks))
                chunk += doc_chunks
            self.doc_bounds = bounds
            self.token_index = torch.tensor(index, dtype=torch.long, device=device)
            self.padded_len = chunk * chunk_size
        self.num_chunks = self.padded_len // chunk_size

    def pack(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, T, ...] -> [B, num_chunks * chunk_size, ...]`` with zeros at padded positions."""
        if self.token_index is None:
            pad = self.padded_len - self.seq_len
            if pad == 0:
                return x
            return torch.cat([x, x.new_zeros(x.shape[0], pad, *x.shape[2:])], dim=1)
        out = x.new_zeros(x.shape[0], self.padded_len, *x.shape[2:])
        return out.index_copy(1, self.token_index, x)

    def unpack(self, x: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`pack`: ``[B, num_chunks * chunk_size, ...] -> [B, T, ...]``."""
        if self.token_index is None:
            return x[:, : self.seq_len]
        return x.index_select(1, self.token_index)


def to_chunks(x: torch.Tensor, layout: ChunkLayout) -> torch.Tensor:
    """``[B, T, H, *D]`` -> fp32 ``[B, H, N, C, *D]`` (N chunks of C tokens)."""
    x = layout.pack(x.float())
    batch, _, heads = x.shape[:3]
    x = x.view(batch, layout.num_chunks, layout.chunk_size, heads, *x.shape[3:])
    return x.movedim(3, 1)


def from_chunks(x: torch.Tensor, layout: ChunkLayout) -> torch.Tensor:
    """fp32 ``[B, H, N, C, D]`` -> ``[B, T, H, D]``."""
    batch, heads = x.shape[:2]
    x = x.movedim(1, 3).reshape(batch, layout.padded_len, heads, x.shape[-1])
    return layout.unpack(x)
