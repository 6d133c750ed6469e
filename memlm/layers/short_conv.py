"""Depthwise causal short convolution with a decoding state (the "short conv" of GatedDeltaNet, Mamba)."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class ShortConvolution(nn.Module):
    """``y_t = SiLU(sum_j w_j * x_{t-j})`` per channel over the last ``kernel_size`` tokens.

    The weight is stored as ``conv1d`` (an ``nn.Conv1d`` with ``groups = channels``), the name used by
    Qwen3-Next checkpoints and vLLM. With a cache, the last ``kernel_size`` inputs are kept in the
    layer's conv state (transformers' ``LinearAttentionLayer``) and decoding continues exactly. With
    ``cu_seqlens``, no document sees the tokens of the one before it.
    """

    def __init__(self, channels: int, kernel_size: int = 4):
        super().__init__()
        self.kernel_size = kernel_size
        self.conv1d = nn.Conv1d(channels, channels, kernel_size, groups=channels, padding=kernel_size - 1, bias=False)

    def forward(
        self,
        x: torch.Tensor,
        cache=None,
        layer_idx: int | None = None,
        cu_seqlens: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``x: [B, T, channels] -> [B, T, channels]``."""
        seq_len = x.shape[1]
        window = x.transpose(1, 2)  # [B, C, T]
        if cache is not None:
            # Prefill: returns x (left-padded to the kernel); decoding: the stored inputs followed by x.
            window = cache.update_conv_state(window, layer_idx, conv_kernel_size=self.kernel_size)
        weight = self.conv1d.weight.squeeze(1)  # [C, K]
        if cu_seqlens is None:
            out = F.conv1d(window.to(weight.dtype), weight.unsqueeze(1), padding=self.kernel_size - 1,
                           groups=weight.shape[0])[..., : window.shape[-1]]
        else:
            out = self._conv_documents(window.to(weight.dtype), weight, cu_seqlens)
        return F.silu(out[..., -seq_len:]).transpose(1, 2).to(x.dtype)

    def _conv_documents(self, x: torch.Tensor, weight: torch.Tensor, cu_seqlens: torch.Tensor) -> torch.Tensor:
        """Causal conv of a packed row ``[1, C, T]`` where tap ``j`` never reaches before its document's start."""
        positions = torch.arange(x.shape[-1], device=x.device)
        doc_start = cu_seqlens[torch.searchsorted(cu_seqlens, positions, right=True) - 1]
        out = torch.zeros_like(x)
        for lag in range(self.kernel_size):
            shifted = F.pad(x, (lag, 0))[..., : x.shape[-1]]
            valid = (positions - lag >= doc_start).to(x.dtype)
            out = out + weight[:, self.kernel_size - 1 - lag, None] * shifted * valid
        return out
