"""The few transformers names that changed within the supported range (5.16 to 5.x).

transformers renamed the cache argument and output field from ``past_key_values`` to ``cache``
(deprecated alias until 5.40). memlm accepts both and returns the field the installed version reads.
"""

from __future__ import annotations

import dataclasses

from transformers.masking_utils import create_causal_mask, create_sliding_window_causal_mask
from transformers.modeling_outputs import CausalLMOutputWithPast

CACHE_FIELD = "cache" if "cache" in {f.name for f in dataclasses.fields(CausalLMOutputWithPast)} else "past_key_values"


def attention_masks(config, inputs_embeds, attention_mask, cache, position_ids, skip=()) -> dict[str, object]:
    """Masks of the attention layer types present in ``config.layer_types`` (cache passed positionally), but
    for the types in ``skip`` (None: their layers need no mask).

    Each mask is sized against the cache of the first layer of its own type (``layer_idx``): left to itself,
    transformers 5.16 sizes a full-attention mask against the first attention layer of any kind, a sliding
    one's window where that comes first.
    """
    builders = {"full_attention": create_causal_mask, "sliding_attention": create_sliding_window_causal_mask}
    return {
        layer_type: None if layer_type in skip else builder(
            config, inputs_embeds, attention_mask, cache, position_ids, layer_idx=config.layer_types.index(layer_type)
        )
        for layer_type, builder in builders.items()
        if layer_type in config.layer_types
    }
