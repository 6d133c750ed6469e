"""Tensor and config helpers the importers and exporters share."""

from __future__ import annotations

import dataclasses
import functools

import torch
from transformers import PreTrainedConfig
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

from memlm.convert.registry import ConversionError
from memlm.models.configuration_memlm import MemLMConfig, config_keys


@functools.cache
def transformers_keys() -> frozenset[str]:
    """The keys any transformers ``config.json`` may hold (``PreTrainedConfig``'s fields, generation parameters,
    ``architectures``, ``dtype``, ...): an importer takes them without reading them."""
    return config_keys()[1] | {field.name for field in dataclasses.fields(PreTrainedConfig)}


def take(tensors: dict[str, torch.Tensor], name: str) -> torch.Tensor:
    """Pop source tensor ``name`` (the framework refuses a conversion that leaves one unread); a missing tensor
    raises ConversionError naming it."""
    if name not in tensors:
        raise ConversionError(f"source tensor {name!r} is missing (a checkpoint of this model type has it)")
    return tensors.pop(name)


def add_norm_offset(weight: torch.Tensor) -> torch.Tensor:
    """A zero-centred RMSNorm weight ``w`` (``y = x_hat * (1 + w)``: Qwen3.5, Qwen3-Next, Gemma) as memlm's
    ``y = x_hat * w'``: ``w' = 1 + w``, computed in fp32."""
    return 1.0 + weight.float()


def remove_norm_offset(weight: torch.Tensor) -> torch.Tensor:
    """The inverse of :func:`add_norm_offset`: ``w = w' - 1``, in fp32."""
    return weight.float() - 1.0


def split_groups(weight: torch.Tensor, groups: int, sizes: list[int]) -> list[torch.Tensor]:
    """Split a fused projection whose output rows are ``groups`` consecutive blocks, each the concatenation of
    parts of ``sizes`` rows (``[groups * sum(sizes), in]``), into one tensor per part holding that part of every
    group in order (``[groups * sizes[i], in]``)."""
    if weight.shape[0] != groups * sum(sizes):
        raise ConversionError(f"a fused projection of shape {tuple(weight.shape)} does not hold {groups} groups of "
                              f"{sizes} rows")
    parts = weight.reshape(groups, sum(sizes), *weight.shape[1:]).split(sizes, dim=1)
    return [part.reshape(groups * size, *weight.shape[1:]) for part, size in zip(parts, sizes, strict=True)]


def rope_parameters(source: dict, where: str) -> dict:
    """The source's RoPE parameters (``rope_parameters``, or the older ``rope_theta`` / ``rope_scaling``), checked
    with :func:`check_rope_type`; ConversionError when there is no ``rope_theta``."""
    parameters = dict(source.get("rope_parameters") or source.get("rope_scaling") or {})
    if "rope_theta" not in parameters and "rope_theta" in source:
        parameters["rope_theta"] = source["rope_theta"]
    parameters.setdefault("rope_type", parameters.pop("type", "default"))
    check_rope_type(parameters, where)
    if "rope_theta" not in parameters:
        raise ConversionError(f"{where}: no rope_theta (in rope_parameters or at the top level)")
    return parameters


def check_rope_type(parameters: dict, where: str) -> None:
    """A rope type memlm's :class:`~memlm.layers.rotary.RotaryEmbedding` knows (``"default"`` or one of
    transformers' ``ROPE_INIT_FUNCTIONS``); else ConversionError naming the field."""
    rope_type = parameters.get("rope_type", "default")
    allowed = ["default", *sorted(ROPE_INIT_FUNCTIONS)]
    if rope_type not in allowed:
        raise ConversionError(f"{where}: rope_parameters.rope_type={rope_type!r} is unknown to memlm; allowed: "
                              f"{allowed}")


def check_keys(source: dict, known: frozenset[str], where: str) -> None:
    """Refuse a source config key that is neither ``known`` to the importer nor one transformers writes into every
    config (``architectures``, ``torch_dtype``, ...): it may change the model in a way the importer would miss."""
    unknown = sorted(key for key in set(source) - known if key not in transformers_keys())
    if unknown:
        raise ConversionError(f"{where}: config keys {unknown} are unknown to memlm's {source.get('model_type')} "
                              f"importer; it reads {sorted(known)}")


def refuse(where: str, field: str, value, allowed: str) -> ConversionError:
    """The error for a source field memlm cannot represent."""
    return ConversionError(f"{where}: {field}={value!r} cannot be represented in memlm; allowed: {allowed}")


def build_config(where: str, **fields) -> MemLMConfig:
    """``MemLMConfig(**fields)``, its ValueError (a value memlm refuses) as ConversionError."""
    try:
        return MemLMConfig(**fields)
    except ValueError as error:
        raise ConversionError(f"{where}: {error}") from error


def embeddings_and_head(tensors: dict[str, torch.Tensor], config: MemLMConfig, embeddings: str) -> dict:
    """The embeddings (source name ``embeddings``), ``model.norm`` and ``lm_head``. With tied embeddings a stored
    ``lm_head.weight`` must equal the embeddings (memlm ties them)."""
    state = {"model.embed_tokens.weight": take(tensors, embeddings), "model.norm.weight": take(tensors,
                                                                                               "model.norm.weight")}
    if not config.tie_word_embeddings:
        state["lm_head.weight"] = take(tensors, "lm_head.weight")
    elif "lm_head.weight" in tensors and not torch.equal(take(tensors, "lm_head.weight"),
                                                          state["model.embed_tokens.weight"]):
        raise ConversionError("tie_word_embeddings is true but the stored lm_head.weight differs from the embeddings")
    return state
