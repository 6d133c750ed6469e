"""OLMo Hybrid checkpoints (transformers ``olmo_hybrid``, allenai/Olmo-Hybrid-*) as memlm models.

transformers' ``OlmoHybridModel`` has two kinds of decoder layer (``models/olmo_hybrid/modular_olmo_hybrid.py``):

* ``"full_attention"`` layers are OLMo 3 layers, post-norm::

      h = x + post_attention_layernorm(attn(x)),   y = h + post_feedforward_layernorm(mlp(h))

  with q/k RMSNorms over the whole ``q_proj`` / ``k_proj`` output (memlm ``attention_qk_norm="all"``), and RoPE
  only when the config has a ``rope_theta`` (released checkpoints have none: NoPE, memlm
  ``position_embedding_type="nope"``); no sliding window. transformers computes their cos/sin in fp32 (the same
  numbers in an fp32 model).
* ``"linear_attention"`` layers are pre-norm (``x + mixer(input_layernorm(x))``, then the MLP the same way) around
  fla's GatedDeltaNet: separate ``q/k/v/a/b/g`` projections, beta ``2 sigmoid(b)`` with
  ``linear_allow_neg_eigval`` (memlm's option of the same name), and an output norm with eps ``1e-5`` whatever
  ``rms_norm_eps`` is (memlm ``linear_norm_eps=1e-5``).

Weight names: the hub's checkpoints (and transformers' ``save_pretrained``, which writes them back) keep OLMo-core's
``attention_layer_norm`` / ``feedforward_layer_norm`` (transformers renames them to ``input_layernorm`` /
``post_attention_layernorm`` on loading) and fla's three ``{q,k,v}_conv1d`` (concatenated into one ``conv1d`` on
loading; transformers' writer splits the concatenation into three equal parts, not the q/k/v sizes, so only the
concatenation is meaningful); both spellings are read. GatedDeltaNet tensors map as in :mod:`memlm.convert.fla`;
the attention's ``{q,k,v,o}_proj``, ``q_norm``, ``k_norm`` and the MLP keep their names under ``mixer.`` /
``mlp.``; ``model.embed_tokens``, ``model.norm``, ``lm_head`` (absent when tied) too.
"""

from __future__ import annotations

import torch

from memlm.convert.checkpoint import Checkpoint
from memlm.convert.common import build_config, check_keys, embeddings_and_head, refuse, rope_parameters, take
from memlm.convert.fla import gated_deltanet_weights
from memlm.convert.registry import ConversionError, Importer, register_importer
from memlm.models.configuration_memlm import MemLMConfig

# OlmoHybridConfig's fields; the GatedDeltaNet initialization ranges (linear_a_log_*, linear_dt_*) and
# initializer_range change nothing once weights exist.
KNOWN_KEYS = frozenset({
    "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
    "num_key_value_heads", "hidden_act", "max_position_embeddings", "initializer_range", "rms_norm_eps", "use_cache",
    "pad_token_id", "bos_token_id", "eos_token_id", "tie_word_embeddings", "rope_parameters", "rope_theta",
    "rope_scaling", "attention_bias", "attention_dropout", "layer_types", "linear_num_key_heads",
    "linear_num_value_heads", "linear_key_head_dim", "linear_value_head_dim", "linear_a_log_min", "linear_a_log_max",
    "linear_dt_min", "linear_dt_max", "linear_dt_init_floor", "linear_conv_kernel_dim", "linear_allow_neg_eigval",
})
# OlmoHybridConfig's defaults, for a config.json that leaves a field out (transformers writes them all)
DEFAULTS = {
    "vocab_size": 100352, "hidden_size": 3840, "intermediate_size": 11008, "num_hidden_layers": 32,
    "num_attention_heads": 30, "max_position_embeddings": 65536, "rms_norm_eps": 1e-6, "tie_word_embeddings": False,
    "attention_bias": False, "attention_dropout": 0.0, "linear_conv_kernel_dim": 4, "linear_allow_neg_eigval": True,
    "pad_token_id": 100277, "bos_token_id": None, "eos_token_id": 100257,
}
OUTPUT_NORM_EPS = 1e-5  # OlmoHybridGatedDeltaNet's o_norm (fla's FusedRMSNormGated default), whatever rms_norm_eps is
# OLMo-core's names in the hub's checkpoints -> transformers' module names
RENAMED_NORMS = {"attention_layer_norm": "input_layernorm", "feedforward_layer_norm": "post_attention_layernorm"}


def olmo_rope(source: dict, where: str) -> dict | None:
    """The RoPE parameters, or None for NoPE. As ``OlmoHybridModel`` decides: RoPE unless the resolved
    ``rope_theta`` is null (``rope_parameters.rope_theta``, else a top-level ``rope_theta``, else 10000)."""
    parameters = source.get("rope_parameters") or {}
    theta = parameters.get("rope_theta", source.get("rope_theta", 10000.0))
    if theta is None:
        return None
    return rope_parameters({**source, "rope_theta": theta}, where)


@register_importer("olmo_hybrid")
class OlmoHybridImporter(Importer):
    def config(self, checkpoint: Checkpoint, drop: frozenset[str]) -> MemLMConfig:
        source, where = checkpoint.config, str(checkpoint.directory / "config.json")
        check_keys(source, KNOWN_KEYS, where)
        layer_types = source.get("layer_types")
        if not isinstance(layer_types, list) or not set(layer_types) <= {"linear_attention", "full_attention"}:
            raise refuse(where, "layer_types", layer_types, "a list of 'linear_attention' and 'full_attention'")
        act = source.get("hidden_act", "silu")
        if act != "silu":  # it is also the GatedDeltaNet conv's activation, which memlm fixes to SiLU
            raise refuse(where, "hidden_act", act, "'silu'")
        fields = {name: source.get(name, default) for name, default in DEFAULTS.items()}
        hidden, heads = fields["hidden_size"], fields["num_attention_heads"]
        if not (isinstance(hidden, int) and isinstance(heads, int) and heads > 0):
            raise refuse(where, "num_attention_heads", heads, "a positive integer (and hidden_size an integer)")
        # OlmoHybridConfig's derived defaults
        key_heads = source.get("linear_num_key_heads") or heads
        key_dim = source.get("linear_key_head_dim") or int(0.75 * hidden / key_heads)
        fields.update(
            num_key_value_heads=source.get("num_key_value_heads") or heads, linear_num_key_heads=key_heads,
            linear_num_value_heads=source.get("linear_num_value_heads") or heads, linear_key_head_dim=key_dim,
            linear_value_head_dim=source.get("linear_value_head_dim") or 2 * key_dim,
        )
        rope = olmo_rope(source, where)
        return build_config(
            where, **fields, hidden_act="silu", head_dim=hidden // heads,
            mixer_types=["gated_deltanet" if t == "linear_attention" else "full_attention" for t in layer_types],
            norm_placement=["pre" if t == "linear_attention" else "post" for t in layer_types],
            attention_qk_norm="all", linear_norm_eps=OUTPUT_NORM_EPS,
            position_embedding_type="nope" if rope is None else "rope", rope_parameters=rope,
        )

    def weights(self, checkpoint: Checkpoint, config: MemLMConfig, tensors: dict) -> dict[str, torch.Tensor]:
        for name in [n for n in tensors if n.count(".") and n.split(".")[-2] in RENAMED_NORMS]:
            parts = name.split(".")
            renamed = ".".join([*parts[:-2], RENAMED_NORMS[parts[-2]], parts[-1]])
            if renamed in tensors:
                raise ConversionError(f"source tensors {name!r} and {renamed!r} are the same weight under two names")
            tensors[renamed] = tensors.pop(name)
        state = embeddings_and_head(tensors, config, "model.embed_tokens.weight")
        for i, mixer in enumerate(config.mixer_types):
            prefix = f"model.layers.{i}."
            norms = ("post_attention_layernorm", "post_feedforward_layernorm") if mixer == "full_attention" else (
                "input_layernorm", "post_attention_layernorm")
            names = [f"{norm}.weight" for norm in norms] + [f"mlp.{p}_proj.weight" for p in ("gate", "up", "down")]
            if mixer == "full_attention":
                names += [f"self_attn.{p}.weight" for p in ("q_proj", "k_proj", "v_proj", "o_proj", "q_norm", "k_norm")]
                names += [f"self_attn.{p}_proj.bias" for p in "qkvo"] if config.attention_bias else []
            else:
                state.update(gated_deltanet_weights(tensors, prefix + "linear_attn.", prefix + "mixer."))
            for name in names:
                state[prefix + name.replace("self_attn.", "mixer.")] = take(tensors, prefix + name)
        return state
