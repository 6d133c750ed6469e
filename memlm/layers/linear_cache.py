"""Reading a linear layer's state from transformers' cache, the same way on every supported version.

transformers 5.16 to 5.x all keep a ``LinearAttentionLayer`` per ``"linear_attention"`` layer, with
``recurrent_states`` and ``has_previous_state`` dicts; only the newer ones add ``Cache`` accessors.
"""

from __future__ import annotations

import torch

from memlm.ops.common.fla import needs_backward


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


def masked_and_previous_state(hidden_states: torch.Tensor, mask: torch.Tensor | None, cache,
                              layer_idx: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The start of a linear layer's ``mix``: ``hidden_states [B, T, hidden]`` with the pads of ``mask [B, T]`` (None:
    no padding) zeroed, so padding never enters the conv or recurrent state, and :func:`previous_recurrent_state`."""
    if mask is not None:
        hidden_states = hidden_states * mask[..., None].to(hidden_states.dtype)
    return hidden_states, previous_recurrent_state(cache, layer_idx)


def store_recurrent_state(cache, layer_idx: int, state: torch.Tensor) -> None:
    """Keep ``state`` for the next call and mark the layer as started (also for layers without a conv state)."""
    cache.update_recurrent_state(state, layer_idx)
    cache.layers[layer_idx].has_previous_state[0] = True


def decodes_in_place(cache, state: torch.Tensor | None, *inputs: torch.Tensor | None) -> bool:
    """Whether a decoding step may write its new state into the cached ``state`` (a ``recurrent_*`` op's
    ``inplace_final_state``), so the cache keeps one state tensor and nothing is reallocated: there is a cache and a
    cached fp32 state, and no gradient flows through it or the op's ``inputs`` (an in-place write would change what
    autograd saved)."""
    return (cache is not None and state is not None and state.dtype == torch.float32
            and not needs_backward(state, *inputs))


def run_rule(chunk_op, recurrent_op, tensors: tuple, state: torch.Tensor | None, cache, layer_idx: int,
             cu_seqlens: torch.Tensor | None) -> torch.Tensor:
    """A linear layer's op over ``tensors`` (``q [B, T, H, dk]`` first, as the ops take them): ``recurrent_op`` for one
    decoding token after a cached ``state`` (read with :func:`previous_recurrent_state` before anything updates the
    cache; the op writes the new state into it where :func:`decodes_in_place`), else ``chunk_op``; the final state is
    stored in ``cache``. Returns the op's output ``[B, T, H, dv]``."""
    kwargs = {"initial_state": state, "output_final_state": cache is not None, "cu_seqlens": cu_seqlens}
    if state is not None and tensors[0].shape[1] == 1:
        out, final_state = recurrent_op(*tensors, inplace_final_state=decodes_in_place(cache, state, *tensors),
                                        **kwargs)
    else:
        out, final_state = chunk_op(*tensors, **kwargs)
    if cache is not None:
        store_recurrent_state(cache, layer_idx, final_state)
    return out
