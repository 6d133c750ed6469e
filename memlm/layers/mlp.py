"""The feed-forward block of every decoder layer."""

from __future__ import annotations

import torch
from torch import nn
from transformers.activations import ACT2FN


class SwiGLUMLP(nn.Module):
    """``down(act(gate(x)) * up(x))``. Input and output ``[B, T, hidden_size]``."""

    def __init__(self, hidden_size: int, intermediate_size: int, hidden_act: str = "silu"):
        super().__init__()
        self.gate_proj = nn.Linear(hidden_size, intermediate_size, bias=False)
        self.up_proj = nn.Linear(hidden_size, intermediate_size, bias=False)
        self.down_proj = nn.Linear(intermediate_size, hidden_size, bias=False)
        self.act_fn = ACT2FN[hidden_act]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))
