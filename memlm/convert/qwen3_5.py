"""Qwen3.5 dense text models (transformers ``qwen3_5_text``, and ``qwen3_5`` with its ``text_config``) into memlm,
and memlm GatedDeltaNet/attention hybrids back out as ``Qwen3_5ForCausalLM`` checkpoints.

What maps to what (source -> memlm, per layer ``i``)::

    model.embed_tokens, lm_head                      -> the same (tied when tie_word_embeddings)
    layers.i.input_layernorm / post_attention_layernorm, model.norm:   w -> 1 + w   (Qwen3_5RMSNorm: x_hat (1 + w))
    layers.i.linear_attn.{in_proj_qkv, in_proj_z, in_proj_b, in_proj_a, A_log, dt_bias, norm, out_proj}
                                                     -> layers.i.mixer.<same>   (gated_deltanet; the gated norm
                                                        multiplies by w: no offset; its eps is rms_norm_eps)
    layers.i.linear_attn.conv1d                      -> layers.i.mixer.conv.conv1d   (channels q | k | v)
    layers.i.self_attn.{q_proj, k_proj, v_proj, o_proj}
                                                     -> layers.i.mixer.<same>   (full_attention with
                                                        attention_output_gate: q_proj rows per head [query | gate])
    layers.i.self_attn.{q_norm, k_norm}:  w -> 1 + w    (attention_qk_norm="head")
    layers.i.mlp.{gate_proj, up_proj, down_proj}     -> the same

RoPE: ``rope_parameters`` (``rope_theta``, ``partial_rotary_factor``, default 0.25 as in transformers). Qwen3.5's
multimodal RoPE (``mrope_section``, ``mrope_interleaved``) gives every axis the same position for text, which makes
its recomposed frequencies those of plain RoPE: memlm imports plain RoPE (equal logits are tested).
"""

from __future__ import annotations

import torch
from transformers import Qwen3_5TextConfig

from memlm.convert.common import add_norm_offset, check_keys, check_rope_type, remove_norm_offset, take
from memlm.convert.registry import ConversionError, Exporter, Importer, register_exporter, register_importer
from memlm.models.configuration_memlm import MemLMConfig

MIXERS = {"linear_attention": "gated_deltanet", "full_attention": "full_attention"}
# Source fields memlm takes as they are (same name, same meaning).
SAME_FIELDS = (
    "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
    "num_key_value_heads", "head_dim", "hidden_act", "max_position_embeddings", "initializer_range", "rms_norm_eps",
    "use_cache", "attention_bias", "attention_dropout", "linear_conv_kernel_dim", "linear_key_head_dim",
    "linear_value_head_dim", "linear_num_key_heads", "linear_num_value_heads", "pad_token_id", "bos_token_id",
    "eos_token_id",
)
# Source fields read by the mapping below (layer pattern, RoPE, tied embeddings, the parts that can be dropped).
READ_FIELDS = (  # the first six are read by transformers' config class
    "layer_types", "full_attention_interval", "rope_parameters", "rope_scaling", "rope_theta",
    "partial_rotary_factor", "tie_word_embeddings", "attn_output_gate", "mtp_num_hidden_layers",
    "mtp_use_dedicated_embeddings",
    # the dtype vLLM keeps GatedDeltaNet's recurrent state in; memlm always keeps it in fp32
    "mamba_ssm_dtype",
)
# The norms Qwen3.5 stores zero-centred (Qwen3_5RMSNorm: x_hat * (1 + w)); the GatedDeltaNet's gated norm is not one.
ZERO_CENTRED = ("input_layernorm.weight", "post_attention_layernorm.weight", "q_norm.weight", "k_norm.weight")
# The fields of a qwen3_5 (vision-language) config around its text_config: the vision tower and its tokens.
VISION_FIELDS = ("vision_config", "image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id")


class QwenHybridImporter(Importer):
    """The Qwen3.5 / Qwen3-Next text decoder. Subclasses name their config class, their extra fields, and how a
    GatedDeltaNet layer's input projections are stored (:meth:`linear_projections`)."""

    config_class = Qwen3_5TextConfig
    extra_fields: tuple[str, ...] = ()
    droppable = {"vision": ("model.visual.",), "mtp": ("mtp.",)}

    def text_config(self, checkpoint, drop: frozenset[str]) -> tuple[dict, str]:
        """The text model's config dict and where it is (for messages)."""
        return checkpoint.config, str(checkpoint.directory / "config.json")

    def check_extra(self, text: dict, where: str) -> None:
        """Refuse what the family's extra fields say memlm cannot represent (none for Qwen3.5)."""

    def config(self, checkpoint, drop):
        text, where = self.text_config(checkpoint, drop)
        check_keys(text, frozenset(SAME_FIELDS + READ_FIELDS + self.extra_fields), where)
        if text.get("attn_output_gate", True) is not True:
            raise ConversionError(f"{where}: attn_output_gate={text['attn_output_gate']!r}: memlm maps Qwen's "
                                  "attention with its output gate only (attn_output_gate true)")
        mtp_layers = text.get("mtp_num_hidden_layers", 0)
        if mtp_layers and "mtp" not in drop:
            raise ConversionError(f"{where}: mtp_num_hidden_layers={mtp_layers}: a multi-token-prediction head "
                                  "(mtp.*), which memlm has no module for; it does not change the language model: "
                                  "drop it with drop=('mtp',) / --drop mtp")
        if text.get("hidden_act", "silu") != "silu":
            raise ConversionError(f"{where}: hidden_act={text['hidden_act']!r}: Qwen's GatedDeltaNet convolution "
                                  "uses hidden_act as its activation, and memlm's is SiLU: allowed 'silu'")
        self.check_extra(text, where)
        check_rope_type(dict(text.get("rope_parameters") or text.get("rope_scaling") or {}), where)
        try:  # transformers' config class: its defaults, and its reading of older RoPE fields
            source = self.config_class(**{k: v for k, v in text.items() if k in SAME_FIELDS + READ_FIELDS[:6]})
        except (ValueError, TypeError) as error:
            raise ConversionError(f"{where}: {error}") from error
        rope = {k: v for k, v in source.rope_parameters.items() if k not in ("mrope_section", "mrope_interleaved")}
        for i, layer_type in enumerate(source.layer_types):
            if layer_type not in MIXERS:
                raise ConversionError(f"{where}: layer_types[{i}]={layer_type!r}; memlm maps {sorted(MIXERS)}")
        try:
            return MemLMConfig(
                **{name: getattr(source, name) for name in SAME_FIELDS},
                mixer_types=[MIXERS[t] for t in source.layer_types],
                rope_parameters=rope,
                tie_word_embeddings=self.tied(checkpoint, text),
                attention_output_gate=True,
                attention_qk_norm="head",
            )
        except ValueError as error:
            raise ConversionError(f"{where}: {error}") from error

    def tied(self, checkpoint, text: dict) -> bool:
        return bool(text.get("tie_word_embeddings", False))

    def weights(self, checkpoint, config, tensors):
        prefix = "model.language_model." if any(n.startswith("model.language_model.") for n in tensors) else "model."
        state = {
            "model.embed_tokens.weight": take(tensors, f"{prefix}embed_tokens.weight"),
            "model.norm.weight": add_norm_offset(take(tensors, f"{prefix}norm.weight")),
        }
        if config.tie_word_embeddings:
            head = tensors.pop("lm_head.weight", None)  # some tied checkpoints store the shared matrix twice
            if head is not None and not torch.equal(head, state["model.embed_tokens.weight"]):
                raise ConversionError("tie_word_embeddings is true but lm_head.weight differs from embed_tokens.weight")
        else:
            state["lm_head.weight"] = take(tensors, "lm_head.weight")
        for i, mixer in enumerate(config.mixer_types):
            source, target = f"{prefix}layers.{i}.", f"model.layers.{i}."
            for norm in ("input_layernorm", "post_attention_layernorm"):
                state[f"{target}{norm}.weight"] = add_norm_offset(take(tensors, f"{source}{norm}.weight"))
            for name in ("gate_proj", "up_proj", "down_proj"):
                state[f"{target}mlp.{name}.weight"] = take(tensors, f"{source}mlp.{name}.weight")
            if mixer == "gated_deltanet":
                linear, out = f"{source}linear_attn.", f"{target}mixer."
                state.update({f"{out}{name}.weight": w for name, w in self.linear_projections(tensors, linear, config)})
                for name in ("A_log", "dt_bias"):
                    state[out + name] = take(tensors, linear + name)
                state[f"{out}conv.conv1d.weight"] = take(tensors, f"{linear}conv1d.weight")
                state[f"{out}norm.weight"] = take(tensors, f"{linear}norm.weight")
                state[f"{out}out_proj.weight"] = take(tensors, f"{linear}out_proj.weight")
            else:
                attention, out = f"{source}self_attn.", f"{target}mixer."
                kinds = ("weight", "bias") if config.attention_bias else ("weight",)
                for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
                    for kind in kinds:
                        state[f"{out}{name}.{kind}"] = take(tensors, f"{attention}{name}.{kind}")
                for name in ("q_norm", "k_norm"):
                    state[f"{out}{name}.weight"] = add_norm_offset(take(tensors, f"{attention}{name}.weight"))
        return state

    def linear_projections(self, tensors, linear: str, config) -> list[tuple[str, torch.Tensor]]:
        """``[(memlm name, weight)]`` of ``in_proj_qkv``, ``in_proj_z``, ``in_proj_b``, ``in_proj_a``."""
        return [(name, take(tensors, f"{linear}{name}.weight"))
                for name in ("in_proj_qkv", "in_proj_z", "in_proj_b", "in_proj_a")]


@register_importer("qwen3_5_text", "qwen3_5")
class Qwen3_5Importer(QwenHybridImporter):
    """``qwen3_5_text`` (``Qwen3_5ForCausalLM``), or ``qwen3_5`` (``Qwen3_5ForConditionalGeneration``: the
    ``text_config`` model; its vision tower only with ``drop=("vision",)``)."""

    def text_config(self, checkpoint, drop):
        config, where = checkpoint.config, str(checkpoint.directory / "config.json")
        if config.get("model_type") != "qwen3_5":
            return config, where
        check_keys(config, frozenset(("text_config", "tie_word_embeddings", *VISION_FIELDS)), where)
        if config.get("vision_config") is not None and "vision" not in drop:
            raise ConversionError(f"{where}: vision_config is set: a vision tower (model.visual.*), which memlm has "
                                  "no module for; the text model converts alone with drop=('vision',) / --drop vision")
        if not isinstance(config.get("text_config"), dict):
            raise ConversionError(f"{where}: text_config={config.get('text_config')!r}: a qwen3_5 config holds its "
                                  "text model's config as a dict")
        return config["text_config"], f"{where} (text_config)"

    def tied(self, checkpoint, text):
        """A ``qwen3_5`` model ties its head by its own (outer) ``tie_word_embeddings``, as transformers'
        ``Qwen3_5ForConditionalGeneration`` does; its ``text_config``'s value is not read."""
        if checkpoint.config is text:
            return super().tied(checkpoint, text)
        return bool(checkpoint.config.get("tie_word_embeddings", False))


@register_exporter("qwen3_5")
class Qwen3_5Exporter(Exporter):
    """A memlm model whose every layer is Qwen3.5's, as a ``Qwen3_5ForCausalLM`` text checkpoint
    (``model_type="qwen3_5_text"``) that transformers and vLLM load without memlm."""

    architecture = "Qwen3_5ForCausalLM"
    # The model-wide options a Qwen3.5 model has: the memlm field, the value it must have, what it means.
    REQUIRED = (
        ("attention_output_gate", True, "Qwen3.5's attention gates its output"),
        ("attention_qk_norm", "head", "Qwen3.5's attention normalizes q and k per head"),
        ("position_embedding_type", "rope", "Qwen3.5's attention has RoPE"),
        ("norm_placement", None, "Qwen3.5's blocks are pre-norm"),
        ("linear_allow_neg_eigval", False, "Qwen3.5's GatedDeltaNet has beta = sigmoid(b), in [0, 1]"),
        ("hidden_act", "silu", "Qwen3.5's GatedDeltaNet convolution uses hidden_act, and memlm's is SiLU"),
    )

    def config(self, config: MemLMConfig) -> dict:
        for i, mixer in enumerate(config.mixer_types):
            if mixer not in MIXERS.values():
                raise ConversionError(f"layer {i} has mixer {mixer!r} (mixer_types[{i}]): Qwen3.5 has the layers "
                                      f"{sorted(MIXERS.values())} only")
        for name, value, meaning in self.REQUIRED:
            if getattr(config, name) != value:
                raise ConversionError(f"{name}={getattr(config, name)!r}: exporting to qwen3_5 needs {name}={value!r} "
                                      f"({meaning})")
        if config.linear_norm_eps not in (None, config.rms_norm_eps):
            raise ConversionError(f"linear_norm_eps={config.linear_norm_eps!r}: Qwen3.5's GatedDeltaNet norm has "
                                  f"eps rms_norm_eps={config.rms_norm_eps!r}; allowed: None or that value")
        rope = dict(config.rope_parameters)
        rope.setdefault("partial_rotary_factor", 1.0)  # memlm's default; Qwen3.5's would be 0.25
        target = Qwen3_5TextConfig(
            **{name: getattr(config, name) for name in SAME_FIELDS},
            layer_types=[{v: k for k, v in MIXERS.items()}[m] for m in config.mixer_types],
            rope_parameters=rope,
            tie_word_embeddings=config.tie_word_embeddings,
        )
        target.architectures = [self.architecture]
        return target.to_diff_dict()  # what save_pretrained writes: the fields that differ from the defaults

    def weights(self, config: MemLMConfig, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        out = {}
        for name, tensor in state.items():
            if name == "lm_head.weight" and config.tie_word_embeddings:
                continue
            target = name.replace(".mixer.conv.conv1d.", ".linear_attn.conv1d.")
            layer = name.split(".")[2] if name.startswith("model.layers.") else None
            if layer is not None and ".mixer." in target:
                kind = "linear_attn" if config.mixer_types[int(layer)] == "gated_deltanet" else "self_attn"
                target = target.replace(".mixer.", f".{kind}.")
            offset = name == "model.norm.weight" or name.endswith(ZERO_CENTRED)
            out[target] = remove_norm_offset(tensor).to(tensor.dtype) if offset else tensor
        return out
