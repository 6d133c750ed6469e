"""Depthwise causal short convolution with a decoding state (the "short conv" of GatedDeltaNet, Mamba)."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class ShortConvolution(nn.Module):
    """``y_t = SiLU(sum_j w_j * x_{t-j})`` per channel over the last ``kernel_size`` tokens (no SiLU with
    ``activation=False``).

    The weight is stored as ``conv1d`` (an ``nn.Conv1d`` with ``groups = channels``), the name used by
    Qwen3-Next checkpoints and vLLM. With a cache, the last ``kernel_size`` inputs are kept in the
    layer's conv state (transformers' ``LinearAttentionLayer``) and decoding continues exactly. With
    ``cu_seqlens``, no document sees the tokens of the one before it.
    """

    def __init__(self, channels: int, kernel_size: int = 4, activation: bool = True, bias: bool = False):
        super().__init__()
        self.kernel_size = kernel_size
        self.activation = nn.SiLU() if activation else nn.Identity()
        self.conv1d = nn.Conv1d(channels, channels, kernel_size, groups=channels, padding=kernel_size - 1,
                                bias=bias)

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
        out = self._causal_conv(window.to(self.conv1d.weight.dtype), cu_seqlens)
        return self.activation(out[..., -seq_len:]).transpose(1, 2).to(x.dtype)

    def with_state(self, x: torch.Tensor, state: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Continue from an explicit state: ``x [B, T, C]``, ``state [B, C, K-1]`` (None: zeros) ->
        ``(y [B, T, C], new state [B, C, K-1])`` (the last ``K - 1`` inputs)."""
        window = x.transpose(1, 2)
        if state is None:
            state = window.new_zeros(window.shape[0], window.shape[1], self.kernel_size - 1)
        window = torch.cat([state.to(window.dtype), window], dim=-1)
        out = self._causal_conv(window.to(self.conv1d.weight.dtype), None)[..., -x.shape[1]:]
        return self.activation(out).transpose(1, 2).to(x.dtype), window[..., window.shape[-1] - (self.kernel_size - 1):]

    def _causal_conv(self, x: torch.Tensor, cu_seqlens: torch.Tensor | None) -> torch.Tensor:
        """``y_t = sum_lag w[K-1-lag] * x_{t-lag} (+ b)`` on ``[B, C, L]``, as K shifted multiply-adds.

        With ``cu_seqlens`` (a packed row), a tap never reaches before its document's start. Written
        out rather than through ``F.conv1d``: as fast for K = 4, and far cheaper for one decoding token.
        """
        weight = self.conv1d.weight.squeeze(1)  # [C, K]
        length = x.shape[-1]
        if cu_seqlens is not None:
            positions = torch.arange(length, device=x.device)
            doc_start = cu_seqlens[torch.searchsorted(cu_seqlens, positions, right=True) - 1]
        out = x * weight[:, -1, None]
        for lag in range(1, min(self.kernel_size, length)):
            tap = F.pad(x[..., : length - lag], (lag, 0)) * weight[:, self.kernel_size - 1 - lag, None]
            if cu_seqlens is not None:
                tap = tap * (positions - lag >= doc_start).to(x.dtype)
            out = out + tap
        return out if self.conv1d.bias is None else out + self.conv1d.bias[:, None]
