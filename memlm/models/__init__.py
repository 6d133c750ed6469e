"""Configs and Hugging Face model classes."""

from memlm.models.configuration_memlm import MemLMConfig
from memlm.models.jrt_rnn import jrt_rnn_config, jrt_rnn_mixer_types
from memlm.models.layer_pattern import hybrid_layer_types
from memlm.models.modeling_memlm import MemLMForCausalLM, MemLMModel, MemLMPreTrainedModel

__all__ = ["MemLMConfig", "MemLMForCausalLM", "MemLMModel", "MemLMPreTrainedModel", "hybrid_layer_types",
           "jrt_rnn_config", "jrt_rnn_mixer_types"]
