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

from memlm.layers.inputs import MixerInputs
from memlm.layers.padding import RecurrentMixer
from memlm.layers.registry import register_mixer
from memlm.layers.short_conv import ShortConvolution


@register_mixer("conv", "linear_attention", "conv state (the last K inputs)")
class ShortGatedConvolution(RecurrentMixer):
    """``hidden_states [B, T, hidden] -> [B, T, hidden]``."""

    def __init__(self, config, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        channels = config.gated_conv_expand * config.hidden_size
        self.in_proj = nn.Linear(config.hidden_size, channels, bias=False)
        self.gate_proj = nn.Linear(config.hidden_size, channels, bias=False)
        self.conv = ShortConvolution(channels, config.gated_conv_kernel_dim, activation=False)
        self.o_proj = nn.Linear(channels, config.hidden_size, bias=False)

    def mix(self, hidden_states: torch.Tensor, mask: torch.Tensor | None, inputs: MixerInputs) -> torch.Tensor:
        projected = self.in_proj(hidden_states)
        if mask is not None:  # padding never enters the convolution window
            projected = projected * mask[..., None].to(projected.dtype)
        u = self.conv(projected, inputs.cache, self.layer_idx, inputs.cu_seqlens)
        return self.o_proj(u * self.gate_proj(hidden_states))
