"""nn.Modules: token mixers (registered by name), norms, MLP, rotary embeddings."""

from memlm.layers.attention import Attention
from memlm.layers.based import BasedLinearAttention
from memlm.layers.deltanet import DeltaNet
from memlm.layers.gated_conv import ShortGatedConvolution
from memlm.layers.gated_deltanet import GatedDeltaNet
from memlm.layers.gla import GatedLinearAttention
from memlm.layers.hgrn2 import HGRN2, ForgetLowerBounds
from memlm.layers.kda import KimiDeltaAttention
from memlm.layers.mamba2 import Mamba2
from memlm.layers.memory_cache import MemoryCacheLayer
from memlm.layers.mla import MultiHeadLatentAttention
from memlm.layers.mlp import SwiGLUMLP
from memlm.layers.neural_memory import NeuralMemory
from memlm.layers.norm import GatedRMSNorm, RMSNorm
from memlm.layers.prefix_linear_attention import PrefixLinearAttention
from memlm.layers.registry import MIXERS, build_mixer, register_mixer
from memlm.layers.short_conv import ShortConvolution
from memlm.layers.titans import MemoryAsContext, MemoryAsGate, MemoryLayer

__all__ = [
    "MIXERS",
    "HGRN2",
    "Attention",
    "BasedLinearAttention",
    "DeltaNet",
    "ForgetLowerBounds",
    "GatedDeltaNet",
    "GatedLinearAttention",
    "GatedRMSNorm",
    "KimiDeltaAttention",
    "Mamba2",
    "MemoryAsContext",
    "MemoryAsGate",
    "MemoryCacheLayer",
    "MemoryLayer",
    "MultiHeadLatentAttention",
    "NeuralMemory",
    "PrefixLinearAttention",
    "RMSNorm",
    "ShortConvolution",
    "ShortGatedConvolution",
    "SwiGLUMLP",
    "build_mixer",
    "register_mixer",
]
