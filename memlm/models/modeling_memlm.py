"""memlm's causal LM: a decoder whose layers each use a registered token mixer.

Reads top to bottom like transformers' ``modeling_llama.py``: decoder layer, pretrained base, model,
causal LM. Layer ``i`` runs the mixer ``config.mixer_types[i]`` in a layer of type ``config.layer_types[i]``
(transformers' vocabulary); see :mod:`memlm.layers.registry`. The model computes what the mixers read once per
forward (:class:`~memlm.layers.inputs.MixerInputs`) and runs its layers in a plain loop. The cache is
transformers' ``DynamicCache(config=...)``: attention layers keep keys and values, linear layers a conv and a
recurrent state.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import DynamicCache, GenerationMixin, PreTrainedModel
from transformers import initialization as init
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast
from transformers.utils import logging

import memlm.layers  # noqa: F401  (registers the mixers)
from memlm.layers.hgrn2 import ForgetLowerBounds
from memlm.layers.inputs import MixerInputs
from memlm.layers.memory_cache import MemoryCacheLayer
from memlm.layers.mlp import SwiGLUMLP
from memlm.layers.norm import RMSNorm
from memlm.layers.registry import ATTENTION_LAYER_TYPES, build_mixer
from memlm.layers.rotary import RotaryEmbedding
from memlm.models.compat import CACHE_FIELD, attention_masks
from memlm.models.configuration_memlm import MemLMConfig
from memlm.models.inputs import check_model_inputs
from memlm.models.jrt_rnn.objective import prefix_lm_loss
from memlm.ops.prefix_linear_attention import prefix_token_mask

logger = logging.get_logger(__name__)


def resolve_cache_argument(cache, past_key_values):
    """The cache given as ``cache`` or under its old name ``past_key_values``; the old name warns (once) where
    the installed transformers has moved to ``cache``, as transformers' own models do."""
    if past_key_values is None:
        return cache
    if cache is not None:
        raise ValueError("pass the cache as `cache` or as `past_key_values`, not both")
    if CACHE_FIELD == "cache":
        logger.warning_once("`past_key_values` is deprecated. Use `cache` instead.")
    return past_key_values


def scaled(x: torch.Tensor, factor: float) -> torch.Tensor:
    """``x * factor``; ``x`` itself where ``factor`` is 1 (Granite's multipliers; 1 in every other model), so other
    models pay no whole-tensor multiplication for them."""
    return x if factor == 1 else x * factor


class MemLMDecoderLayer(GradientCheckpointingLayer):
    """Pre-norm block (``norm_placement`` "pre", the default): ``h = x + r * mixer(input_layernorm(x))``, then
    ``h + r * mlp(post_attention_layernorm(h))`` (``r = residual_multiplier``, 1 but in Granite).
    ``[B, T, hidden]`` in and out."""

    def __init__(self, config: MemLMConfig, layer_idx: int):
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.mixer = build_mixer(config, layer_idx)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.mlp = SwiGLUMLP(config.hidden_size, config.intermediate_size, config.hidden_act)
        self.residual_multiplier = config.residual_multiplier

    def forward(self, hidden_states: torch.Tensor, inputs: MixerInputs) -> torch.Tensor:
        r = self.residual_multiplier
        hidden_states = hidden_states + scaled(self.mixer(self.input_layernorm(hidden_states), inputs), r)
        return hidden_states + scaled(self.mlp(self.post_attention_layernorm(hidden_states)), r)


class MemLMPostNormDecoderLayer(GradientCheckpointingLayer):
    """OLMo 2's block (``norm_placement`` "post"; module names of transformers' ``Olmo3DecoderLayer``):
    ``h = x + r * post_attention_layernorm(mixer(x))``, then ``h + r * post_feedforward_layernorm(mlp(h))``
    (``r = residual_multiplier``). ``[B, T, hidden]`` in and out."""

    def __init__(self, config: MemLMConfig, layer_idx: int):
        super().__init__()
        self.mixer = build_mixer(config, layer_idx)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.mlp = SwiGLUMLP(config.hidden_size, config.intermediate_size, config.hidden_act)
        self.post_feedforward_layernorm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.residual_multiplier = config.residual_multiplier

    def forward(self, hidden_states: torch.Tensor, inputs: MixerInputs) -> torch.Tensor:
        r = self.residual_multiplier
        hidden_states = hidden_states + scaled(self.post_attention_layernorm(self.mixer(hidden_states, inputs)), r)
        return hidden_states + scaled(self.post_feedforward_layernorm(self.mlp(hidden_states)), r)


DECODER_LAYERS = {"pre": MemLMDecoderLayer, "post": MemLMPostNormDecoderLayer}  # by config.norm_placement


class MemLMPreTrainedModel(PreTrainedModel):
    config_class = MemLMConfig
    config: MemLMConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _no_split_modules = ["MemLMDecoderLayer", "MemLMPostNormDecoderLayer"]
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True
    _supports_attention_backend = True
    _is_stateful = True

    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        if hasattr(module, "init_mixer_weights"):
            module.init_mixer_weights()
        elif isinstance(module, ForgetLowerBounds):
            init.zeros_(module.lower_bounds)


class MemLMModel(MemLMPreTrainedModel):
    """Embeddings, decoder layers, final norm. ``input_ids [B, T] -> last_hidden_state [B, T, hidden]``."""

    def __init__(self, config: MemLMConfig):
        super().__init__(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, config.pad_token_id)
        placement = config.norm_placement or ["pre"] * config.num_hidden_layers
        self.layers = nn.ModuleList(DECODER_LAYERS[placement[i]](config, i) for i in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        # position_embedding_type "nope": no rotary embedding; the attention layers get position_embeddings=None
        self.rotary_emb = RotaryEmbedding(config) if config.position_embedding_type == "rope" else None
        # HGRN-2's lower bounds, one row per HGRN-2 layer; each layer reads its own row inside its forward
        num_hgrn2 = len(config.layers_of_mixer("hgrn2"))
        forget_dim = config.linear_num_key_heads * config.linear_key_head_dim
        self.forget_lower_bounds = ForgetLowerBounds(num_hgrn2, forget_dim) if num_hgrn2 else None
        self.gradient_checkpointing = False
        self.post_init()

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache=None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        past_key_values=None,
        cu_seq_lens_q: torch.Tensor | None = None,
        prefix_length: int | torch.Tensor | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPast | tuple:
        """Args as in Llama; ``cache`` (old name ``past_key_values``) is a ``DynamicCache(config=...)``.

        ``cu_seq_lens_q`` (``[N + 1]``): the offsets of packed documents in the ``[B, T]`` rows read one after
        the other (a document never crosses a row). Linear and memory layers read the rows as one packed
        sequence and keep the documents apart by these offsets; attention layers separate them through
        ``position_ids`` (restarting at 0), row by row.

        ``output_attentions`` (needs the ``eager`` attention): one ``[B, H, T, S]`` tensor of attention weights
        per layer for ``full_attention``/``sliding_attention`` layers, None for the other layers.
        ``output_attentions``, ``output_hidden_states``, ``use_cache`` and ``return_dict`` default to the config's.
        """
        cache = resolve_cache_argument(cache, past_key_values)
        check_model_inputs(self.config, input_ids, inputs_embeds, attention_mask, has_cache=cache is not None)
        output_attentions = self.config.output_attentions if output_attentions is None else output_attentions
        output_hidden_states = (
            self.config.output_hidden_states if output_hidden_states is None else output_hidden_states
        )
        return_dict = self.config.return_dict if return_dict is None else return_dict
        if output_attentions and self.config._attn_implementation != "eager":
            raise ValueError(
                f"output_attentions=True returns the attention weights of the eager attention, but the model uses "
                f"attn_implementation={self.config._attn_implementation!r}: load it with attn_implementation='eager' "
                "(or call model.set_attn_implementation('eager'))"
            )
        if cu_seq_lens_q is not None:
            if use_cache or cache is not None:
                raise ValueError(
                    "packed documents (cu_seq_lens_q) have no single state to continue from: call with "
                    "use_cache=False and no cache"
                )
            use_cache = False
            rows = input_ids if input_ids is not None else inputs_embeds
            if int(cu_seq_lens_q[-1]) != rows.shape[0] * rows.shape[1]:
                raise ValueError(
                    f"cu_seq_lens_q ends at {int(cu_seq_lens_q[-1])}, but the rows hold {rows.shape[0]} x "
                    f"{rows.shape[1]} tokens: it must give the document offsets of all rows read one after the other"
                )
        use_cache = self.config.use_cache if use_cache is None else use_cache
        if self.gradient_checkpointing and self.training:
            use_cache = False
        if inputs_embeds is None:
            inputs_embeds = self.embed_tokens(input_ids)
        inputs_embeds = scaled(inputs_embeds, self.config.embedding_multiplier)
        if use_cache and cache is None:
            cache = DynamicCache(config=self.config)
        elif not use_cache:
            cache = None
        if position_ids is None:
            position_ids = (torch.arange(inputs_embeds.shape[1], device=inputs_embeds.device)
                            + self._past_length(cache)).unsqueeze(0)

        prefix_mask = None if prefix_length is None else prefix_token_mask(
            prefix_length, inputs_embeds.shape[0], inputs_embeds.shape[1], cu_seq_lens_q, inputs_embeds.device
        )
        sliding_in_blocks = not output_attentions and self._sliding_in_blocks(
            attention_mask, cache, cu_seq_lens_q, inputs_embeds.shape[1]
        )
        packed = {} if cu_seq_lens_q is None else {"cu_seq_lens_q": cu_seq_lens_q, "cu_seq_lens_k": cu_seq_lens_q}
        inputs = MixerInputs(
            attention_mask=attention_mask,
            attention_masks=attention_masks(self.config, inputs_embeds, attention_mask, cache, position_ids,
                                            skip=("sliding_attention",) if sliding_in_blocks else ()),
            position_ids=position_ids,
            position_embeddings=None if self.rotary_emb is None else self.rotary_emb(inputs_embeds, position_ids),
            cache=cache,
            cu_seqlens=cu_seq_lens_q,
            prefix_mask=prefix_mask,
            sliding_in_blocks=sliding_in_blocks,
            attention_weights={} if output_attentions else None,  # layer index -> weights, filled by attention layers
            attention_kwargs={"position_ids": position_ids, **packed, **kwargs},
            forget_lower_bounds=self.forget_lower_bounds,
        )

        hidden_states, all_hidden = inputs_embeds, []
        for layer in self.layers:
            if output_hidden_states:
                all_hidden.append(hidden_states)
            hidden_states = layer(hidden_states, inputs)
        hidden_states = self.norm(hidden_states)
        if output_hidden_states:
            all_hidden.append(hidden_states)
        output = BaseModelOutputWithPast(
            last_hidden_state=hidden_states,
            hidden_states=tuple(all_hidden) if output_hidden_states else None,
            attentions=(tuple(inputs.attention_weights.get(i) for i in range(len(self.layers)))
                        if output_attentions else None),
            **{CACHE_FIELD: cache},
        )
        return output if return_dict else output.to_tuple()

    def _sliding_in_blocks(self, attention_mask, cache, cu_seq_lens_q, seq_len: int) -> bool:
        """Whether sliding-window layers read this call in blocks (:mod:`memlm.ops.sliding_window_attention`):
        a whole unpadded sequence (no cached tokens, no packed documents) longer than two windows, with the
        ``sdpa`` or ``eager`` attention and no attention dropout in training."""
        window = self.config.sliding_window
        return (
            "sliding_attention" in self.config.layer_types and seq_len > 2 * window
            and self.config._attn_implementation in ("sdpa", "eager")
            and not (self.training and self.config.attention_dropout > 0)
            and cu_seq_lens_q is None and (cache is None or cache.get_seq_length() == 0)
            and (attention_mask is None or bool(attention_mask.all()))
        )

    def _past_length(self, cache) -> int:
        """Tokens already in the cache: its attention layers' length, else (a model without attention layers) the
        count of a memory layer, 0 when no layer counts tokens (positions then matter to no layer)."""
        if cache is None:
            return 0
        if any(t in ATTENTION_LAYER_TYPES for t in self.config.layer_types):
            return cache.get_seq_length()
        counted = [layer.get_seq_length() for layer in cache.layers if isinstance(layer, MemoryCacheLayer)]
        return counted[0] if counted else 0


class MemLMForCausalLM(MemLMPreTrainedModel, GenerationMixin):
    """:class:`MemLMModel` with a language-modeling head; ``labels`` give the shifted next-token loss."""

    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}

    def __init__(self, config: MemLMConfig):
        super().__init__(config)
        self.model = MemLMModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache=None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        past_key_values=None,
        prefix_length: int | torch.Tensor | None = None,
        mlm_labels: torch.LongTensor | None = None,
        **kwargs,
    ) -> CausalLMOutputWithPast | tuple:
        """``logits`` ``[B, T, vocab]`` (the last ``logits_to_keep`` positions when it is > 0).

        With ``config.prefix_lm_objective``, ``labels`` and ``prefix_length``, the loss is JRT-RNN's: next-token
        loss after the prefix plus ``config.prefix_mlm_weight`` times the masked-token loss on ``mlm_labels``
        ``[B, T]`` (:mod:`memlm.models.jrt_rnn.objective`). ``return_dict=False`` (or ``config.return_dict=False``)
        gives the output's fields that are not None as a tuple, as transformers' models do.
        """
        outputs = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=resolve_cache_argument(cache, past_key_values),
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            return_dict=True,
            prefix_length=prefix_length,
            **kwargs,
        )
        hidden_states = outputs.last_hidden_state
        keep = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
        logits = self.lm_head(hidden_states[:, keep])
        if self.config.logits_scaling != 1:  # Granite's (divided, as transformers' Granite does)
            logits = logits / self.config.logits_scaling
        loss = None
        if labels is not None and self.config.prefix_lm_objective:
            if prefix_length is None or logits.shape[1] != labels.shape[1]:
                raise ValueError(
                    "config.prefix_lm_objective=True: the loss needs prefix_length and the logits of every position "
                    f"(logits_to_keep=0); got prefix_length={prefix_length!r}, logits_to_keep={logits_to_keep!r}"
                )
            prefix_mask = prefix_token_mask(prefix_length, *labels.shape, kwargs.get("cu_seq_lens_q"), labels.device)
            loss = prefix_lm_loss(logits, labels, prefix_mask, mlm_labels, self.config.prefix_mlm_weight)
        elif labels is not None:
            loss = self.loss_function(logits=logits, labels=labels, vocab_size=self.config.vocab_size, **kwargs)
        output = CausalLMOutputWithPast(
            loss=loss,
            logits=logits,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            **{CACHE_FIELD: getattr(outputs, CACHE_FIELD)},
        )
        return output if (self.config.return_dict if return_dict is None else return_dict) else output.to_tuple()

    @property
    def reads_prefix(self) -> bool:
        """Whether the model reads a prefix non-causally (JRT-RNN): ``forward`` takes ``prefix_length``, and
        ``generate`` reads the prompt as the prefix."""
        return self.config.reads_prefix

    def generate(self, inputs=None, **kwargs):
        """transformers' ``generate``; a model with ``"prefix_linear_attention"`` layers reads the prompt as its
        prefix (``prefix_length`` = the prompt's width, left padding included) unless ``prefix_length`` is given."""
        if self.config.reads_prefix and kwargs.get("prefix_length") is None:
            prompt = next((x for x in (inputs, kwargs.get("input_ids"), kwargs.get("inputs_embeds")) if x is not None),
                          None)
            if prompt is not None:
                kwargs["prefix_length"] = prompt.shape[1]
        return super().generate(inputs, **kwargs)

    def prepare_inputs_for_generation(self, input_ids, prefix_length=None, **kwargs):
        """transformers' inputs, plus ``prefix_length`` on the call that fills the cache (every call without a
        cache); later calls continue causally from the cached state."""
        inputs = super().prepare_inputs_for_generation(input_ids, **kwargs)
        if self.config.reads_prefix:
            cache = inputs.get("cache", inputs.get("past_key_values"))
            layer = self.config.mixer_types.index("prefix_linear_attention")
            if cache is None or not cache.layers[layer].has_previous_state[0]:
                tokens = inputs["input_ids"] if inputs.get("input_ids") is not None else inputs["inputs_embeds"]
                inputs["prefix_length"] = tokens.shape[1] if prefix_length is None else prefix_length
        return inputs
