"""The generation-cache layer of memlm's memory mixers (``"memory"``, ``"memory_as_gate"``, ``"memory_as_context"``).

Memory layers are ``"linear_attention"`` layers for transformers, so ``DynamicCache(config=...)`` gives each a
``LinearAttentionLayer``. Its state is not one recurrent tensor but the mixer's whole state object (memory
weights and momentum, conv window and, for the attention variants, their own key/value window), so on its first
call a memory mixer puts a :class:`MemoryCacheLayer` (a ``LinearAttentionLayer`` subclass) in its place in the
cache's public ``layers`` list. Nothing of transformers is patched.
"""

from __future__ import annotations

import torch
from transformers.cache_utils import LinearAttentionLayer


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


def memory_cache_layer(cache, layer_idx: int) -> MemoryCacheLayer | None:
    """The layer's :class:`MemoryCacheLayer` (put in place of the empty ``LinearAttentionLayer`` transformers built
    for it, on the first call), or None without a cache; a clear error for a cache of another layout."""
    if cache is None:
        return None
    layer = cache.layers[layer_idx]
    if isinstance(layer, MemoryCacheLayer):
        return layer
    if type(layer) is not LinearAttentionLayer or layer.has_previous_state[0]:
        raise ValueError(
            f"layer {layer_idx} is a memory layer but its cache layer is {type(layer).__name__}: build the cache "
            "with DynamicCache(config=model.config)"
        )
    cache.layers[layer_idx] = MemoryCacheLayer()
    return cache.layers[layer_idx]
