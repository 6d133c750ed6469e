"""Configuration of memlm's causal LM: one class for every hybrid of attention and linear mixers."""

from __future__ import annotations

import dataclasses
import difflib
import functools
import math
import typing

from transformers import GenerationConfig, PreTrainedConfig
from transformers.activations import ACT2FN

from memlm.layers.registry import (
    ATTENTION_LAYER_TYPES,
    LAYER_TYPES,
    LINEAR_LAYER_TYPE,
    MIXERS,
    RECURRENT_LAYER_TYPES,
    linear_mixers,
)
from memlm.layers.rotary import rotary_channels
from memlm.models.auto_code import AUTO_MAP, write_auto_module
from memlm.models.layer_pattern import hybrid_layer_types

QK_NORMS = (None, "head", "all")
POSITION_EMBEDDINGS = ("rope", "nope")
NORM_PLACEMENTS = ("pre", "post")
# the mixers whose attention rotates
ROTARY_MIXERS = (*ATTENTION_LAYER_TYPES, "memory_as_gate", "memory_as_context", "mla")


class MemLMConfig(PreTrainedConfig):
    r"""Configuration of :class:`~memlm.MemLMForCausalLM`.

    Standard transformers fields (``vocab_size``, ``hidden_size``, ``intermediate_size``,
    ``num_hidden_layers``, ``num_attention_heads``, ``num_key_value_heads``, ``head_dim``,
    ``max_position_embeddings``, ``rope_theta`` / ``rope_parameters``, ``rms_norm_eps``,
    ``tie_word_embeddings``, ``sliding_window``, ...) mean what they mean in Llama.

    Layer pattern:
        layer_types (`list[str]`): per layer, in transformers' vocabulary (what its cache, its mask builders
            and vLLM read): ``"full_attention"``, ``"sliding_attention"``, ``"linear_attention"`` or ``"conv"``.
            If omitted it is built from ``hybrid_ratio``.
        mixer_types (`list[str]`): per layer, the registered mixer (:mod:`memlm.layers.registry`):
            ``"full_attention"``, ``"sliding_attention"``, ``"mla"``, the linear mixers ``"gated_deltanet"``,
            ``"hgrn2"``, ``"gla"``, ``"deltanet"``, ``"kda"``, ``"mamba2"``, ``"based"``, the Titans memories
            ``"memory"``, ``"memory_as_gate"``, ``"memory_as_context"``, JRT-RNN's ``"prefix_linear_attention"`` and
            ``"conv"``; each mixer's layer type is fixed by the registry. If
            omitted: attention layers get their own type's mixer, ``"linear_attention"`` layers
            ``linear_attn_type``, ``"conv"`` layers ``"conv"``. The config stores each mixer's registry type
            (``"conv"`` is stored as ``"linear_attention"``: transformers' cache treats both alike, and
            transformers 5.16 rewrites it so). A mixer name in ``layer_types`` (how memlm wrote
            configs before ``mixer_types`` existed) is read as that mixer with its layer type.
        hybrid_ratio (`str`, init argument only, default ``"3:1"``): see :func:`memlm.hybrid_layer_types`.
        linear_attn_type (`str`): the mixer of ``"linear_attention"`` layers whose mixer is not given:
            ``"gated_deltanet"``, ``"hgrn2"``, ``"gla"``, ``"deltanet"``, ``"kda"`` or ``"based"`` (Based linear
            attention; its feature dimension is ``linear_key_head_dim``, 16 in the paper): any registered linear
            mixer.

    Linear mixers (each defaults from the attention fields, so a config with only standard fields builds):
        linear_num_key_heads: q/k heads (default ``num_attention_heads``).
        linear_num_value_heads: value heads, a multiple of the key heads (default ``linear_num_key_heads``).
        linear_key_head_dim: key dimension per head, the HGRN-2 state expansion (default ``head_dim``).
        linear_value_head_dim: value dimension per head (default ``head_dim``).
        linear_conv_kernel_dim: GatedDeltaNet short convolution width (default 4; also the memory's conv).

    Options of pretrained hybrids (per model, all off by default; the defaults are memlm's own model):
        attention_output_gate (`bool`): Qwen3.5 / Qwen3-Next's gated attention. ``q_proj`` outputs
            ``2 * num_attention_heads * head_dim``, read as ``[B, T, H, 2 * head_dim]``: per head the query (first
            ``head_dim``) and a gate (last ``head_dim``); the attention output ``[B, T, H * head_dim]`` is multiplied
            by ``sigmoid(gate)`` before ``o_proj``.
        attention_qk_norm (`str` or None): ``"head"``: RMSNorm of width ``head_dim`` on each head of q and k before
            RoPE (Qwen3, Qwen3.5, fla's ``qk_norm``), modules ``q_norm`` / ``k_norm``; ``"all"``: RMSNorm over the whole
            projection (``q_proj``'s ``H * head_dim``, ``k_proj``'s ``Hkv * head_dim``) before the split into heads
            (OLMo 2/3, OLMo Hybrid). Both use ``rms_norm_eps``. memlm's norms multiply by ``weight``: Qwen3.5's
            norms, which multiply by ``1 + weight``, are converted at import (stored as ``1 + weight``), so there is
            no offset option.
        ``rope_parameters["partial_rotary_factor"]`` (`float` in (0, 1], default 1; a top-level
            ``partial_rotary_factor`` is moved there by transformers): RoPE rotates only the first
            ``int(head_dim * factor)`` channels of each head (which must be even) and passes the rest through
            (Qwen3.5: 0.25).
        position_embedding_type (`str`): ``"rope"`` or ``"nope"``: attention layers get no position embedding at all
            and the model builds no rotary embedding (OLMo Hybrid's released checkpoints; Granite-4.0-H's field).
        norm_placement (`list[str]` or None): per layer ``"pre"`` (``h = x + mixer(input_layernorm(x))``, then
            ``h + mlp(post_attention_layernorm(h))``) or ``"post"`` (OLMo 2's: ``h = x +
            post_attention_layernorm(mixer(x))``, then ``h + post_feedforward_layernorm(mlp(h))``, no input norm).
            None means all ``"pre"``, and an all-``"pre"`` list is stored as None. OLMo Hybrid: ``"post"`` for its
            attention layers, ``"pre"`` for its GatedDeltaNet layers.
        linear_allow_neg_eigval (`bool`): GatedDeltaNet's ``beta = 2 * sigmoid(b)``, in ``[0, 2]`` (fla's
            ``allow_neg_eigval``, OLMo Hybrid), so ``I - beta k k^T`` may have a negative eigenvalue.
        linear_norm_eps (`float` or None): eps of GatedDeltaNet's gated output norm (None: ``rms_norm_eps``;
            OLMo Hybrid: 1e-5).
        embedding_multiplier, residual_multiplier, attention_multiplier, logits_scaling (Granite's; defaults 1, 1,
            None, 1): the embeddings are multiplied by ``embedding_multiplier``; every mixer's and MLP's output by
            ``residual_multiplier`` before it is added to the residual stream; attention scores by
            ``attention_multiplier`` (None: ``head_dim ** -0.5``); the logits are divided by ``logits_scaling``.
        The attention options apply to the ``"full_attention"`` / ``"sliding_attention"`` layers; the attention
        inside the ``"memory_as_gate"`` / ``"memory_as_context"`` layers has none of them (a config combining them
        is refused), but follows the partial rotary factor.

    GLA and DeltaNet (``"gla"``, ``"deltanet"``: fla's layers; ``linear_num_key_heads`` heads of key width
        ``linear_key_head_dim`` and value width ``linear_value_head_dim``, ``linear_num_value_heads`` unused;
        output norm eps ``linear_norm_eps``; DeltaNet's conv ``linear_conv_kernel_dim`` and beta
        ``linear_allow_neg_eigval``):
        gla_gate_low_rank_dim (`int`): rank of GLA's decay projection ``gk_proj`` (fla: 16).
        gla_gate_logit_normalizer (`float`): GLA's ``g = logsigmoid(gk_proj(x)) / gla_gate_logit_normalizer``
            (fla: 16).
        deltanet_use_gate (`bool`): DeltaNet's output ``RMSNorm(o) * SiLU(g_proj(x))`` instead of ``RMSNorm(o)``
            (fla's ``use_gate``, default false).

    Mamba-2 (mixer ``"mamba2"``, a ``"linear_attention"`` layer; names as transformers' Mamba-2 / Granite-4.0-H):
        mamba_head_dim: channels per head (default ``head_dim``).
        mamba_expand: the inner width is ``int(mamba_expand * hidden_size)`` (default 2).
        mamba_num_heads: heads (default inner width / ``mamba_head_dim``; heads x head_dim must be the inner width).
        mamba_d_state: state size per head, B/C width (default ``head_dim``).
        mamba_n_groups: groups sharing B and C (default 1; divides the heads).
        mamba_conv_kernel: depthwise conv width over x|B|C (default 4); mamba_conv_bias: its bias (default True).
        mamba_chunk_size: tokens per chunk of the SSD scan (default 64; the result does not depend on it).
        mamba_time_step_limit: ``[min, max]`` clamp of ``dt`` after softplus, or None (default: no clamp).
        mamba_proj_bias: biases of ``in_proj`` / ``out_proj`` (default False).
        mamba_norm_eps: eps of the gated output norm (None: ``rms_norm_eps``).

    KDA (``"kda"``, Kimi Delta Attention): the ``linear_*`` head fields and ``linear_conv_kernel_dim``; the ranks
        of its forget and output gates are ``linear_value_head_dim`` (Kimi Linear's ``head_dim``).

    Multi-head Latent Attention (``"mla"`` layers, a ``"full_attention"`` mixer; DeepSeek-V2/V3, Kimi Linear):
        mla_q_lora_rank (`int` or None): rank of the query's low-rank path ``q_b_proj(norm(q_a_proj(x)))``
            (None, the default: one ``q_proj``).
        mla_kv_lora_rank: width of the compressed key/value latent the cache keeps (default ``4 * head_dim``).
        mla_qk_nope_head_dim / mla_v_head_dim: per-head key channels without RoPE and value width (default
            ``head_dim``).
        mla_qk_rope_head_dim: key/query channels with RoPE, one key part shared by all heads (default
            ``head_dim``; with ``position_embedding_type="rope"`` it must equal the rotary width).
        The attention options (output gate, q/k norm) do not apply to ``"mla"`` layers.

    Titans / Miras memory (layer types ``"memory"``, ``"memory_as_gate"``, ``"memory_as_context"``):
        memory_preset: ``"titans"``, ``"moneta"``, ``"yaad"`` or ``"memora"`` (see docs/guides/titans.md).
        memory_rule (`dict`): overrides of the preset's :class:`~memlm.ops.neural_memory.MemoryRule` fields,
            e.g. ``{"depth": 3, "algorithm": "gd"}``.
        memory_chunk_size: tokens per inner mini-batch (and per MAC segment), default 64.
        memory_num_heads / memory_head_dim: memory heads and their width (default the attention's).
        memory_max_lr: the largest inner learning rate ``theta`` (default: the preset's, 0.03; Moneta 0.01).
        num_persistent_memory_tokens: learned persistent-memory tokens (default 0).
        memory_recompute_chunks: in training, keep only the memory states at chunk boundaries and recompute
            the chunks in the backward pass (less memory, one more forward per chunk; default False).
        ``"memory_as_gate"`` layers use ``sliding_window``.

    JRT-RNN (see :func:`memlm.jrt_rnn_config` and docs/guides/jrt_rnn.md):
        ``"prefix_linear_attention"`` layers use the ``linear_*`` head fields (feature dimension
        ``linear_key_head_dim``, 16 in the paper) and read ``prefix_length`` tokens non-causally.
        gated_conv_expand / gated_conv_kernel_dim: width multiple and kernel of ``"conv"`` layers (4 and 3).
        prefix_lm_objective (`bool`): with ``labels`` and ``prefix_length``, the loss is the next-token loss on
            the suffix plus ``prefix_mlm_weight`` (0.25) times the masked-token loss at the prefix positions
            given by ``mlm_labels`` (training recipes mask ``prefix_mlm_probability``, 15%, of the prefix
            tokens with ``mask_token_id``, which only that masking needs: a config for inference may leave it
            None).
    """

    model_type = "memlm"
    keys_to_ignore_at_inference = ["cache", "past_key_values"]

    vocab_size: int = 32000
    hidden_size: int = 1024
    intermediate_size: int | None = None
    num_hidden_layers: int = 24
    num_attention_heads: int = 16
    num_key_value_heads: int | None = None
    head_dim: int | None = None
    hidden_act: str = "silu"
    max_position_embeddings: int = 4096
    initializer_range: float = 0.02
    rms_norm_eps: float = 1e-6
    use_cache: bool = True
    tie_word_embeddings: bool = False
    rope_parameters: dict | None = None
    attention_bias: bool = False
    attention_dropout: float = 0.0
    attention_output_gate: bool = False
    attention_qk_norm: str | None = None
    position_embedding_type: str = "rope"
    norm_placement: list[str] | None = None
    sliding_window: int | None = None
    layer_types: list[str] | None = None
    mixer_types: list[str] | None = None
    linear_attn_type: str = "gated_deltanet"
    linear_num_key_heads: int | None = None
    linear_num_value_heads: int | None = None
    linear_key_head_dim: int | None = None
    linear_value_head_dim: int | None = None
    linear_conv_kernel_dim: int = 4
    linear_allow_neg_eigval: bool = False
    linear_norm_eps: float | None = None
    mla_q_lora_rank: int | None = None
    mla_kv_lora_rank: int | None = None
    mla_qk_nope_head_dim: int | None = None
    mla_qk_rope_head_dim: int | None = None
    mla_v_head_dim: int | None = None
    gla_gate_low_rank_dim: int = 16
    gla_gate_logit_normalizer: float = 16.0
    deltanet_use_gate: bool = False
    mamba_num_heads: int | None = None
    mamba_head_dim: int | None = None
    mamba_expand: int | float = 2
    mamba_d_state: int | None = None
    mamba_n_groups: int = 1
    mamba_conv_kernel: int = 4
    mamba_chunk_size: int = 64
    mamba_time_step_limit: list[float] | None = None
    mamba_conv_bias: bool = True
    mamba_proj_bias: bool = False
    mamba_norm_eps: float | None = None
    embedding_multiplier: float = 1.0
    residual_multiplier: float = 1.0
    attention_multiplier: float | None = None
    logits_scaling: float = 1.0
    memory_preset: str = "titans"
    memory_rule: dict | None = None
    memory_chunk_size: int = 64
    memory_num_heads: int | None = None
    memory_head_dim: int | None = None
    memory_max_lr: float | None = None
    num_persistent_memory_tokens: int = 0
    memory_recompute_chunks: bool = False
    gated_conv_expand: int = 4
    gated_conv_kernel_dim: int = 3
    prefix_lm_objective: bool = False
    prefix_mlm_weight: float = 0.25
    prefix_mlm_probability: float = 0.15
    mask_token_id: int | None = None
    pad_token_id: int | None = None
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None

    def __post_init__(self, **kwargs):
        _refuse_misspelled_keys(kwargs)
        hybrid_ratio = kwargs.pop("hybrid_ratio", None)
        _check_positive(self, "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads")
        if self.layer_types is None and self.mixer_types is not None and hybrid_ratio is None:
            unknown = sorted({m for m in self.mixer_types if m not in MIXERS})
            if unknown:
                raise ValueError(f"mixer_types contains {unknown}; registered mixers: {sorted(MIXERS)}")
            if len(self.mixer_types) != self.num_hidden_layers:
                raise ValueError(f"mixer_types has {len(self.mixer_types)} entries but num_hidden_layers="
                                 f"{self.num_hidden_layers}: give one mixer per layer")
            self.layer_types = [MIXERS[m].layer_type for m in self.mixer_types]
        elif self.layer_types is None:
            self.layer_types = hybrid_layer_types(self.num_hidden_layers, hybrid_ratio or "3:1")
        else:
            self.layer_types = list(self.layer_types)
            if hybrid_ratio is not None and self.layer_types != hybrid_layer_types(len(self.layer_types), hybrid_ratio):
                raise ValueError(
                    f"hybrid_ratio={hybrid_ratio!r} disagrees with the layer_types given: pass only one of them"
                )
        self._fill_mixer_types()
        if self.num_key_value_heads is None:
            self.num_key_value_heads = self.num_attention_heads
        if self.head_dim is None:
            if self.hidden_size % self.num_attention_heads:
                raise ValueError(
                    f"hidden_size={self.hidden_size} is not divisible by num_attention_heads="
                    f"{self.num_attention_heads}: choose a divisor or set head_dim explicitly"
                )
            self.head_dim = self.hidden_size // self.num_attention_heads
        if self.intermediate_size is None:
            self.intermediate_size = 64 * -(-8 * self.hidden_size // (3 * 64))  # ~8/3 hidden, multiple of 64
        # None takes the default; any other value is checked below (0 is refused, not replaced by the default)
        if self.linear_num_key_heads is None:
            self.linear_num_key_heads = self.num_attention_heads
        for name, default in (
            ("linear_num_value_heads", self.linear_num_key_heads), ("linear_key_head_dim", self.head_dim),
            ("linear_value_head_dim", self.head_dim), ("memory_num_heads", self.num_attention_heads),
            ("memory_head_dim", self.head_dim), ("mamba_head_dim", self.head_dim), ("mamba_d_state", self.head_dim),
            ("mla_kv_lora_rank", 4 * self.head_dim), ("mla_qk_nope_head_dim", self.head_dim),
            ("mla_qk_rope_head_dim", self.head_dim), ("mla_v_head_dim", self.head_dim),
        ):
            if getattr(self, name) is None:
                setattr(self, name, default)
        self._validate_layers()
        self._validate_numerics()
        self._validate_block_options()
        self._validate_memory()
        self._validate_prefix_lm()
        self._validate_mamba()
        self._validate_multipliers()
        super().__post_init__(**kwargs)
        self._validate_rope()
        self.auto_map = dict(AUTO_MAP)  # tools that never import memlm load it with trust_remote_code=True

    def save_pretrained(self, save_directory, push_to_hub: bool = False, **kwargs) -> None:
        """transformers' ``save_pretrained``, plus the module ``auto_map`` names (:mod:`memlm.models.auto_code`);
        a model's ``save_pretrained`` writes its config through this."""
        super().save_pretrained(save_directory, push_to_hub=push_to_hub, **kwargs)
        write_auto_module(save_directory)

    def _fill_mixer_types(self) -> None:
        """Give every layer a mixer and a layer type in transformers' vocabulary (see the class docstring)."""
        if self.linear_attn_type not in linear_mixers():
            raise ValueError(f"linear_attn_type={self.linear_attn_type!r} is unknown; allowed: {linear_mixers()}")
        given = None if self.mixer_types is None else list(self.mixer_types)
        if given is not None and len(given) != len(self.layer_types):
            raise ValueError(f"mixer_types has {len(given)} entries but layer_types has {len(self.layer_types)}: give "
                             "one mixer per layer")
        layer_types, mixer_types = [], []
        for i, layer_type in enumerate(self.layer_types):
            if layer_type in LAYER_TYPES:
                default = self.linear_attn_type if layer_type == LINEAR_LAYER_TYPE else layer_type
                mixer = default if given is None else given[i]
            elif layer_type in MIXERS:  # a mixer name where a layer type belongs: memlm's format before mixer_types
                mixer, layer_type = layer_type, MIXERS[layer_type].layer_type
                if given is not None and given[i] != mixer:
                    raise ValueError(f"layer {i}: layer_types names mixer {mixer!r} but mixer_types says {given[i]!r}")
            else:
                raise ValueError(f"layer_types[{i}]={layer_type!r} is unknown; allowed layer types are "
                                 f"{list(LAYER_TYPES)} (or a mixer name: {sorted(MIXERS)})")
            if mixer not in MIXERS:
                raise ValueError(f"mixer_types[{i}]={mixer!r} is unknown; registered mixers: {sorted(MIXERS)}")
            # "conv" and "linear_attention" are the same to transformers' cache (a LinearAttentionLayer), and
            # transformers 5.16 rewrites "conv" as "linear_attention" when it validates a config: memlm accepts
            # both and writes the registry's type, so a saved config passes that validation unchanged
            interchangeable = {MIXERS[mixer].layer_type, layer_type} <= set(RECURRENT_LAYER_TYPES)
            if MIXERS[mixer].layer_type != layer_type and not interchangeable:
                raise ValueError(f"layer {i}: mixer {mixer!r} runs in a {MIXERS[mixer].layer_type!r} layer, but "
                                 f"layer_types[{i}]={layer_type!r}")
            layer_types.append(MIXERS[mixer].layer_type)
            mixer_types.append(mixer)
        self.layer_types, self.mixer_types = layer_types, mixer_types

    def layers_of_mixer(self, mixer: str) -> list[int]:
        """Indices of the layers whose mixer is ``mixer``."""
        return [i for i, name in enumerate(self.mixer_types) if name == mixer]

    def _validate_layers(self) -> None:
        """Raise ValueError naming the field, its value and what is allowed."""
        _check_positive(
            self, "head_dim", "intermediate_size", "num_key_value_heads", "linear_num_key_heads",
            "linear_num_value_heads", "linear_key_head_dim", "linear_value_head_dim", "linear_conv_kernel_dim",
            "mla_kv_lora_rank", "mla_qk_nope_head_dim", "mla_qk_rope_head_dim", "mla_v_head_dim",
        )
        if self.mla_q_lora_rank is not None:
            _check_positive(self, "mla_q_lora_rank")
        if len(self.layer_types) != self.num_hidden_layers:
            raise ValueError(
                f"layer_types has {len(self.layer_types)} entries but num_hidden_layers={self.num_hidden_layers}: "
                "give one layer type per layer"
            )
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(
                f"num_attention_heads={self.num_attention_heads} must be a multiple of "
                f"num_key_value_heads={self.num_key_value_heads}"
            )
        if self.linear_num_value_heads % self.linear_num_key_heads:
            raise ValueError(
                f"linear_num_value_heads={self.linear_num_value_heads} must be a multiple of "
                f"linear_num_key_heads={self.linear_num_key_heads}"
            )
        if "sliding_attention" in self.layer_types and not (
            isinstance(self.sliding_window, int) and self.sliding_window > 0
        ):
            raise ValueError(
                f"sliding_window={self.sliding_window!r}: layer_types contains 'sliding_attention', "
                "so sliding_window must be a positive number of tokens"
            )

    def _validate_numerics(self) -> None:
        """The fields that otherwise fail deep inside the model (NaN logits, a KeyError, a shape error)."""
        eps = self.rms_norm_eps
        if not (_is_number(eps) and math.isfinite(eps) and eps > 0):
            raise ValueError(f"rms_norm_eps={eps!r} is not allowed: a finite number > 0 (e.g. 1e-6)")
        dropout = self.attention_dropout
        if not (_is_number(dropout) and 0 <= dropout < 1):
            raise ValueError(f"attention_dropout={dropout!r} is not allowed: a probability in [0, 1)")
        if not isinstance(self.hidden_act, str) or self.hidden_act not in ACT2FN:
            raise ValueError(f"hidden_act={self.hidden_act!r} is unknown; allowed (transformers' ACT2FN): "
                             f"{sorted(ACT2FN)}")
        pad = self.pad_token_id
        if pad is not None and not (_is_int(pad) and 0 <= pad < self.vocab_size):
            raise ValueError(f"pad_token_id={pad!r} is not allowed: None or a token id in [0, vocab_size="
                             f"{self.vocab_size})")

    def _validate_block_options(self) -> None:
        """The per-model options of the attention layers, the decoder blocks and GatedDeltaNet."""
        for name in ("attention_output_gate", "linear_allow_neg_eigval", "deltanet_use_gate"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name}={getattr(self, name)!r} is not allowed: true or false")
        for name, allowed in (("attention_qk_norm", QK_NORMS), ("position_embedding_type", POSITION_EMBEDDINGS)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name}={getattr(self, name)!r} is not allowed: one of {list(allowed)}")
        _check_positive(self, "gla_gate_low_rank_dim")
        normalizer = self.gla_gate_logit_normalizer
        if not (_is_number(normalizer) and math.isfinite(normalizer) and normalizer > 0):
            raise ValueError(f"gla_gate_logit_normalizer={normalizer!r} is not allowed: a finite number > 0 (fla: 16)")
        eps = self.linear_norm_eps
        if eps is not None and not (_is_number(eps) and math.isfinite(eps) and eps > 0):
            raise ValueError(f"linear_norm_eps={eps!r} is not allowed: None (rms_norm_eps) or a finite number > 0")
        placement = self.norm_placement
        if placement is not None:
            if not isinstance(placement, list | tuple) or len(placement) != self.num_hidden_layers:
                raise ValueError(f"norm_placement={placement!r} is not allowed: None (all 'pre') or a list of "
                                 f"num_hidden_layers={self.num_hidden_layers} entries, each one of {NORM_PLACEMENTS}")
            for i, value in enumerate(placement):
                if value not in NORM_PLACEMENTS:
                    raise ValueError(f"norm_placement[{i}]={value!r} is not allowed: one of {NORM_PLACEMENTS}")
            self.norm_placement = None if set(placement) == {"pre"} else list(placement)  # None: today's configs
        # the attention inside Titans' memory layers (memlm.layers.window_attention) has RoPE and none of these
        memory_attention = sorted({m for m in self.mixer_types if m in ("memory_as_gate", "memory_as_context")})
        options = {name: getattr(self, name) for name, default in (
            ("attention_output_gate", False), ("attention_qk_norm", None), ("position_embedding_type", "rope"),
            ("attention_multiplier", None),
        ) if getattr(self, name) != default}
        mla_options = {name: getattr(self, name) for name in ("attention_output_gate", "attention_qk_norm")
                       if getattr(self, name) not in (False, None)}
        if "mla" in self.mixer_types and mla_options:
            raise ValueError(f"{', '.join(f'{k}={v!r}' for k, v in mla_options.items())} is not allowed with mla "
                             "layers: Multi-head Latent Attention has no output gate or q/k norm")
        if memory_attention and options:
            raise ValueError(f"{', '.join(f'{k}={v!r}' for k, v in options.items())} is not allowed with the memory "
                             f"layers {memory_attention}: these options apply to the full_attention and "
                             "sliding_attention layers, and the memory layers' own attention has none of them")

    def _validate_rope(self) -> None:
        """With ``position_embedding_type="rope"``: ``rope_theta`` (given alone or in ``rope_parameters``;
        transformers moves it there) must be > 0, ``partial_rotary_factor`` in (0, 1], and the rotary dimension
        ``int(head_dim * partial_rotary_factor)`` even where a layer rotates (RoPE rotates pairs of channels)."""
        if self.position_embedding_type == "nope":
            return
        parameters = self.rope_parameters if isinstance(self.rope_parameters, dict) else {}
        theta = parameters.get("rope_theta")
        if not (_is_number(theta) and math.isfinite(theta) and theta > 0):
            raise ValueError(f"rope_theta={theta!r} is not allowed: the RoPE base, a finite number > 0 "
                             "(e.g. 10000)")
        factor = parameters.get("partial_rotary_factor", 1.0)
        if not (_is_number(factor) and 0 < factor <= 1):
            raise ValueError(f"partial_rotary_factor={factor!r} (in rope_parameters) is not allowed: the fraction of "
                             "each head's channels that RoPE rotates, a number in (0, 1]")
        rotary_dim = rotary_channels(self)
        if (rotary_dim % 2 or rotary_dim == 0) and any(m in ROTARY_MIXERS for m in self.mixer_types):
            raise ValueError(f"head_dim={self.head_dim} is not allowed: the rotary embedding rotates pairs of "
                             f"channels, so int(head_dim * partial_rotary_factor) (= {rotary_dim} with "
                             f"partial_rotary_factor={factor!r}) must be even and > 0")
        if "mla" in self.mixer_types and self.mla_qk_rope_head_dim != rotary_dim:
            raise ValueError(f"mla_qk_rope_head_dim={self.mla_qk_rope_head_dim} is not allowed with RoPE: the mla "
                             f"layers rotate their qk_rope_head_dim channels, so it must equal the rotary width "
                             f"int(head_dim * partial_rotary_factor) = {rotary_dim} (set head_dim to it, as "
                             "DeepSeek and Kimi configs do, or position_embedding_type='nope')")

    def _validate_memory(self) -> None:
        """Memory fields are checked whether or not a memory layer is present (a config must stay loadable)."""
        _check_positive(self, "memory_chunk_size", "memory_num_heads", "memory_head_dim")
        persistent = self.num_persistent_memory_tokens
        if not _is_int(persistent) or persistent < 0:
            raise ValueError(f"num_persistent_memory_tokens must be a non-negative integer, got {persistent!r}")
        lr = self.memory_max_lr
        if lr is not None and not (_is_number(lr) and lr > 0):
            raise ValueError(f"memory_max_lr must be a positive number, got {self.memory_max_lr!r}")
        if self.memory_rule is not None and not isinstance(self.memory_rule, dict):
            raise ValueError(f"memory_rule must be a dict of MemoryRule fields, got {self.memory_rule!r}")
        from memlm.layers.neural_memory import memory_rule

        _check_memory_rule_types(self.memory_rule or {})
        try:
            memory_rule(self.memory_preset, self.memory_rule)
        except (ValueError, TypeError) as error:
            raise ValueError(
                f"memory_preset={self.memory_preset!r}, memory_rule={self.memory_rule!r}: {error}"
            ) from error
        window_ok = isinstance(self.sliding_window, int) and self.sliding_window > 0
        if "memory_as_gate" in self.mixer_types and not window_ok:
            raise ValueError(
                f"sliding_window={self.sliding_window!r}: layer_types contains 'memory_as_gate', whose attention "
                "is a sliding window, so sliding_window must be a positive number of tokens"
            )

    def _validate_prefix_lm(self) -> None:
        _check_positive(self, "gated_conv_expand", "gated_conv_kernel_dim")
        if not isinstance(self.prefix_lm_objective, bool):
            raise ValueError(f"prefix_lm_objective must be true or false, got {self.prefix_lm_objective!r}")
        weight, probability = self.prefix_mlm_weight, self.prefix_mlm_probability
        if not _is_number(weight) or weight < 0:
            raise ValueError(f"prefix_mlm_weight must be a number >= 0, got {weight!r}")
        if not _is_number(probability) or not 0 <= probability <= 1:
            raise ValueError(f"prefix_mlm_probability must be a number in [0, 1], got {probability!r}")
        token = self.mask_token_id
        if token is not None and not (_is_int(token) and 0 <= token < self.vocab_size):
            raise ValueError(f"mask_token_id must be a token id in [0, vocab_size={self.vocab_size}), got {token!r}")

    def _validate_mamba(self) -> None:
        """The Mamba-2 fields (checked whether or not a ``"mamba2"`` layer is present: a config must stay loadable;
        the widths must agree only with one). ``mamba_num_heads`` defaults to ``mamba_expand * hidden_size /
        mamba_head_dim``."""
        expand = self.mamba_expand
        if not (_is_number(expand) and expand > 0):
            raise ValueError(f"mamba_expand={expand!r} is not allowed: a number > 0 (the inner width is "
                             "mamba_expand * hidden_size)")
        inner = int(expand * self.hidden_size)
        _check_positive(self, "mamba_head_dim", "mamba_d_state", "mamba_n_groups", "mamba_conv_kernel",
                        "mamba_chunk_size")
        if self.mamba_num_heads is None:
            self.mamba_num_heads = max(1, inner // self.mamba_head_dim)
        _check_positive(self, "mamba_num_heads")
        # the default head count need not fill the inner width of a model without Mamba-2 layers
        if "mamba2" in self.mixer_types and self.mamba_num_heads * self.mamba_head_dim != inner:
            raise ValueError(f"mamba_num_heads={self.mamba_num_heads} x mamba_head_dim={self.mamba_head_dim} must be "
                             f"int(mamba_expand * hidden_size) = {inner}")
        if self.mamba_num_heads % self.mamba_n_groups:
            raise ValueError(f"mamba_n_groups={self.mamba_n_groups} is not allowed: it must divide "
                             f"mamba_num_heads={self.mamba_num_heads}")
        limit = self.mamba_time_step_limit
        if limit is not None:
            if not (isinstance(limit, list | tuple) and len(limit) == 2 and all(_is_number(v) for v in limit)
                    and 0 <= limit[0] <= limit[1]):
                raise ValueError(f"mamba_time_step_limit={limit!r} is not allowed: None (no clamp) or [min, max] "
                                 "with 0 <= min <= max")
            self.mamba_time_step_limit = [float(v) for v in limit]
        for name in ("mamba_conv_bias", "mamba_proj_bias"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name}={getattr(self, name)!r} is not allowed: true or false")
        eps = self.mamba_norm_eps
        if eps is not None and not (_is_number(eps) and math.isfinite(eps) and eps > 0):
            raise ValueError(f"mamba_norm_eps={eps!r} is not allowed: None (rms_norm_eps) or a finite number > 0")

    def _validate_multipliers(self) -> None:
        """Granite's multipliers: finite numbers > 0 (``attention_multiplier`` may be None: ``head_dim ** -0.5``)."""
        for name in ("embedding_multiplier", "residual_multiplier", "attention_multiplier", "logits_scaling"):
            value = getattr(self, name)
            if name == "attention_multiplier" and value is None:
                continue
            if not (_is_number(value) and math.isfinite(value) and value > 0):
                raise ValueError(f"{name}={value!r} is not allowed: a finite number > 0")

    @property
    def reads_prefix(self) -> bool:
        """Whether a model of this config reads a prefix non-causally (JRT-RNN's prefix linear attention)."""
        return "prefix_linear_attention" in self.mixer_types


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


# Keys a config.json may hold that are no MemLMConfig field: what transformers 4.x and 5.x write (or the hub
# adds: auto_map) and what PreTrainedConfig.__post_init__ reads itself (legacy RoPE keys, torch_dtype, ...).
_TRANSFORMERS_EXTRA_KEYS = frozenset({
    "auto_map", "architectures", "transformers_version", "model_type", "name_or_path", "_name_or_path",
    "_commit_hash", "torch_dtype", "dtype", "num_labels", "rope_theta", "rope_scaling", "partial_rotary_factor",
    "attn_implementation", "experts_implementation", "per_layer_config", "output_attentions",
    "_attn_implementation_internal", "_experts_implementation_internal", "torchscript", "use_bfloat16",
    "tf_legacy_loss", "pruned_heads", "is_decoder", "add_cross_attention", "cross_attention_hidden_size",
    "tie_encoder_decoder", "finetuning_task", "tokenizer_class", "prefix", "task_specific_params",
    "sep_token_id", "use_return_dict", "_from_model_config",
})


@functools.cache
def config_keys() -> tuple[frozenset[str], frozenset[str]]:
    """``(fields, transformers_keys)``: the keys :class:`MemLMConfig` reads (its fields and ``hybrid_ratio``),
    and the keys transformers and the hub write into a ``config.json`` besides them (attributes of a default
    ``PreTrainedConfig``, generation parameters, and :data:`_TRANSFORMERS_EXTRA_KEYS`)."""
    fields = frozenset(f.name for f in dataclasses.fields(MemLMConfig)) | {"hybrid_ratio"}
    default = PreTrainedConfig()
    written = set(vars(default)) | set(default.to_dict()) | set(GenerationConfig().to_dict())
    return fields, frozenset(written | _TRANSFORMERS_EXTRA_KEYS) - fields


def _refuse_misspelled_keys(kwargs: dict) -> None:
    """A keyword that is no field but close to one (``hiden_size``) is a typo, which transformers would keep as
    an attribute and nothing would read: refuse it, naming the field meant. Keys far from every field are kept
    (transformers' behaviour; configs on the hub carry extras), as are the keys transformers writes itself."""
    fields, transformers_keys = config_keys()
    for key, value in kwargs.items():
        if key in fields or key in transformers_keys:
            continue
        close = difflib.get_close_matches(key, fields, n=3)
        if close:
            raise ValueError(f"MemLMConfig got {key}={value!r}, which is no field; did you mean "
                             f"{' or '.join(map(repr, close))}?")


def _check_memory_rule_types(overrides: dict) -> None:
    """Each ``memory_rule`` field has its :class:`~memlm.ops.neural_memory.MemoryRule` type: a bool is True or
    False (not ``"no"``), a number is a finite number > 0 (``expansion``, ``p``, ``sign_sharpness``, ``abs_eps``,
    ...), a name is a string. Unknown fields are left to :func:`memlm.layers.neural_memory.memory_rule`."""
    from memlm.ops.neural_memory import MemoryRule

    hints = typing.get_type_hints(MemoryRule)
    for name, value in overrides.items():
        kinds = set(typing.get_args(hints[name]) or (hints[name],)) if name in hints else set()
        if not kinds or (value is None and type(None) in kinds):
            continue
        if bool in kinds:
            ok, allowed = isinstance(value, bool), "true or false"
        elif str in kinds:
            ok, allowed = isinstance(value, str), "a string"
        elif int in kinds:
            ok, allowed = _is_int(value) and value > 0, "a positive integer"
        else:
            ok = _is_number(value) and math.isfinite(value) and value > 0
            allowed = "a finite number > 0" + (" or null" if type(None) in kinds else "")
        if not ok:
            raise ValueError(f"memory_rule field {name}={value!r} is not allowed: {allowed}")


def _check_positive(config: MemLMConfig, *fields: str) -> None:
    for name in fields:
        value = getattr(config, name)
        if not _is_int(value) or value <= 0:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
