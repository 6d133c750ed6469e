"""Pure tensor math: chunkwise kernels for training and prefill, token-by-token recurrences for decoding."""

from memlm.ops.gated_delta_rule import chunk_gated_delta_rule, recurrent_gated_delta_rule

__all__ = ["chunk_gated_delta_rule", "recurrent_gated_delta_rule"]
