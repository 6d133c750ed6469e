"""Build ``config.layer_types`` from a linear:full ratio."""

from __future__ import annotations

import re

from memlm.layers.registry import ATTENTION_LAYER_TYPES, LINEAR_LAYER_TYPE


def parse_ratio(ratio: str) -> tuple[int, int]:
    """``"3:1" -> (3, 1)``: linear layers, then attention layers, per repeating block."""
    match = re.fullmatch(r"\s*(\d+)\s*:\s*(\d+)\s*", ratio) if isinstance(ratio, str) else None
    if match is None or (int(match[1]) == 0 and int(match[2]) == 0):
        raise ValueError(
            f"hybrid ratio must be 'LINEAR:ATTENTION' with non-negative integers, not both 0 "
            f"(e.g. '3:1', '1:0' all linear, '0:1' all attention), got {ratio!r}"
        )
    return int(match[1]), int(match[2])


def hybrid_layer_types(num_layers: int, ratio: str = "3:1", attention: str = "full_attention") -> list[str]:
    """Layer pattern of a hybrid stack.

    ``"3:1"`` puts one ``attention`` layer after every three ``"linear_attention"`` layers
    (``L L L A L L L A ...``); ``"1:0"`` is all linear, ``"0:1"`` all attention.

    Args:
        num_layers: total number of layers; must be a whole number of ``linear + attention`` blocks.
        ratio: ``"LINEAR:ATTENTION"``.
        attention: ``"full_attention"`` or ``"sliding_attention"``.

    Raises:
        ValueError: for a malformed ratio, a ratio that does not divide ``num_layers``, or an unknown
            attention type.
    """
    if attention not in ATTENTION_LAYER_TYPES:
        raise ValueError(f"attention must be one of {list(ATTENTION_LAYER_TYPES)}, got {attention!r}")
    linear, full = parse_ratio(ratio)
    if not isinstance(num_layers, int) or num_layers <= 0 or num_layers % (linear + full):
        raise ValueError(
            f"hybrid ratio {ratio!r} repeats a block of {linear + full} layers, which does not fit "
            f"num_hidden_layers={num_layers}: use a multiple of {linear + full}"
        )
    return ([LINEAR_LAYER_TYPE] * linear + [attention] * full) * (num_layers // (linear + full))
