"""The mixer registry: one table from a mixer's name to its class, its layer type and what it caches.

Every layer of a model has a **layer type** in transformers' vocabulary (``config.layer_types``:
``"full_attention"``, ``"sliding_attention"``, ``"linear_attention"``, ``"conv"``), which is what
transformers' ``DynamicCache(config=...)``, its mask builders and vLLM read, and a **mixer**
(``config.mixer_types``): the registered module that mixes its tokens. The layer type of a mixer is fixed by
its registry entry, so the two lists always agree.

Every mixer is an ``nn.Module`` built as ``Mixer(config, layer_idx)`` with one forward signature,
``forward(hidden_states [B, T, hidden], inputs: MixerInputs) -> [B, T, hidden]``
(:class:`~memlm.layers.inputs.MixerInputs` holds what the model computes once per forward: masks,
positions, cache, packed-document offsets, prefix). Recurrent mixers follow the padding rule of
:mod:`memlm.layers.padding`.

Adding a mixer: an op in ``memlm/ops/``, a layer file in ``memlm/layers/`` whose class is decorated with
:func:`register_mixer`, and its tests.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

ATTENTION_LAYER_TYPES = ("full_attention", "sliding_attention")
LINEAR_LAYER_TYPE = "linear_attention"
CONV_LAYER_TYPE = "conv"
LAYER_TYPES = (*ATTENTION_LAYER_TYPES, LINEAR_LAYER_TYPE, CONV_LAYER_TYPE)
# layers that keep a state instead of per-token keys: they read the [B, T] padding mask and packed documents
# as one sequence cut by offsets (memlm.layers.padding)
RECURRENT_LAYER_TYPES = (LINEAR_LAYER_TYPE, CONV_LAYER_TYPE)


@dataclass(frozen=True)
class MixerSpec:
    """A registry entry: ``cls(config, layer_idx)`` builds the mixer of a layer of type ``layer_type``;
    ``cache`` says what the layer keeps in the cache; ``linear``: selectable as ``linear_attn_type``."""

    cls: type[nn.Module]
    layer_type: str
    cache: str
    linear: bool = False


MIXERS: dict[str, MixerSpec] = {}


def register_mixer(name: str, layer_type: str, cache: str, linear: bool = False):
    """Class decorator: register a mixer under ``name`` (see :class:`MixerSpec`)."""
    if layer_type not in LAYER_TYPES:
        raise ValueError(f"mixer {name!r}: layer_type={layer_type!r} is not one of transformers' {list(LAYER_TYPES)}")

    def decorate(cls: type[nn.Module]) -> type[nn.Module]:
        MIXERS[name] = MixerSpec(cls, layer_type, cache, linear)
        return cls

    return decorate


def linear_mixers() -> list[str]:
    """The mixers a ``"linear_attention"`` layer can be given through ``linear_attn_type``."""
    return [name for name, spec in MIXERS.items() if spec.linear]


def build_mixer(config, layer_idx: int) -> nn.Module:
    """Instantiate the mixer of layer ``layer_idx`` (``config.mixer_types[layer_idx]``)."""
    return MIXERS[config.mixer_types[layer_idx]].cls(config, layer_idx)
