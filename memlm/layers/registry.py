"""Token mixers register under a name; the model builds each layer's mixer from ``config.layer_types``.

A layer of type ``"linear_attention"`` uses the mixer named by ``config.linear_attn_type``; any other
layer type (``"full_attention"``, ``"sliding_attention"``, the Titans types ``"memory"``,
``"memory_as_gate"``, ``"memory_as_context"``, JRT-RNN's ``"prefix_linear_attention"`` and the short gated
convolution ``"conv"``) is itself a mixer name. A new mixer is one
op plus one layer file that calls :func:`register_mixer`.

Every mixer is an ``nn.Module`` built as ``Mixer(config, layer_idx)`` with
``forward(hidden_states [B, T, hidden], attention_mask=None, position_embeddings=None, cache=None,
**kwargs) -> [B, T, hidden]``.
"""

from __future__ import annotations

from torch import nn

ATTENTION_LAYER_TYPES = ("full_attention", "sliding_attention")
LINEAR_LAYER_TYPE = "linear_attention"
MEMORY_LAYER_TYPES = ("memory", "memory_as_gate", "memory_as_context")  # Titans: LMM, MAG, MAC
PREFIX_LAYER_TYPE = "prefix_linear_attention"  # JRT-RNN: reads the prompt non-causally
CONV_LAYER_TYPE = "conv"  # short gated convolution (transformers' name for such a cache layer)
LAYER_TYPES = (*ATTENTION_LAYER_TYPES, LINEAR_LAYER_TYPE, *MEMORY_LAYER_TYPES, PREFIX_LAYER_TYPE, CONV_LAYER_TYPE)
# layers that keep a state instead of per-token keys: they build their own masks from the [B, T] padding mask
# and read packed documents as one sequence cut by offsets
RECURRENT_LAYER_TYPES = (LINEAR_LAYER_TYPE, *MEMORY_LAYER_TYPES, PREFIX_LAYER_TYPE, CONV_LAYER_TYPE)

MIXERS: dict[str, type[nn.Module]] = {}
LINEAR_MIXERS: list[str] = []


def register_mixer(name: str, linear: bool = False):
    """Class decorator: make a mixer available as a layer type (``linear=False``) or a linear type."""

    def decorate(cls: type[nn.Module]) -> type[nn.Module]:
        MIXERS[name] = cls
        if linear:
            LINEAR_MIXERS.append(name)
        return cls

    return decorate


def mixer_name(layer_type: str, linear_attn_type: str) -> str:
    """The registered mixer that implements a layer of ``layer_type``."""
    return linear_attn_type if layer_type == LINEAR_LAYER_TYPE else layer_type


def build_mixer(config, layer_idx: int) -> nn.Module:
    """Instantiate the mixer of layer ``layer_idx``."""
    return MIXERS[mixer_name(config.layer_types[layer_idx], config.linear_attn_type)](config, layer_idx)
