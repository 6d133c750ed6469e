"""memlm: long-context and memory language models for the Hugging Face ecosystem.

``import memlm`` registers ``MemLMConfig`` / ``MemLMModel`` / ``MemLMForCausalLM`` with transformers'
Auto classes (model_type ``"memlm"``).
"""

from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

from memlm import convert  # memlm.convert.from_pretrained / convert: import and export pretrained hybrids
from memlm.models import MemLMConfig, MemLMForCausalLM, MemLMModel, hybrid_layer_types, jrt_rnn_config

__version__ = "0.1.0"

AutoConfig.register(MemLMConfig.model_type, MemLMConfig, exist_ok=True)
AutoModel.register(MemLMConfig, MemLMModel, exist_ok=True)
AutoModelForCausalLM.register(MemLMConfig, MemLMForCausalLM, exist_ok=True)

__all__ = [
    "MemLMConfig", "MemLMForCausalLM", "MemLMModel", "convert", "hybrid_layer_types", "jrt_rnn_config", "__version__",
]
