"""Depthwise causal short convolution with a decoding state (the "short conv" of GatedDeltaNet, Mamba)."""

from __future__ import annotations

import torch
from torch import nn


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
        window = x
        if cache is not None:
            # Prefill: returns x (left-padded to the kernel); decoding: the stored inputs followed by x. transformers'
            # conv state is [B, C, K]: channels first, kept in place (the cache copies the last K inputs into it).
            window = cache.update_conv_state(x.transpose(1, 2), layer_idx, conv_kernel_size=self.kernel_size)
            if seq_len == 1 and cu_seqlens is None:
                return self._last_output(window).to(x.dtype)
            window = window.transpose(1, 2).contiguous()
        out = self._causal_conv(window.to(self.conv1d.weight.dtype), cu_seqlens)
        return self.activation(out[:, -seq_len:]).to(x.dtype)

    def _last_output(self, window: torch.Tensor) -> torch.Tensor:
        """One decoding token: ``window [B, C, >= K]`` (channels first, as the cache holds it; the token last) ->
        ``y [B, 1, C] = SiLU(sum_j w_j * window[..., -K + j] (+ b))``, one multiply and one sum over the last K
        inputs, with no transposes or copies of the window."""
        taps = window[..., -self.kernel_size:].to(self.conv1d.weight.dtype)
        out = (taps * self.conv1d.weight.squeeze(1)).sum(-1)  # weight [C, 1, K] -> [C, K]
        if self.conv1d.bias is not None:
            out = out + self.conv1d.bias
        return self.activation(out)[:, None]

    def with_state(self, x: torch.Tensor, state: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Continue from an explicit state: ``x [B, T, C]``, ``state [B, C, K-1]`` (None: zeros) ->
        ``(y [B, T, C], new state [B, C, K-1])`` (the last ``K - 1`` inputs)."""
        if state is None:
            state = x.new_zeros(x.shape[0], x.shape[2], self.kernel_size - 1)
        window = torch.cat([state.to(x.dtype).transpose(1, 2), x], dim=1)
        out = self._causal_conv(window.to(self.conv1d.weight.dtype), None)[:, -x.shape[1]:]
        new_state = window[:, window.shape[1] - (self.kernel_size - 1):].transpose(1, 2)
        return self.activation(out).to(x.dtype), new_state

    def _causal_conv(self, x: torch.Tensor, cu_seqlens: torch.Tensor | None) -> torch.Tensor:
        """``y_t = sum_lag w[K-1-lag] * x_{t-lag} (+ b)`` on ``x [B, L, C]`` (channels last, contiguous), as K
        shifted multiply-adds, each added in place into the rows it reaches (no padded copies of x).

        With ``cu_seqlens`` (a packed row), a tap never reaches before its document's start. Written out rather
        than through ``F.conv1d``: channels last, it is as fast for K = 4 in training, faster for short inputs, and
        handles packed documents with the same code.
        """
        weight = self.conv1d.weight.squeeze(1).t()  # [K, C]
        length = x.shape[1]
        if cu_seqlens is not None:
            positions = torch.arange(length, device=x.device)
            doc_start = cu_seqlens[torch.searchsorted(cu_seqlens, positions, right=True) - 1]
        out = x * weight[-1]
        for lag in range(1, min(self.kernel_size, length)):
            tap = x[:, : length - lag]
            if cu_seqlens is not None:
                tap = tap * (positions[lag:] - lag >= doc_start[lag:]).to(x.dtype)[:, None]
            out[:, lag:].addcmul_(tap, weight[self.kernel_size - 1 - lag])
        return out if self.conv1d.bias is None else out.add_(self.conv1d.bias)
