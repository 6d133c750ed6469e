"""Short gated convolution (the "BaseConv" of Based and JRT-RNN), layer type ``"conv"``.

    u = conv_K(W_in x)          depthwise causal convolution over the last K tokens, per channel
    y = W_o (u * W_gate x)      gated elementwise by a second projection

with ``gated_conv_expand * hidden_size`` channels and ``K = gated_conv_kernel_dim`` (3 in JRT-RNN). The
last K inputs of the convolution are its decoding state (the conv state of transformers'
``LinearAttentionLayer``, which transformers' cache builds for the layer type ``"conv"``).
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import cache_utils
from transformers.cache_utils import LinearAttentionLayer

from memlm.layers.gated_deltanet import padding_mask_for
from memlm.layers.registry import CONV_LAYER_TYPE, register_mixer
from memlm.layers.short_conv import ShortConvolution

cache_utils.DYNAMIC_LAYER_TYPE_MAPPING.setdefault(CONV_LAYER_TYPE, LinearAttentionLayer)
cache_utils.STATIC_LAYER_TYPE_MAPPING.setdefault(CONV_LAYER_TYPE, LinearAttentionLayer)


@register_mixer(CONV_LAYER_TYPE)
class ShortGatedConvolution(nn.Module):
    """``hidden_states [B, T, hidden] -> [B, T, hidden]``."""

    def __init__(self, config, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        channels = config.gated_conv_expand * config.hidden_size
        self.in_proj = nn.Linear(config.hidden_size, channels, bias=False)
        self.gate_proj = nn.Linear(config.hidden_size, channels, bias=False)
        self.conv = ShortConvolution(channels, config.gated_conv_kernel_dim, activation=False)
        self.o_proj = nn.Linear(channels, config.hidden_size, bias=False)

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_embeddings=None,
        cache=None,
        cu_seqlens: torch.Tensor | None = None,
        **kwargs,
    ) -> torch.Tensor:
        mask = padding_mask_for(attention_mask, hidden_states.shape[1])
        inputs = self.in_proj(hidden_states)
        if mask is not None:  # padding never enters the convolution window
            inputs = inputs * mask[..., None].to(inputs.dtype)
        u = self.conv(inputs, cache, self.layer_idx, cu_seqlens)
        return self.o_proj(u * self.gate_proj(hidden_states))
