"""Run a pretrained decoder's layers as a chain: skipped, repeated or reordered (CoLa, arXiv 2507.07996).

``with chain(model, path):`` makes ``model(...)`` and ``model.generate(...)`` run the decoder layers
``path[0], path[1], ...`` (indices into the model's layers; repeats and omissions allowed). Every
position of the path is its own layer for the cache: the layer is a shallow copy of the original (all
weights shared) whose ``layer_idx`` is the position, and ``config.num_hidden_layers`` / ``config.layer_types``
(memlm: and ``config.mixer_types``) follow the path, so ``DynamicCache(config=...)`` holds one slot per
position. A repeated layer therefore keeps one key/value (or recurrent) state per visit, and cached
generation equals recomputation. Rotary positions are untouched (they depend on the token, not the layer).
On exit (also after an exception) the model's layers, config and every module are exactly as before.

Works with the decoders that keep their layers in ``model.model.layers`` and read ``layer_idx`` from their
modules: transformers' Llama, Qwen2, Qwen3, Mistral (and their relatives) and memlm's ``MemLMForCausalLM``.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from torch import nn

PER_LAYER_FIELDS = ("layer_types", "mixer_types", "norm_placement")


def decoder_of(model: nn.Module) -> nn.Module:
    """The module that holds ``layers`` (``model.model`` for a causal LM, or ``model`` itself)."""
    for candidate in (getattr(model, "model", None), model):
        if candidate is not None and isinstance(getattr(candidate, "layers", None), nn.ModuleList):
            return candidate
    raise ValueError(
        f"{type(model).__name__} keeps no nn.ModuleList of decoder layers at .model.layers or .layers: "
        "chain() supports Llama-style decoders (Llama, Qwen2/3, Mistral, memlm)"
    )


def check_path(path: Sequence[int], num_layers: int, max_length: int | None = None) -> list[int]:
    """``path`` as a list of ints, or a ValueError naming what is wrong (empty, out of range, too long)."""
    if isinstance(path, str | bytes) or not isinstance(path, Sequence):
        raise ValueError(f"path must be a sequence of layer indices, got {path!r}")
    path = list(path)
    if not path:
        raise ValueError("path is empty: give at least one layer index")
    max_length = 4 * num_layers if max_length is None else max_length
    if len(path) > max_length:
        raise ValueError(f"path has {len(path)} layers, more than max_length={max_length}")
    for position, index in enumerate(path):
        if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < num_layers:
            raise ValueError(
                f"path[{position}]={index!r} is not a layer index: the model has layers 0..{num_layers - 1}"
            )
    return path


def _holds_layer_idx(module: nn.Module) -> bool:
    return any(isinstance(getattr(m, "layer_idx", None), int) for m in module.modules())


def relabel(module: nn.Module, position: int) -> nn.Module:
    """A shallow copy of ``module`` whose submodules that carry a ``layer_idx`` say ``position`` instead.

    Parameters, buffers and every submodule without a ``layer_idx`` are shared with the original; the
    original is not modified.
    """
    if not _holds_layer_idx(module):
        return module
    clone = copy.copy(module)
    clone._modules = {
        name: relabel(child, position) if child is not None else None for name, child in module._modules.items()
    }
    if isinstance(getattr(module, "layer_idx", None), int):
        clone.layer_idx = position
    return clone


@contextmanager
def chain(model: nn.Module, path: Sequence[int], max_length: int | None = None) -> Iterator[nn.Module]:
    """Run ``model``'s decoder layers in the order of ``path`` inside the ``with`` block (see the module notes).

    Args:
        model: a causal LM (or its decoder).
        path: layer indices, e.g. ``[0, 1, 1, 3]`` (layer 2 skipped, layer 1 twice).
        max_length: longest path allowed (default 4 x the number of layers).
    """
    decoder = decoder_of(model)
    config = decoder.config
    original_layers = decoder.layers
    path = check_path(path, len(original_layers), max_length)
    saved_num_layers = config.num_hidden_layers
    # the config's per-layer lists (transformers' layer_types; memlm's mixer_types too) follow the path
    saved_lists = {name: vars(config)[name] for name in PER_LAYER_FIELDS
                   if isinstance(vars(config).get(name), list) and len(vars(config)[name]) == saved_num_layers}
    try:
        decoder.layers = nn.ModuleList(relabel(original_layers[index], position) for position, index in enumerate(path))
        config.num_hidden_layers = len(path)
        for name, values in saved_lists.items():
            setattr(config, name, [values[index] for index in path])
        yield model
    finally:
        decoder.layers = original_layers
        config.num_hidden_layers = saved_num_layers
        for name, values in saved_lists.items():
            setattr(config, name, values)
