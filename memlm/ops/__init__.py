"""Pure tensor math: chunkwise kernels for training and prefill, token-by-token recurrences for decoding."""

from memlm.ops.based import based_linear_attention, naive_based_attention, taylor_feature_map
from memlm.ops.gated_delta_rule import chunk_gated_delta_rule, recurrent_gated_delta_rule
from memlm.ops.gla import chunk_gla, recurrent_gla

__all__ = [
    "based_linear_attention", "chunk_gated_delta_rule", "chunk_gla", "naive_based_attention",
    "recurrent_gated_delta_rule", "recurrent_gla", "taylor_feature_map",
]
