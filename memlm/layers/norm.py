"""RMS normalization, plain and gated (the output norm of GatedDeltaNet)."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class RMSNorm(nn.Module):
    """``y = x / sqrt(mean(x^2) + eps) * weight``, computed in fp32. Input and output ``[..., dim]``."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        normed = x.float() * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + self.eps)
        return (normed * self.weight.float()).to(x.dtype)

    def extra_repr(self) -> str:
        return f"{tuple(self.weight.shape)}, eps={self.eps}"


class GatedRMSNorm(RMSNorm):
    """``y = RMSNorm(x) * SiLU(gate)`` (norm before gate, as in fla and Qwen3-Next), or ``* sigmoid(gate)`` with
    ``activation="sigmoid"`` (Kimi Linear's KDA). ``x, gate: [..., dim]``."""

    ACTIVATIONS = {"silu": F.silu, "sigmoid": torch.sigmoid}

    def __init__(self, dim: int, eps: float = 1e-6, activation: str = "silu"):
        super().__init__(dim, eps)
        if activation not in self.ACTIVATIONS:
            raise ValueError(f"GatedRMSNorm: activation={activation!r} is not allowed: one of {list(self.ACTIVATIONS)}")
        self.activation = self.ACTIVATIONS[activation]

    def forward(self, x: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
        return (super().forward(x).float() * self.activation(gate.float())).to(x.dtype)
