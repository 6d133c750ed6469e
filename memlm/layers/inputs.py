"""What every mixer reads besides its hidden states: built once per forward by the model."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch
from torch import nn


@dataclass
class MixerInputs:
    """The per-forward inputs of every mixer (``mixer(hidden_states, inputs)``).

    Attributes:
        attention_mask: ``[B, P + T]`` (1 = token, 0 = padding; ``P`` tokens already in the cache), or None.
        attention_masks: per attention layer type, the mask transformers' builders made for it (None: causal,
            or the layer reads the sequence in blocks).
        position_ids: ``[B or 1, T]``.
        position_embeddings: rotary ``(cos, sin)``, each ``[B or 1, T, rotary_dim]`` (``head_dim`` unless
            partial), or None (``position_embedding_type="nope"``: no position embedding).
        cache: transformers' ``DynamicCache(config=...)`` or None.
        cu_seqlens: ``[N + 1]`` offsets of packed documents in the ``[B, T]`` rows read one after the other,
            or None.
        prefix_mask: ``[B, T]`` bool, True at the tokens a prefix layer reads non-causally (JRT-RNN), or None.
        sliding_in_blocks: sliding-window layers read the whole sequence in blocks (no mask).
        attention_weights: where given (``output_attentions``), attention layers store their weights here
            under their ``layer_idx``.
        attention_kwargs: passed on to transformers' attention interface (e.g. FlashAttention's varlen
            arguments for packed documents).
        forget_lower_bounds: HGRN-2's depth-wise lower bounds (the model's module; each layer reads its row).
    """

    attention_mask: torch.Tensor | None
    attention_masks: dict[str, object]
    position_ids: torch.Tensor
    position_embeddings: tuple[torch.Tensor, torch.Tensor] | None
    cache: object | None = None
    cu_seqlens: torch.Tensor | None = None
    prefix_mask: torch.Tensor | None = None
    sliding_in_blocks: bool = False
    attention_weights: dict[int, torch.Tensor] | None = None
    attention_kwargs: dict = field(default_factory=dict)
    forget_lower_bounds: nn.Module | None = None

    def as_one_sequence(self, batch: int) -> MixerInputs:
        """The inputs of ``batch`` packed rows read as one row ``[1, B * T]``: rotary embeddings and the prefix
        mask follow the tokens (the documents stay apart through ``cu_seqlens``)."""
        position_embeddings = None if self.position_embeddings is None else tuple(
            t.expand(batch, -1, -1).reshape(1, -1, t.shape[-1]) for t in self.position_embeddings
        )
        prefix_mask = None if self.prefix_mask is None else self.prefix_mask.reshape(1, -1)
        return dataclasses.replace(self, position_embeddings=position_embeddings, prefix_mask=prefix_mask)
