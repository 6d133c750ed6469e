"""memlm's causal LM as a vLLM model (imported by vLLM only, through the plugin in this package).

It reads top to bottom like vLLM's own Llama: embeddings, pre-norm decoder layers (``x + mixer(norm(x))``,
then ``x + mlp(norm(x))``), final norm, LM head. Per layer type:

* ``"full_attention"`` / ``"sliding_attention"``: vLLM's ``LlamaAttention`` (fused qkv projection, RoPE,
  vLLM's paged ``Attention``, the window of ``config.sliding_window`` for sliding layers); with Qwen3.5's
  options (``attention_output_gate``, ``attention_qk_norm="head"``) vLLM's ``Qwen3NextAttention``, whose q/k
  norms multiply by ``1 + w`` (memlm's by ``w'``: loaded as ``w = w' - 1``);
* ``"linear_attention"`` layers whose mixer is ``"gated_deltanet"``: vLLM's own GatedDeltaNet layer
  (``QwenGatedDeltaNetAttention`` in Qwen3.5's layout, which has CPU, CUDA, ROCm and XPU paths): memlm's
  GatedDeltaNet is parametrized exactly as Qwen3.5's, so only the names of the checkpoint move
  (:data:`CHECKPOINT_TO_VLLM`);
* anything else (HGRN-2 and Based linear layers, Titans memory layers, JRT-RNN's prefix linear attention and
  short convolutions) raises :class:`UnsupportedLayerError` before loading.

The state of the GDN layers (a conv window and a ``[dk, dv]`` matrix per value head) is vLLM's "mamba" state:
the class methods below give its shapes, dtypes and copy functions, as vLLM's hybrid models do.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn
from vllm.config import VllmConfig
from vllm.distributed import get_pp_group
from vllm.model_executor.layers.layernorm import RMSNorm
from vllm.model_executor.layers.logits_processor import LogitsProcessor
from vllm.model_executor.layers.mamba.gdn.qwen_gdn_linear_attn import QwenGatedDeltaNetAttention
from vllm.model_executor.layers.mamba.mamba_utils import (
    MambaStateCopyFuncCalculator,
    MambaStateDtypeCalculator,
    MambaStateShapeCalculator,
)
from vllm.model_executor.layers.vocab_parallel_embedding import ParallelLMHead, VocabParallelEmbedding
from vllm.model_executor.models.interfaces import HasInnerState, IsHybrid
from vllm.model_executor.models.llama import LlamaAttention, LlamaMLP
from vllm.model_executor.models.qwen3_next import Qwen3NextAttention
from vllm.model_executor.models.utils import (
    AutoWeightsLoader,
    PPMissingLayer,
    WeightsMapper,
    extract_layer_index,
    make_layers,
    maybe_prefix,
)
from vllm.sequence import IntermediateTensors

from memlm.serving.vllm import check_supported_layers

ATTENTION_TYPES = ("full_attention", "sliding_attention")
# vLLM's Qwen3NextAttention norms q and k with GemmaRMSNorm, x_hat * (1 + w): these memlm weights are loaded as w' - 1
ZERO_CENTRED_IN_VLLM = (".mixer.q_norm.weight", ".mixer.k_norm.weight")

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


class MemLMDecoderLayer(nn.Module):
    """One pre-norm block; ``forward(positions, hidden_states, residual) -> (hidden_states, residual)``
    with vLLM's fused add-and-norm (tokens flattened: ``[num_tokens, hidden]``)."""

    def __init__(self, vllm_config: VllmConfig, prefix: str = "") -> None:
        super().__init__()
        config = vllm_config.model_config.hf_config
        self.layer_type = config.layer_types[extract_layer_index(prefix)]
        if self.layer_type in ATTENTION_TYPES and config.attention_output_gate:  # Qwen3.5's attention
            self.mixer = Qwen3NextAttention(config, model_config=vllm_config.model_config,
                                            cache_config=vllm_config.cache_config,
                                            quant_config=vllm_config.quant_config, prefix=f"{prefix}.mixer")
        elif self.layer_type in ATTENTION_TYPES:
            self.mixer = LlamaAttention(
                config=config, hidden_size=config.hidden_size, num_heads=config.num_attention_heads,
                num_kv_heads=config.num_key_value_heads, max_position_embeddings=config.max_position_embeddings,
                quant_config=vllm_config.quant_config, bias=config.attention_bias,
                bias_o_proj=config.attention_bias, cache_config=vllm_config.cache_config, prefix=f"{prefix}.mixer",
            )
        else:  # "linear_attention" with GatedDeltaNet (check_supported_layers refused the rest)
            self.mixer = QwenGatedDeltaNetAttention(config, vllm_config, prefix=f"{prefix}.mixer",
                                                    gqa_interleaved_layout=False)
        self.mlp = LlamaMLP(config.hidden_size, config.intermediate_size, config.hidden_act,
                            quant_config=vllm_config.quant_config, prefix=f"{prefix}.mlp")
        self.input_layernorm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)

    def forward(self, positions: torch.Tensor, hidden_states: torch.Tensor,
                residual: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        if residual is None:
            residual, hidden_states = hidden_states, self.input_layernorm(hidden_states)
        else:
            hidden_states, residual = self.input_layernorm(hidden_states, residual)
        if self.layer_type in ATTENTION_TYPES:
            hidden_states = self.mixer(positions, hidden_states)
        else:
            hidden_states = self.mixer(hidden_states)
        hidden_states, residual = self.post_attention_layernorm(hidden_states, residual)
        return self.mlp(hidden_states), residual


class MemLMModel(nn.Module):
    def __init__(self, *, vllm_config: VllmConfig, prefix: str = "") -> None:
        super().__init__()
        config = vllm_config.model_config.hf_config
        self.config = config
        self.embed_tokens = VocabParallelEmbedding(config.vocab_size, config.hidden_size)
        self.start_layer, self.end_layer, self.layers = make_layers(
            config.num_hidden_layers, lambda prefix: MemLMDecoderLayer(vllm_config, prefix),
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
        weights = ((name, weight - 1 if name.endswith(ZERO_CENTRED_IN_VLLM) else weight) for name, weight in weights)
        return AutoWeightsLoader(self, ignore_unexpected_prefixes=ignore).load_weights(weights,
                                                                                       mapper=CHECKPOINT_TO_VLLM)

    @classmethod
    def get_mamba_state_dtype_from_config(cls, vllm_config: VllmConfig) -> tuple[torch.dtype, torch.dtype]:
        return MambaStateDtypeCalculator.gated_delta_net_state_dtype(
            vllm_config.model_config.dtype, vllm_config.cache_config.mamba_cache_dtype,
            vllm_config.cache_config.mamba_ssm_cache_dtype,
        )

    @classmethod
    def get_mamba_state_shape_from_config(cls, vllm_config: VllmConfig):
        config = vllm_config.model_config.hf_config
        speculative = vllm_config.speculative_config
        return MambaStateShapeCalculator.gated_delta_net_state_shape(
            vllm_config.parallel_config.tensor_parallel_size, config.linear_num_key_heads,
            config.linear_num_value_heads, config.linear_key_head_dim, config.linear_value_head_dim,
            config.linear_conv_kernel_dim, speculative.num_speculative_tokens if speculative else 0,
        )

    @classmethod
    def get_mamba_state_copy_func(cls):
        return MambaStateCopyFuncCalculator.gated_delta_net_state_copy_func()
