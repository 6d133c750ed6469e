"""Titans' neural long-term memory as an ``nn.Module`` (arXiv 2501.00663, section 3; Miras, arXiv 2504.13173).

    q, k, v = SiLU(ShortConv([W_q x, W_k x, W_v x]))               one depthwise conv over q|k|v
    q, k    = q / ||q||, k / ||k||                                  per head
    theta_t = max_lr * sigmoid(w_theta x_t)                         learning rate     (per head)
    alpha_t = sigmoid(w_alpha x_t),  eta_t = sigmoid(w_eta x_t)     forgetting, momentum
    delta_t = softplus(w_delta x_t)                                 Huber threshold (Yaad only)
    o       = neural_memory(q, k, v, theta, alpha, eta)             memlm.ops.neural_memory, (1)-(5)
    y       = W_out(RMSNorm(o) * SiLU(W_z x))                       gated output projection

The memory's initial weights ``M_0`` (one MLP per head) are learned by the outer optimizer; the inner
update then trains a copy of them on the sequence. The state (memory weights, momentum, conv window)
is explicit: ``forward`` takes the state left by earlier tokens and returns the new one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
from torch import nn
from torch.nn import functional as F
from transformers import initialization as init

from memlm.layers.gated_deltanet import l2_normalize
from memlm.layers.norm import GatedRMSNorm
from memlm.layers.padding import left_pad_shifts, roll_rows
from memlm.layers.short_conv import ShortConvolution
from memlm.ops.neural_memory import (
    PRESETS,
    MemoryRule,
    MemoryState,
    chunk_neural_memory,
    initial_state,
    memory_forward,
    readout,
    recurrent_neural_memory,
)


def memory_rule(preset: str, overrides: dict | None = None) -> MemoryRule:
    """The :class:`MemoryRule` of a preset (``titans``, ``moneta``, ``yaad``, ``memora``) with field overrides."""
    if preset not in PRESETS:
        raise ValueError(f"memory preset {preset!r} is unknown; allowed: {sorted(PRESETS)}")
    overrides = dict(overrides or {})
    fields = sorted(MemoryRule.__dataclass_fields__)
    unknown = sorted(set(overrides) - set(fields))
    if unknown:
        raise ValueError(f"memory rule fields {unknown} are unknown; allowed: {fields}")
    return replace(PRESETS[preset], **overrides)


@dataclass
class MemoryBranchState:
    """``conv``: ``[B, 3 H d, K-1]`` last inputs of the short conv; ``memory``: the memory's state."""

    conv: torch.Tensor
    memory: MemoryState

    def map(self, fn) -> MemoryBranchState:
        return MemoryBranchState(fn(self.conv), self.memory.map(fn))


class NeuralMemory(nn.Module):
    """``x [B, T, hidden] -> (y [B, T, hidden], state)``: read and train the memory on ``x``.

    Args:
        hidden_size: model width. num_heads: memory heads, each an independent MLP over ``head_dim``.
        chunk_size: tokens per mini-batch of the inner gradient descent.
        rule: a :class:`MemoryRule` or a preset name. max_lr: the largest inner learning rate (default: the
            rule's ``max_lr``). recompute_chunks: trade one more forward for keeping only chunk-boundary states.
        num_persistent: learned persistent-memory tokens read before the sequence.
    """

    def __init__(
        self,
        hidden_size: int,
        num_heads: int,
        chunk_size: int = 64,
        head_dim: int | None = None,
        rule: MemoryRule | str = "titans",
        conv_kernel_size: int = 4,
        max_lr: float | None = None,
        norm_eps: float = 1e-6,
        num_persistent: int = 0,
        recompute_chunks: bool = False,
    ):
        super().__init__()
        self.rule = memory_rule(rule) if isinstance(rule, str) else rule
        self.num_heads = num_heads
        self.head_dim = head_dim or hidden_size // num_heads
        self.chunk_size = chunk_size
        self.max_lr = max_lr if max_lr is not None else self.rule.max_lr
        self.recompute_chunks = recompute_chunks
        inner = num_heads * self.head_dim
        self.qkv_proj = nn.Linear(hidden_size, 3 * inner, bias=False)
        self.conv = ShortConvolution(3 * inner, conv_kernel_size)
        self.num_gates = 4 if self.rule.attentional_bias == "huber" else 3
        self.gate_proj = nn.Linear(hidden_size, self.num_gates * num_heads, bias=False)
        self.gate_bias = nn.Parameter(torch.zeros(self.num_gates * num_heads))
        self.initial_params = nn.ParameterList(
            nn.Parameter(torch.empty(num_heads, out, inp)) for out, inp in self.rule.shapes(self.head_dim)
        )
        self.z_proj = nn.Linear(hidden_size, inner, bias=False)
        self.norm = GatedRMSNorm(self.head_dim, eps=norm_eps)
        self.out_proj = nn.Linear(inner, hidden_size, bias=False)
        self.persistent = nn.Parameter(torch.randn(num_persistent, hidden_size) * 0.02) if num_persistent else None
        self.init_mixer_weights()

    @torch.no_grad()
    def init_mixer_weights(self) -> None:
        """Memory weights ``f(P_0)`` with He scale ``sqrt(2 / fan_in)`` before a GELU and ``sqrt(1 / fan_in)`` on
        the last matrix (``kl``: standard normal logits), so a deep memory's output is not vanishingly small
        (its LayerNorm would amplify rounding); gates start at ``theta = max_lr/2``, ``alpha ~ 2.5e-3``,
        ``eta ~ 0.9`` and (Huber) ``delta ~ 1``."""
        last = len(self.initial_params) - 1
        for i, p in enumerate(self.initial_params):
            if self.rule.retention == "kl":  # random logits: equal rows would stay equal under every update
                init.normal_(p)
                continue
            target = ((1.0 if i == last else 2.0) / p.shape[-1]) ** 0.5
            sample = torch.randn_like(p)
            # f(c P) = c f(P) (up to the smoothing of |.|): scale so that the weights f(P) hit the target
            init.copy_(p, sample * (target / readout(sample, self.rule).std()))
        if self.persistent is not None:
            init.normal_(self.persistent, std=0.02)
        bias = torch.zeros(self.num_gates, self.num_heads)
        bias[1], bias[2] = -6.0, 2.0
        if self.num_gates == 4:
            bias[3] = math.log(math.e - 1)
        init.copy_(self.gate_bias, bias.flatten())

    def initial_state(self, batch: int) -> MemoryBranchState:
        """The state before the first token: ``M_0``, or ``M_0`` after reading the persistent tokens (Titans'
        persistent memory, read as a prefix; the sequence then starts a fresh chunk)."""
        conv = self.qkv_proj.weight.new_zeros(batch, self.qkv_proj.out_features, self.conv.kernel_size - 1)
        state = MemoryBranchState(conv, initial_state(list(self.initial_params), self.rule, batch))
        if self.persistent is None:
            return state
        _, state = self(self.persistent[None].expand(batch, -1, -1), state)
        memory = state.memory
        fresh = MemoryState(memory.params, memory.momentum, list(memory.params), torch.zeros_like(memory.seen))
        return MemoryBranchState(state.conv, fresh)

    def retrieve(self, q: torch.Tensor, state: MemoryBranchState) -> torch.Tensor:
        """``M*(q)`` without update, with the weights at the start of the current chunk (MAC's retrieval).

        ``q [B, T, H * d]`` (normalized per head here) -> ``[B, T, H * d]``; the ``T`` tokens read the same weights.
        """
        batch, length, _ = q.shape
        q = l2_normalize(q.view(batch, length, self.num_heads, self.head_dim)).transpose(1, 2)
        weights = [readout(p, self.rule) for p in state.memory.current_chunk_start(self.chunk_size)]
        out = memory_forward(weights, q.to(weights[0].dtype), self.rule)
        return out.transpose(1, 2).reshape(batch, length, -1).to(q.dtype)

    def forward(
        self,
        x: torch.Tensor,
        state: MemoryBranchState | None = None,
        mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, MemoryBranchState]:
        """``x [B, T, hidden]``, ``mask [B, T]`` (1 = token; pads left or right) -> ``(y [B, T, hidden], state)``."""
        batch, length, _ = x.shape
        shifts = left_pad_shifts(mask)  # left pads move to the right: conv and chunks start at the first token
        if shifts is not None:
            x, mask = roll_rows(x, shifts), roll_rows(mask, shifts)
        if mask is not None:
            x = x * mask[..., None].to(x.dtype)
        state = state if state is not None else self.initial_state(batch)
        projected = self.qkv_proj(x)
        qkv, conv_state = self.conv.with_state(projected, state.conv)
        if mask is not None and bool((mask[:, -1] == 0).any()):  # right pads: keep the last real inputs
            window = torch.cat([state.conv, projected.transpose(1, 2)], dim=-1)
            real = mask.long().sum(-1)
            columns = real[:, None] + torch.arange(conv_state.shape[-1], device=x.device)[None, :]
            conv_state = window.gather(2, columns[:, None, :].expand(-1, window.shape[1], -1))
        q, k, v = (t.view(batch, length, self.num_heads, self.head_dim) for t in qkv.chunk(3, dim=-1))
        q, k = l2_normalize(q), l2_normalize(k)
        gates = (self.gate_proj(x) + self.gate_bias).float()
        gates = gates.view(batch, length, self.num_gates, self.num_heads).permute(2, 0, 1, 3)  # [gate, B, T, H]
        theta = self.max_lr * torch.sigmoid(gates[0])
        log_a = F.logsigmoid(-gates[1]) if self.rule.forgetting else torch.zeros_like(theta)  # log(1 - alpha)
        log_eta = F.logsigmoid(gates[2])
        huber_delta = F.softplus(gates[3]) if self.num_gates == 4 else None
        args = (self.rule, self.chunk_size)
        memory = state.memory
        if bool((memory.seen % self.chunk_size == 0).all()):
            o, memory = chunk_neural_memory(q, k, v, theta, log_a, log_eta, memory, *args, huber_delta, mask,
                                            recompute_chunks=self.recompute_chunks)
        else:  # continuing inside a chunk: token by token, exactly as the chunked pass would
            outs = []
            for t in range(length):
                step = slice(t, t + 1)
                o_t, memory = recurrent_neural_memory(
                    q[:, step], k[:, step], v[:, step], theta[:, step], log_a[:, step],
                    log_eta[:, step], memory, *args,
                    huber_delta[:, step] if huber_delta is not None else None,
                    mask[:, step] if mask is not None else None,
                )
                outs.append(o_t)
            o = torch.cat(outs, dim=1)
        z = self.z_proj(x).view(batch, length, self.num_heads, self.head_dim)
        y = self.out_proj(self.norm(o, z).reshape(batch, length, -1))
        if shifts is not None:
            y = roll_rows(y, -shifts)
        return y, MemoryBranchState(conv_state, memory)
