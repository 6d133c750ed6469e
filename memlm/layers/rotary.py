"""Rotary position embeddings (RoPE), with transformers' scaled variants (linear, dynamic, yarn, llama3, ...).

Partial rotary (``rope_parameters["partial_rotary_factor"] = f``, as Qwen3.5 and Qwen3-Next): only the first
``d = int(head_dim * f)`` channels of each head rotate, the other ``head_dim - d`` pass through unchanged; cos/sin
are ``d`` wide. transformers' scaled initializers (``ROPE_INIT_FUNCTIONS``) read the same factor themselves.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS, dynamic_rope_update


class RotaryEmbedding(nn.Module):
    """``position_ids [B, T] -> (cos, sin)``, each ``[B, T, rotary_dim]`` (:func:`rotary_channels`; ``head_dim``
    unless partial), shared by all attention layers."""

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.rope_type = config.rope_parameters.get("rope_type", "default")
        self.max_seq_len_cached = self.original_max_seq_len = config.max_position_embeddings
        if self.rope_type == "default":
            self.rope_init_fn = self.compute_default_rope_parameters
        else:
            self.rope_init_fn = ROPE_INIT_FUNCTIONS[self.rope_type]
        inv_freq, self.attention_scaling = self.rope_init_fn(config)
        self.register_buffer("inv_freq", inv_freq, persistent=False)
        self.register_buffer("original_inv_freq", inv_freq.clone(), persistent=False)

    @staticmethod
    def compute_default_rope_parameters(config, device=None, **kwargs) -> tuple[torch.Tensor, float]:
        """Inverse frequencies ``theta^(-2i/d)``, ``d = rotary_channels(config)``, of the original RoPE, and an
        attention scaling of 1."""
        base = config.rope_parameters["rope_theta"]
        dim = rotary_channels(config)
        return 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.float, device=device) / dim)), 1.0

    @torch.no_grad()
    @dynamic_rope_update
    def forward(self, x: torch.Tensor, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        freqs = position_ids[..., None].float() * self.inv_freq.to(x.device)
        emb = torch.cat((freqs, freqs), dim=-1)
        cos, sin = emb.cos() * self.attention_scaling, emb.sin() * self.attention_scaling
        return cos.to(x.dtype), sin.to(x.dtype)


def rotary_channels(config) -> int:
    """The channels of each attention head that RoPE rotates: the first ``int(head_dim * partial_rotary_factor)``
    (all ``head_dim`` by default; the factor lives in ``config.rope_parameters``, where transformers keeps it)."""
    parameters = config.rope_parameters if isinstance(config.rope_parameters, dict) else {}
    return int(config.head_dim * parameters.get("partial_rotary_factor", 1.0))


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate ``x [B, H, T, D]`` by position, ``cos``/``sin`` ``[B, T, d]`` with ``d <= D``: the first ``d``
    channels become ``x * cos + rotate_half(x) * sin``, the last ``D - d`` pass through (partial rotary)."""
    rotary_dim = cos.shape[-1]
    rotated = x[..., :rotary_dim] * cos.unsqueeze(1) + rotate_half(x[..., :rotary_dim]) * sin.unsqueeze(1)
    return rotated if rotary_dim == x.shape[-1] else torch.cat((rotated, x[..., rotary_dim:]), dim=-1)
