"""Checks of a model call's inputs, before any layer runs.

Shapes are always checked. Token values are checked only where that costs no device synchronisation:
on CPU tensors (on a GPU, ``min``/``max`` would wait for the device at every call, including every
decoding step).
"""

from __future__ import annotations

import torch


def check_model_inputs(
    config, input_ids: torch.Tensor | None, inputs_embeds: torch.Tensor | None,
    attention_mask: torch.Tensor | None, has_cache: bool,
) -> None:
    """Raise a ValueError naming the argument when an input cannot be what the model reads.

    ``input_ids``: ``[B, T]`` ids in ``[0, vocab_size)`` with ``B, T >= 1``; ``inputs_embeds``:
    ``[B, T, hidden_size]``; ``attention_mask``: ``[B, T]`` (1 = token, 0 = padding), or ``[B, P + T]``
    when a cache holds ``P`` earlier tokens (``has_cache``), as ``generate`` passes it.
    """
    if (input_ids is None) == (inputs_embeds is None):
        raise ValueError("pass exactly one of input_ids or inputs_embeds")
    if input_ids is not None:
        name, rows, want = "input_ids", input_ids, "[batch, seq_len]"
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must be {want} token ids, got shape {tuple(input_ids.shape)}")
        if input_ids.is_floating_point() or input_ids.is_complex():
            raise ValueError(f"input_ids must hold integer token ids, got dtype {input_ids.dtype}")
    else:
        name, rows, want = "inputs_embeds", inputs_embeds, f"[batch, seq_len, {config.hidden_size}]"
        if inputs_embeds.dim() != 3 or inputs_embeds.shape[-1] != config.hidden_size:
            raise ValueError(f"inputs_embeds must be {want}, got shape {tuple(inputs_embeds.shape)}")
    batch, seq_len = rows.shape[:2]
    if batch == 0 or seq_len == 0:
        raise ValueError(f"{name} is empty (shape {tuple(rows.shape)}): give at least one row of at least one token")
    if input_ids is not None and input_ids.device.type == "cpu":
        low, high = int(input_ids.min()), int(input_ids.max())
        if low < 0 or high >= config.vocab_size:
            bad = low if low < 0 else high
            raise ValueError(
                f"input_ids holds token id {bad}, outside the model's vocabulary [0, {config.vocab_size}) "
                "(config.vocab_size)"
            )
    if attention_mask is None:
        return
    width = f">= {seq_len} (earlier tokens in the cache, then these)" if has_cache else f"{seq_len}"
    if (
        attention_mask.dim() != 2 or attention_mask.shape[0] != batch
        or attention_mask.shape[1] < seq_len or (not has_cache and attention_mask.shape[1] != seq_len)
    ):
        raise ValueError(
            f"attention_mask must be [batch, width] = [{batch}, {width}] to match {name} of shape "
            f"{tuple(rows.shape)}, got shape {tuple(attention_mask.shape)}"
        )
