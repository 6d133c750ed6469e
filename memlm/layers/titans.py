"""The Titans architectures as memlm layer types (arXiv 2501.00663, section 4).

``"memory"`` (LMM)            y = Memory(x)                       the memory alone; followed by a
                                                                   ``"sliding_attention"`` layer it is MAL
``"memory_as_gate"`` (MAG)    y = W_o (norm(SWA(x)) * sigmoid(norm(Memory(x))))
                                                                   sliding-window attention gated by the memory
``"memory_as_context"`` (MAC) per segment S (= ``memory_chunk_size`` tokens):
                                h = M*_{before S}(W_r x)            retrieve with the memory as it stood
                                y = Attn([persistent, h, S])        attention inside the segment
                                m = Memory(y)                       update the memory with y, read it again
                                out = W_o (y * sigmoid(norm(m)))

Attention in MAC is causal over both streams (query i sees retrievals and tokens j <= i of its segment),
so no token sees a later one. Persistent memory tokens (``num_persistent_memory_tokens``) are learned
vectors every attention query sees and, for the memory, a prefix read before the sequence.
The state of a layer (memory weights, momentum, conv window, key/value window) lives in its
:class:`~memlm.layers.memory_cache.MemoryCacheLayer`, so ``generate()`` continues the memory exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from memlm.layers.inputs import MixerInputs
from memlm.layers.memory_cache import memory_cache_layer
from memlm.layers.neural_memory import MemoryBranchState, NeuralMemory, memory_rule
from memlm.layers.norm import RMSNorm
from memlm.layers.padding import RecurrentMixer, left_pad_shifts, roll_rows
from memlm.layers.registry import register_mixer
from memlm.layers.window_attention import WindowAttention, WindowState

MEMORY_CACHE = "memory weights, momentum and conv window (a MemoryCacheLayer)"


def neural_memory_from_config(config) -> NeuralMemory:
    """The memory branch described by a :class:`~memlm.MemLMConfig`'s ``memory_*`` fields."""
    return NeuralMemory(
        config.hidden_size,
        config.memory_num_heads,
        chunk_size=config.memory_chunk_size,
        head_dim=config.memory_head_dim,
        rule=memory_rule(config.memory_preset, config.memory_rule),
        conv_kernel_size=config.linear_conv_kernel_dim,
        max_lr=config.memory_max_lr,
        norm_eps=config.rms_norm_eps,
        num_persistent=config.num_persistent_memory_tokens,
        recompute_chunks=config.memory_recompute_chunks,
    )


@dataclass
class AttentionMemoryState:
    """State of MAG and MAC: the attention's key/value window and the memory branch."""

    attention: WindowState | None
    memory: MemoryBranchState

    def map(self, fn) -> AttentionMemoryState:
        return AttentionMemoryState(None if self.attention is None else self.attention.map(fn), self.memory.map(fn))


def documents_as_rows(x: torch.Tensor, cu_seqlens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A packed row ``[1, N, ...]`` -> right-padded documents ``[D, L, ...]`` and their ``[D, L]`` 0/1 mask."""
    lengths = cu_seqlens.diff()
    mask = torch.arange(int(lengths.max()), device=x.device)[None, :] < lengths[:, None]
    rows = x.new_zeros(len(lengths), mask.shape[1], *x.shape[2:])
    rows[mask] = x[0]
    return rows, mask.long()


class MemoryMixer(RecurrentMixer):
    """Shared entry point of the memory mixers: cache lookup, padding mask and packed documents.

    Subclasses implement ``run(hidden_states, mask, position_embeddings, state) -> (out, new_state)``.
    With packed training rows (``inputs.cu_seqlens``) every document runs as its own right-padded row, so no
    memory, conv window or attention crosses a document boundary.
    """

    def mix(self, hidden_states: torch.Tensor, mask: torch.Tensor | None, inputs: MixerInputs) -> torch.Tensor:
        if inputs.cu_seqlens is not None:
            rows, mask = documents_as_rows(hidden_states, inputs.cu_seqlens)
            cos, sin = (documents_as_rows(t, inputs.cu_seqlens)[0] for t in inputs.position_embeddings)
            out, _ = self.run(rows, mask, (cos, sin), None)
            return out[mask.bool()][None]
        layer = memory_cache_layer(inputs.cache, self.layer_idx)
        out, state = self.run(hidden_states, mask, inputs.position_embeddings,
                              layer.state if layer is not None else None)
        if layer is not None:
            layer.update_state(state, hidden_states.shape[1])
        return out


@register_mixer("memory", "linear_attention", MEMORY_CACHE)
class MemoryLayer(MemoryMixer):
    """LMM: ``hidden_states [B, T, hidden] -> [B, T, hidden]`` through the neural memory alone."""

    def __init__(self, config, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.memory = neural_memory_from_config(config)

    def run(self, hidden_states, mask, position_embeddings, state):
        return self.memory(hidden_states, state, mask)


@register_mixer("memory_as_gate", "linear_attention", f"{MEMORY_CACHE} + the attention's key/value window")
class MemoryAsGate(MemoryMixer):
    """MAG: sliding-window attention (``config.sliding_window``) and the memory, combined by a normalized gate."""

    def __init__(self, config, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.attention = WindowAttention(
            config, window=config.sliding_window, num_persistent=config.num_persistent_memory_tokens
        )
        self.memory = neural_memory_from_config(config)
        self.attention_norm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.memory_norm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.out_proj = nn.Linear(config.hidden_size, config.hidden_size, bias=False)

    def run(self, hidden_states, mask, position_embeddings, state):
        attended, window = self.attention(
            hidden_states, position_embeddings, mask, state.attention if state is not None else None
        )
        remembered, memory = self.memory(hidden_states, state.memory if state is not None else None, mask)
        out = self.out_proj(self.attention_norm(attended) * torch.sigmoid(self.memory_norm(remembered)))
        return out, AttentionMemoryState(window, memory)


@register_mixer("memory_as_context", "linear_attention", f"{MEMORY_CACHE} + the segment's keys/values")
class MemoryAsContext(MemoryMixer):
    """MAC: segments of ``config.memory_chunk_size`` tokens attend to the memory's retrievals as context."""

    def __init__(self, config, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.segment = config.memory_chunk_size
        self.memory = neural_memory_from_config(config)
        inner = self.memory.num_heads * self.memory.head_dim
        self.retrieval_proj = nn.Linear(config.hidden_size, inner, bias=False)
        self.retrieval_out = nn.Linear(inner, config.hidden_size, bias=False)
        self.attention = WindowAttention(
            config, segment=self.segment, num_persistent=config.num_persistent_memory_tokens
        )
        self.memory_norm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.out_proj = nn.Linear(config.hidden_size, config.hidden_size, bias=False)

    def _segment(self, x, position_embeddings, mask, state: AttentionMemoryState):
        """One segment (or the tokens of one, all in the same segment): retrieve, attend, memorize, read."""
        retrieved = self.retrieval_out(self.memory.retrieve(self.retrieval_proj(x), state.memory))
        attended, window = self.attention(x, position_embeddings, mask, state.attention, extra_keys=retrieved)
        remembered, memory = self.memory(attended, state.memory, mask)
        out = self.out_proj(attended * torch.sigmoid(self.memory_norm(remembered)))
        return out, AttentionMemoryState(window, memory)

    def run(self, hidden_states, mask, position_embeddings, state):
        batch, length, _ = hidden_states.shape
        if state is None:
            state = AttentionMemoryState(None, self.memory.initial_state(batch))
        cos, sin = position_embeddings
        cos, sin = cos.expand(batch, -1, -1), sin.expand(batch, -1, -1)
        seen = state.memory.memory.seen
        if length > 1 and bool((seen % self.segment == 0).all()):
            # whole segments: left pads move to the end so every row's segments start at its first token
            shifts = left_pad_shifts(mask)
            if shifts is not None:
                hidden_states, mask = roll_rows(hidden_states, shifts), roll_rows(mask, shifts)
                cos, sin = roll_rows(cos, shifts), roll_rows(sin, shifts)
            pieces = range(0, length, self.segment)
            spans = [slice(start, start + self.segment) for start in pieces]
        else:  # inside a segment (decoding): token by token
            shifts, spans = None, [slice(t, t + 1) for t in range(length)]
        outs = []
        for span in spans:
            out, state = self._segment(
                hidden_states[:, span], (cos[:, span], sin[:, span]), mask[:, span] if mask is not None else None,
                state,
            )
            outs.append(out)
        out = torch.cat(outs, dim=1)
        if shifts is not None:
            out = roll_rows(out, -shifts)
        return out, state
