"""Kimi Linear checkpoints (transformers ``kimi_linear``, moonshotai/Kimi-Linear-*) with dense MLPs as memlm models.

transformers' ``KimiLinearModel`` is a pre-norm stack (``x + mixer(input_layernorm(x))``, then the MLP the same
way) of two kinds of layer (``models/kimi_linear/modeling_kimi_linear.py``):

* ``"linear_attention"`` layers: Kimi Delta Attention, memlm's ``"kda"`` mixer (:mod:`memlm.layers.kda`), with
  ``linear_num_heads`` heads of ``linear_head_dim`` (keys and values alike), a ``linear_conv_kernel_dim`` short
  convolution with ``hidden_act`` (memlm: SiLU), and a sigmoid-gated output norm of eps ``rms_norm_eps``;
* ``"full_attention"`` layers: Multi-head Latent Attention without RoPE (memlm's ``"mla"`` mixer with
  ``position_embedding_type="nope"``: the shared ``qk_rope_head_dim`` key part is used as it is), scaled by
  ``(qk_nope_head_dim + qk_rope_head_dim) ** -0.5``; transformers reads no RoPE field, so none is read here.

A layer's MLP is dense or a mixture of experts (``mlp_layer_types``: ``"dense"`` / ``"sparse"``; when absent,
transformers derives it from ``first_k_dense_replace``, default 1: every layer after the first is sparse). memlm
has no MoE MLP: a source with any sparse layer is refused, naming the field. The other MoE fields (expert counts,
router settings) are then unused and taken without being read.

Weight names: the hub's checkpoints (and transformers' ``save_pretrained``, which writes them back) keep Moonshot's
names: ``self_attn.{q,k,v}_conv1d`` (concatenated in q|k|v order: memlm's ``mixer.conv.conv1d``),
``self_attn.{f_a_proj, f_b_proj, dt_bias, A_log}`` (transformers moves them under ``self_attn.forget_gate.``) and
dense MLPs under ``block_sparse_moe.`` (transformers: ``mlp.``); both spellings are read. ``A_log`` ``[1, 1, H, 1]``
becomes memlm's ``[H]``; the other KDA and MLA tensors (``q_proj``, ``k_proj``, ``v_proj``, ``b_proj``, ``g_a_proj``,
``g_b_proj``, ``o_norm``, ``o_proj``; ``q_proj`` or ``q_a_proj``/``q_a_layernorm``/``q_b_proj``,
``kv_a_proj_with_mqa``, ``kv_a_layernorm``, ``kv_b_proj``, ``o_proj``) keep their names under ``mixer.``; the norms
(plain RMSNorms: ``x_hat * w``), ``model.embed_tokens``, ``model.norm`` and ``lm_head`` too.
"""

from __future__ import annotations

import dataclasses

import torch
import transformers

from memlm.convert.common import build_config, check_keys, embeddings_and_head, refuse, take
from memlm.convert.registry import ConversionError, Importer, register_importer

MIXERS = {"linear_attention": "kda", "full_attention": "mla"}
# Source fields memlm takes as they are (same name, same meaning).
SAME_FIELDS = (
    "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "hidden_act",
    "max_position_embeddings", "initializer_range", "rms_norm_eps", "use_cache", "attention_bias",
    "attention_dropout", "linear_conv_kernel_dim", "pad_token_id", "bos_token_id", "eos_token_id",
    "tie_word_embeddings",
)
MLA_FIELDS = ("q_lora_rank", "kv_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim")
# Fields of the mixture-of-experts MLPs (unused once every layer is dense), the checkpoint's own spellings of the
# layer pattern, and the fields transformers derives or never reads (Kimi's MLA has no RoPE).
MOE_FIELDS = (
    "moe_intermediate_size", "n_shared_experts", "num_shared_experts", "output_router_logits",
    "routed_scaling_factor", "n_group", "num_expert_group", "topk_group", "num_experts_per_tok",
    "num_experts_per_token", "norm_topk_prob", "moe_renormalize", "num_local_experts", "num_experts",
    "moe_layer_freq", "moe_router_activation_func", "use_grouped_topk", "router_aux_loss_coef",
)
READ_FIELDS = (
    "layer_types", "mlp_layer_types", "first_k_dense_replace", "linear_attn_config", "linear_head_dim",
    "linear_num_heads", "num_key_value_heads", "head_dim", "qk_head_dim", "model_max_length", "pretraining_tp",
    "rope_theta", "rope_scaling", "rope_parameters",
)


@register_importer("kimi_linear")
class KimiLinearImporter(Importer):
    """``KimiLinearForCausalLM`` whose every MLP is dense (see the module docstring)."""

    def config(self, checkpoint, drop):
        text, where = checkpoint.config, str(checkpoint.directory / "config.json")
        KimiLinearConfig = getattr(transformers, "KimiLinearConfig", None)  # noqa: N806  (transformers >= 5.17)
        if KimiLinearConfig is None:
            raise ConversionError(f"{where}: model_type='kimi_linear' needs transformers' KimiLinearConfig, which "
                                  f"transformers {transformers.__version__} does not have; install a newer one")
        known = frozenset(SAME_FIELDS + MLA_FIELDS + MOE_FIELDS + READ_FIELDS) | {
            f.name for f in dataclasses.fields(KimiLinearConfig)
        }
        check_keys(text, known, where)
        try:  # transformers' config class: its defaults, and its reading of linear_attn_config / first_k_dense_replace
            source = KimiLinearConfig(**{k: v for k, v in text.items() if k not in ("model_type", "architectures")})
        except (ValueError, TypeError) as error:
            raise ConversionError(f"{where}: {error}") from error
        sparse = [i for i, kind in enumerate(source.mlp_layer_types) if kind != "dense"]
        if sparse:
            given = {k: text[k] for k in ("mlp_layer_types", "first_k_dense_replace") if k in text}
            raise ConversionError(f"{where}: mlp_layer_types={source.mlp_layer_types!r} (from {given or 'defaults'}): "
                                  f"layers {sparse} have a mixture-of-experts MLP, which memlm has no module for; "
                                  "memlm converts Kimi Linear models whose every layer is dense (mlp_layer_types "
                                  "all 'dense', or first_k_dense_replace >= num_hidden_layers)")
        for i, layer_type in enumerate(source.layer_types):
            if layer_type not in MIXERS:
                raise refuse(where, f"layer_types[{i}]", layer_type, str(sorted(MIXERS)))
        if source.hidden_act != "silu":
            raise refuse(where, "hidden_act", source.hidden_act, "'silu' (the KDA convolution's activation is "
                         "hidden_act, memlm's is SiLU)")
        if source.num_key_value_heads != source.num_attention_heads:
            raise refuse(where, "num_key_value_heads", source.num_key_value_heads,
                         f"num_attention_heads={source.num_attention_heads} (MLA decompresses a key and a value per "
                         "head; transformers' class fails otherwise)")
        return build_config(
            where,
            **{name: getattr(source, name) for name in SAME_FIELDS},
            mixer_types=[MIXERS[t] for t in source.layer_types],
            num_key_value_heads=source.num_attention_heads,
            head_dim=source.qk_rope_head_dim,
            position_embedding_type="nope",
            linear_num_key_heads=source.linear_num_heads, linear_num_value_heads=source.linear_num_heads,
            linear_key_head_dim=source.linear_head_dim, linear_value_head_dim=source.linear_head_dim,
            **{f"mla_{name}": getattr(source, name) for name in MLA_FIELDS},
        )

    def weights(self, checkpoint, config, tensors):
        state = embeddings_and_head(tensors, config, "model.embed_tokens.weight")
        for i, mixer in enumerate(config.mixer_types):
            src, dst = f"model.layers.{i}.", f"model.layers.{i}."
            for norm in ("input_layernorm", "post_attention_layernorm"):
                state[f"{dst}{norm}.weight"] = take(tensors, f"{src}{norm}.weight")
            mlp = f"{src}mlp." if f"{src}mlp.gate_proj.weight" in tensors else f"{src}block_sparse_moe."
            for name in ("gate_proj", "up_proj", "down_proj"):
                state[f"{dst}mlp.{name}.weight"] = take(tensors, f"{mlp}{name}.weight")
            attention, out = f"{src}self_attn.", f"{dst}mixer."
            names = mla_names(config) if mixer == "mla" else kda_names(tensors, attention, out, state, config)
            for name in names:
                state[out + name] = take(tensors, attention + name)
        return state


def kda_names(tensors: dict, attention: str, out: str, state: dict, config) -> list[str]:
    """Put a KDA layer's renamed tensors (convolution, forget gate) into ``state``; return the names kept as they
    are."""
    if attention + "conv1d.weight" in tensors:
        state[out + "conv.conv1d.weight"] = take(tensors, attention + "conv1d.weight")
    else:
        state[out + "conv.conv1d.weight"] = torch.cat([take(tensors, f"{attention}{p}_conv1d.weight") for p in "qkv"])
    gate = attention + "forget_gate." if attention + "forget_gate.A_log" in tensors else attention
    for name in ("f_a_proj.weight", "f_b_proj.weight", "dt_bias"):
        state[out + name] = take(tensors, gate + name)
    a_log = take(tensors, gate + "A_log")
    if a_log.numel() != config.linear_num_value_heads:
        raise ConversionError(f"source tensor {gate}A_log has shape {tuple(a_log.shape)}: one value per head "
                              f"({config.linear_num_value_heads}) expected")
    state[out + "A_log"] = a_log.reshape(-1)
    return [f"{p}.weight" for p in ("q_proj", "k_proj", "v_proj", "b_proj", "g_a_proj", "g_b_proj", "o_norm",
                                    "o_proj")]


def mla_names(config) -> list[str]:
    """The source names of an MLA layer's tensors (the same under ``mixer.``)."""
    query = ["q_proj.weight"] if config.mla_q_lora_rank is None else [
        "q_a_proj.weight", "q_a_layernorm.weight", "q_b_proj.weight"]
    names = [*query, "kv_a_proj_with_mqa.weight", "kv_a_layernorm.weight", "kv_b_proj.weight", "o_proj.weight"]
    if config.attention_bias:
        names += [f"{p}.bias" for p in ("kv_a_proj_with_mqa", "o_proj")]
        names += [] if config.mla_q_lora_rank is None else ["q_a_proj.bias"]
    return names
