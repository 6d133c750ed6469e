"""The generation-cache layer of memlm's memory layer types (``"memory"``, ``"memory_as_gate"``, ...).

transformers' ``DynamicCache(config=...)`` builds one cache layer per entry of ``config.layer_types``
from a name -> class mapping; memlm adds its memory layer types to that mapping when imported. A memory
cache layer is a linear-attention layer for transformers (no per-token keys for its masks or sequence
length): it holds the mixer's whole state object (memory weights and momentum, conv window and, for the
attention variants, their own key/value window), which the mixer reads and replaces on every call.
"""

from __future__ import annotations

import torch
from transformers import cache_utils
from transformers.cache_utils import LinearAttentionLayer

from memlm.layers.registry import MEMORY_LAYER_TYPES


class MemoryCacheLayer(LinearAttentionLayer):
    """Holds ``state`` (an object with ``map(fn)`` over its tensors, batch first) and ``seq_length``.

    ``seq_length`` counts the token columns read so far (pads included), as an attention layer's would.
    """

    def __init__(self, **kwargs):
        super().__init__(number_of_states=1)
        self.state = None
        self.seq_length = 0

    def update_state(self, state, new_tokens: int) -> None:
        self.state = state
        self.seq_length += new_tokens
        self.has_previous_state[0] = True

    def get_seq_length(self) -> int:
        return self.seq_length

    def reset(self) -> None:
        super().reset()
        self.state, self.seq_length = None, 0

    def _map(self, fn) -> None:
        if self.state is not None:
            self.state = self.state.map(fn)

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        self._map(lambda t: t.index_select(0, beam_idx.to(t.device)))

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        self._map(lambda t: t[indices])

    def batch_repeat_interleave(self, repeats: int) -> None:
        self._map(lambda t: t.repeat_interleave(repeats, dim=0))

    def crop(self, tokens_to_remove: int) -> None:
        if tokens_to_remove > 0:
            raise ValueError(
                "a memory layer's state cannot be rolled back: its weights have already learned the tokens"
            )

    def offload(self) -> None:
        self._map(lambda t: t.to("cpu", non_blocking=True))

    def prefetch(self) -> None:
        pass


for _layer_type in MEMORY_LAYER_TYPES:
    cache_utils.DYNAMIC_LAYER_TYPE_MAPPING[_layer_type] = MemoryCacheLayer
    cache_utils.STATIC_LAYER_TYPE_MAPPING[_layer_type] = MemoryCacheLayer


def memory_cache_layer(cache, layer_idx: int) -> MemoryCacheLayer | None:
    """The layer's :class:`MemoryCacheLayer`, or None without a cache; a clear error for a foreign cache."""
    if cache is None:
        return None
    layer = cache.layers[layer_idx]
    if not isinstance(layer, MemoryCacheLayer):
        raise ValueError(
            f"layer {layer_idx} is a memory layer but its cache layer is {type(layer).__name__}: build the cache "
            "with DynamicCache(config=model.config) after importing memlm"
        )
    return layer
