"""Pure tensor math, named and laid out as in flash-linear-attention.

Every op module exposes ``chunk_<op>`` (training and prefill), ``recurrent_<op>`` (decoding, token by token) and
``naive_<op>`` (the plain reference the tests compare against), each with the paper's equation in its docstring.
Every op takes and returns tensors laid out ``[B, T, H, D]``. Shared plumbing lives in :mod:`memlm.ops.common`.
"""

from memlm.ops.based import chunk_based, naive_based, recurrent_based, taylor_feature_map
from memlm.ops.gated_delta_rule import chunk_gated_delta_rule, naive_gated_delta_rule, recurrent_gated_delta_rule
from memlm.ops.gla import chunk_gla, naive_gla, recurrent_gla
from memlm.ops.kda import chunk_kda, naive_kda, recurrent_kda
from memlm.ops.neural_memory import chunk_neural_memory, naive_neural_memory, recurrent_neural_memory
from memlm.ops.prefix_linear_attention import (
    chunk_prefix_linear_attention,
    naive_prefix_linear_attention,
    recurrent_prefix_linear_attention,
)
from memlm.ops.sliding_window_attention import chunk_sliding_window_attention, naive_sliding_window_attention
from memlm.ops.ssd import chunk_ssd, naive_ssd, recurrent_ssd

__all__ = [
    "chunk_based", "chunk_gated_delta_rule", "chunk_gla", "chunk_neural_memory", "chunk_prefix_linear_attention",
    "chunk_sliding_window_attention", "naive_based", "naive_gated_delta_rule", "naive_gla", "naive_neural_memory",
    "naive_prefix_linear_attention", "naive_sliding_window_attention", "recurrent_based", "recurrent_gated_delta_rule",
    "recurrent_gla", "recurrent_neural_memory", "recurrent_prefix_linear_attention", "taylor_feature_map",
    "chunk_ssd", "naive_ssd", "recurrent_ssd",
    "chunk_kda", "naive_kda", "recurrent_kda",
]
