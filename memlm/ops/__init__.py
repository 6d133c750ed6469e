"""Pure tensor math: chunkwise kernels for training and prefill, token-by-token recurrences for decoding."""

from memlm.ops.gated_delta_rule import chunk_gated_delta_rule, recurrent_gated_delta_rule
from memlm.ops.gla import chunk_gla, recurrent_gla

__all__ = ["chunk_gated_delta_rule", "chunk_gla", "recurrent_gated_delta_rule", "recurrent_gla"]
