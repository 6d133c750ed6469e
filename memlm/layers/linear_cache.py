"""Reading a linear layer's state from transformers' cache, the same way on every supported version.

transformers 5.16 to 5.x all keep a ``LinearAttentionLayer`` per ``"linear_attention"`` layer, with
``recurrent_states`` and ``has_previous_state`` dicts; only the newer ones add ``Cache`` accessors.
"""

from __future__ import annotations

import torch


def previous_recurrent_state(cache, layer_idx: int) -> torch.Tensor | None:
    """The recurrent state left by earlier tokens, or None before the first call (or without a cache)."""
    if cache is None:
        return None
    layer = cache.layers[layer_idx]
    if not hasattr(layer, "recurrent_states"):
        raise ValueError(
            f"layer {layer_idx} is a linear layer but its cache layer is {type(layer).__name__}: build the "
            "cache with DynamicCache(config=model.config)"
        )
    return layer.recurrent_states[0] if layer.has_previous_state[0] else None


def store_recurrent_state(cache, layer_idx: int, state: torch.Tensor) -> None:
    """Keep ``state`` for the next call and mark the layer as started (also for layers without a conv state)."""
    cache.update_recurrent_state(state, layer_idx)
    cache.layers[layer_idx].has_previous_state[0] = True
