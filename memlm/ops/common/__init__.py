"""Shared plumbing of the ops in :mod:`memlm.ops`, one module per concern.

- :mod:`~memlm.ops.common.checks`: argument checks of the linear-recurrence ops.
- :mod:`~memlm.ops.common.chunking`: the chunk layout (documents start on fresh chunks, padded with no-op tokens).
- :mod:`~memlm.ops.common.scan`: the chunk-level state scan and its hand-written backward.
- :mod:`~memlm.ops.common.blocks`: long sequences in blocks of a bounded number of chunks (cost per token flat in T).
- :mod:`~memlm.ops.common.recurrent`: the token-by-token recurrence of the ``naive_*`` references.
- :mod:`~memlm.ops.common.fla`: dispatch to flash-linear-attention's kernels.

Every op takes tensors laid out ``[B, T, H, D]`` and an optional ``cu_seqlens`` (cumulative document lengths of
a packed row, as in FlashAttention and fla); a state never crosses a document boundary.
"""
