"""Mamba-2 hybrids as memlm models: IBM Granite-4.0-H (transformers ``granitemoehybrid``, dense: no experts) and
Bamba (transformers ``bamba``, ibm-ai-platform/Bamba-9B).

Both are pre-norm stacks of Mamba-2 layers (``"linear_attention"`` layers, memlm mixer ``"mamba2"``) and attention
layers (``"full_attention"``), each followed by a SwiGLU MLP; their Mamba-2 layer is transformers' ``Mamba2Mixer``
(``in_proj`` -> gate | x|B|C | dt, depthwise conv with bias over x|B|C, the SSD scan, gated RMSNorm over groups of
channels with ``rms_norm_eps``, ``out_proj``), read by memlm's :class:`~memlm.layers.mamba2.Mamba2` with the
``mamba_*`` fields of the same names (``mamba_n_heads`` -> ``mamba_num_heads``, ``mamba_d_head`` ->
``mamba_head_dim``, ``mamba_d_conv`` -> ``mamba_conv_kernel``, ``time_step_limit`` -> ``mamba_time_step_limit``,
(0, inf) read as None: no clamp). ``mamba_chunk_size`` is the chunk of their kernels: the result does not depend
on it, and memlm keeps its own (64, faster for its torch path than their 256).

Granite-4.0-H (``models/granitemoehybrid``):
    layer types from ``layer_types`` / ``layers_block_type`` (``"mamba"`` / ``"linear_attention"``, ``"attention"`` /
    ``"full_attention"``); attention without positional embedding unless ``position_embedding_type="rope"``
    (memlm ``"nope"``); ``embedding_multiplier``, ``residual_multiplier``, ``attention_multiplier`` (the attention
    scale, replacing ``head_dim ** -0.5``) and ``logits_scaling`` (logits divided by it) map onto memlm's fields of
    the same names. The dense MLP is ``shared_mlp``: ``input_linear [2 S, hidden]`` holds the gate (first S rows)
    and the up projection (last S rows), ``output_linear`` the down projection, ``S = shared_intermediate_size``.
    ``num_local_experts > 0`` (a MoE block) is refused.
Bamba (``models/bamba``):
    attention at ``attn_layer_indices``, RoPE on the first half of each head (transformers fixes
    ``partial_rotary_factor=0.5``), MLP ``feed_forward.{gate,up,down}_proj`` without bias (``mlp_bias`` refused),
    norms ``input_layernorm`` / ``pre_ff_layernorm`` / ``model.final_layernorm``; ``z_loss_coefficient`` (a training
    loss term memlm does not have) must be 0.

Tensor names: ``model.layers.{i}.mamba.*`` -> ``model.layers.{i}.mixer.*`` (``conv1d.*`` -> ``conv.conv1d.*``),
``self_attn.{q,k,v,o}_proj`` -> ``mixer.*``. transformers 5.16 normalizes the gated output over all channels at
once instead of per group; with ``mamba_n_groups=1`` (the released checkpoints) every version agrees, with more
groups memlm follows mamba_ssm and newer transformers.
"""

from __future__ import annotations

import math

import torch

from memlm.convert.checkpoint import Checkpoint
from memlm.convert.common import build_config, check_keys, embeddings_and_head, refuse, rope_parameters, take
from memlm.convert.registry import ConversionError, Importer, register_importer
from memlm.models.configuration_memlm import MemLMConfig

MAMBA_KEYS = frozenset({
    "mamba_n_heads", "mamba_d_head", "mamba_n_groups", "mamba_d_state", "mamba_d_conv", "mamba_expand",
    "mamba_chunk_size", "mamba_conv_bias", "mamba_proj_bias", "time_step_limit",
})
# the fields both families share with Llama (their defaults are each family's own, below)
COMMON_KEYS = frozenset({
    "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
    "num_key_value_heads", "head_dim", "hidden_act", "max_position_embeddings", "initializer_range", "rms_norm_eps",
    "use_cache", "pad_token_id", "bos_token_id", "eos_token_id", "tie_word_embeddings", "rope_parameters",
    "rope_theta", "rope_scaling", "partial_rotary_factor", "attention_bias", "attention_dropout",
}) | MAMBA_KEYS
LAYER_NAMES = {"mamba": "mamba2", "linear_attention": "mamba2", "attention": "full_attention",
               "full_attention": "full_attention"}


def mamba_fields(source: dict, defaults: dict, where: str) -> dict:
    """memlm's ``mamba_*`` fields from the source's (``defaults``: the family's config defaults)."""
    get = {key: source.get(key, defaults[key]) for key in MAMBA_KEYS}
    hidden, expand = source.get("hidden_size", defaults["hidden_size"]), get["mamba_expand"]
    heads = get["mamba_n_heads"]
    if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in (hidden, expand, heads)):
        raise refuse(where, "mamba_n_heads", heads, "positive integers mamba_n_heads, mamba_expand, hidden_size")
    head_dim = get["mamba_d_head"]
    if head_dim == "auto":
        head_dim = expand * hidden // heads
    limit = get["time_step_limit"]
    if isinstance(limit, list | tuple):  # transformers writes inf as {"__float__": "Infinity"}
        limit = [float(v["__float__"]) if isinstance(v, dict) and set(v) == {"__float__"} else v for v in limit]
    if limit is not None and (not isinstance(limit, list | tuple) or len(limit) != 2
                              or not all(isinstance(v, int | float) for v in limit)):
        raise refuse(where, "time_step_limit", limit, "null or [min, max]")
    if limit is not None and limit[0] == 0 and math.isinf(limit[1]):
        limit = None  # softplus is already > 0: no clamp at all
    return dict(
        mamba_num_heads=heads, mamba_head_dim=head_dim, mamba_expand=expand, mamba_d_state=get["mamba_d_state"],
        mamba_n_groups=get["mamba_n_groups"], mamba_conv_kernel=get["mamba_d_conv"],
        mamba_conv_bias=get["mamba_conv_bias"],
        mamba_proj_bias=get["mamba_proj_bias"], mamba_time_step_limit=None if limit is None else list(limit),
    )


def check_silu(source: dict, where: str) -> None:
    """``hidden_act`` is also the Mamba-2 conv's activation, which memlm fixes to SiLU."""
    act = source.get("hidden_act", "silu")
    if act != "silu":
        raise refuse(where, "hidden_act", act, "'silu'")


def mamba_weights(tensors: dict, config: MemLMConfig, src: str, dst: str) -> dict[str, torch.Tensor]:
    """transformers' Mamba-2 tensors under ``src`` as memlm's under ``dst`` (same names; the conv under ``conv.``)."""
    names = ["in_proj.weight", "dt_bias", "A_log", "D", "norm.weight", "out_proj.weight"]
    names += ["in_proj.bias", "out_proj.bias"] if config.mamba_proj_bias else []
    state = {dst + name: take(tensors, src + name) for name in names}
    for name in ["weight", "bias"] if config.mamba_conv_bias else ["weight"]:
        state[f"{dst}conv.conv1d.{name}"] = take(tensors, f"{src}conv1d.{name}")
    return state


def attention_weights(tensors: dict, config: MemLMConfig, src: str, dst: str) -> dict[str, torch.Tensor]:
    """Llama's ``{q,k,v,o}_proj`` (with ``attention_bias``, four biases)."""
    kinds = ["weight", "bias"] if config.attention_bias else ["weight"]
    return {f"{dst}{p}_proj.{kind}": take(tensors, f"{src}{p}_proj.{kind}") for p in "qkvo" for kind in kinds}


def hybrid_weights(tensors: dict, config: MemLMConfig, mlp, norms: tuple[str, str]) -> dict[str, torch.Tensor]:
    """Every decoder layer: the mixer (``mamba.`` or ``self_attn.``), the two norms ``norms`` (memlm's
    ``input_layernorm``, ``post_attention_layernorm``) and ``mlp(tensors, prefix) -> {gate,up,down}_proj``."""
    state = {}
    for i, mixer in enumerate(config.mixer_types):
        prefix = f"model.layers.{i}."
        if mixer == "mamba2":
            state.update(mamba_weights(tensors, config, prefix + "mamba.", prefix + "mixer."))
        else:
            state.update(attention_weights(tensors, config, prefix + "self_attn.", prefix + "mixer."))
        for source, target in zip(norms, ("input_layernorm", "post_attention_layernorm"), strict=True):
            state[f"{prefix}{target}.weight"] = take(tensors, f"{prefix}{source}.weight")
        gate, up, down = mlp(tensors, prefix)
        state.update({f"{prefix}mlp.gate_proj.weight": gate, f"{prefix}mlp.up_proj.weight": up,
                      f"{prefix}mlp.down_proj.weight": down})
    return state


def llama_fields(source: dict, defaults: dict) -> dict:
    """The Llama fields of the source, its family's ``defaults`` where it leaves one out."""
    names = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "max_position_embeddings",
             "rms_norm_eps", "tie_word_embeddings", "attention_bias", "attention_dropout", "pad_token_id",
             "bos_token_id", "eos_token_id")
    fields = {name: source.get(name, defaults[name]) for name in names}
    heads = fields["num_attention_heads"]
    fields["num_key_value_heads"] = source.get("num_key_value_heads") or heads
    fields["head_dim"] = source.get("head_dim") or fields["hidden_size"] // heads
    return fields


# GraniteMoeHybridConfig's defaults
GRANITE_DEFAULTS = {
    "vocab_size": 32000, "hidden_size": 4096, "num_hidden_layers": 32, "num_attention_heads": 32,
    "max_position_embeddings": 2048, "rms_norm_eps": 1e-6, "tie_word_embeddings": False, "attention_bias": False,
    "attention_dropout": 0.0, "pad_token_id": None, "bos_token_id": 1, "eos_token_id": 2,
    "embedding_multiplier": 1.0, "logits_scaling": 1.0, "residual_multiplier": 1.0, "attention_multiplier": 1.0,
    "num_local_experts": 8, "shared_intermediate_size": 1024, "position_embedding_type": None,
    "mamba_n_heads": 128, "mamba_d_head": "auto", "mamba_n_groups": 1, "mamba_d_state": 256, "mamba_d_conv": 4,
    "mamba_expand": 2, "mamba_chunk_size": 256, "mamba_conv_bias": True, "mamba_proj_bias": False,
    "time_step_limit": (0.0, float("inf")),
}
GRANITE_KEYS = COMMON_KEYS | {
    "embedding_multiplier", "logits_scaling", "residual_multiplier", "attention_multiplier", "num_local_experts",
    "num_experts_per_tok", "output_router_logits", "router_aux_loss_coef", "shared_intermediate_size",
    "position_embedding_type", "layer_types", "layers_block_type",
}


@register_importer("granitemoehybrid")
class GraniteMoeHybridImporter(Importer):
    """Dense Granite-4.0-H (``GraniteMoeHybridForCausalLM`` with ``num_local_experts=0``); see the module docstring.
    ``intermediate_size`` (the experts' width) and the router fields are read only as "no experts"."""

    def config(self, checkpoint: Checkpoint, drop: frozenset[str]) -> MemLMConfig:
        source, where = checkpoint.config, str(checkpoint.directory / "config.json")
        check_keys(source, GRANITE_KEYS, where)
        check_silu(source, where)
        experts = source.get("num_local_experts", GRANITE_DEFAULTS["num_local_experts"])
        if experts not in (0, None):
            raise refuse(where, "num_local_experts", experts, "0 (a dense MLP; memlm has no mixture-of-experts MLP)")
        fields = llama_fields(source, GRANITE_DEFAULTS)
        layers = source.get("layer_types") or source.get("layers_block_type") or (
            ["mamba"] * fields["num_hidden_layers"])
        if not isinstance(layers, list) or not set(layers) <= set(LAYER_NAMES):
            raise refuse(where, "layer_types", layers, f"a list of {sorted(LAYER_NAMES)}")
        position = source.get("position_embedding_type", GRANITE_DEFAULTS["position_embedding_type"])
        if position not in (None, "nope", "rope"):
            raise refuse(where, "position_embedding_type", position, "null or 'nope' (no positional embedding), "
                         "'rope'")
        rope = rope_parameters(source, where) if position == "rope" else None
        multipliers = {name: source.get(name, GRANITE_DEFAULTS[name]) for name in (
            "embedding_multiplier", "residual_multiplier", "attention_multiplier", "logits_scaling")}
        return build_config(
            where, **fields, **multipliers, **mamba_fields(source, GRANITE_DEFAULTS, where), hidden_act="silu",
            intermediate_size=source.get("shared_intermediate_size", GRANITE_DEFAULTS["shared_intermediate_size"]),
            mixer_types=[LAYER_NAMES[t] for t in layers], position_embedding_type="nope" if rope is None else "rope",
            rope_parameters=rope,
        )

    def weights(self, checkpoint: Checkpoint, config: MemLMConfig, tensors: dict) -> dict[str, torch.Tensor]:
        size = config.intermediate_size

        def shared_mlp(tensors, prefix):
            fused = take(tensors, prefix + "shared_mlp.input_linear.weight")
            if fused.shape[0] != 2 * size:
                raise ConversionError(f"{prefix}shared_mlp.input_linear.weight has shape {tuple(fused.shape)}; "
                                      f"shared_intermediate_size={size} needs {2 * size} rows (gate, then up)")
            return (*fused.split(size), take(tensors, prefix + "shared_mlp.output_linear.weight"))

        state = embeddings_and_head(tensors, config, "model.embed_tokens.weight")
        return state | hybrid_weights(tensors, config, shared_mlp, ("input_layernorm", "post_attention_layernorm"))


# BambaConfig's defaults
BAMBA_DEFAULTS = {
    "vocab_size": 128000, "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
    "num_attention_heads": 32, "max_position_embeddings": 262144, "rms_norm_eps": 1e-5, "tie_word_embeddings": False,
    "attention_bias": False, "attention_dropout": 0.0, "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2,
    "mamba_n_heads": 128, "mamba_d_head": "auto", "mamba_n_groups": 1, "mamba_d_state": 256, "mamba_d_conv": 4,
    "mamba_expand": 2, "mamba_chunk_size": 256, "mamba_conv_bias": True, "mamba_proj_bias": False,
    "time_step_limit": (0.0, float("inf")),
}
BAMBA_KEYS = COMMON_KEYS | {"attn_layer_indices", "num_logits_to_keep", "z_loss_coefficient", "mlp_bias"}
BAMBA_ROTARY_FACTOR = 0.5  # BambaConfig sets it whatever the config says


@register_importer("bamba")
class BambaImporter(Importer):
    """``BambaForCausalLM``; see the module docstring. ``num_logits_to_keep`` is a generation default only."""

    def config(self, checkpoint: Checkpoint, drop: frozenset[str]) -> MemLMConfig:
        source, where = checkpoint.config, str(checkpoint.directory / "config.json")
        check_keys(source, BAMBA_KEYS, where)
        check_silu(source, where)
        for name, allowed in (("mlp_bias", False), ("z_loss_coefficient", 0.0)):
            if source.get(name) not in (None, allowed):
                raise refuse(where, name, source[name], repr(allowed))
        fields = llama_fields(source, BAMBA_DEFAULTS)
        attention = source.get("attn_layer_indices") or []
        if not isinstance(attention, list) or not set(attention) <= set(range(fields["num_hidden_layers"])):
            raise refuse(where, "attn_layer_indices", attention, "a list of layer indices")
        rope = {**rope_parameters(source, where), "partial_rotary_factor": BAMBA_ROTARY_FACTOR}
        return build_config(
            where, **fields, **mamba_fields(source, BAMBA_DEFAULTS, where), hidden_act="silu",
            intermediate_size=source.get("intermediate_size", BAMBA_DEFAULTS["intermediate_size"]),
            mixer_types=["full_attention" if i in attention else "mamba2" for i in range(fields["num_hidden_layers"])],
            rope_parameters=rope,
        )

    def weights(self, checkpoint: Checkpoint, config: MemLMConfig, tensors: dict) -> dict[str, torch.Tensor]:
        def feed_forward(tensors, prefix):
            return [take(tensors, f"{prefix}feed_forward.{p}_proj.weight") for p in ("gate", "up", "down")]

        if "model.final_layernorm.weight" in tensors:
            tensors["model.norm.weight"] = tensors.pop("model.final_layernorm.weight")
        state = embeddings_and_head(tensors, config, "model.embed_tokens.weight")
        return state | hybrid_weights(tensors, config, feed_forward, ("input_layernorm", "pre_ff_layernorm"))
