"""Shared plumbing of the linear-recurrence ops: argument checks, chunk layout, the chunk-level state scan.

Every op in :mod:`memlm.ops` takes tensors laid out ``[B, T, H, D]`` and an optional ``cu_seqlens``
(cumulative document lengths of a packed row, as in FlashAttention and fla). A state never crosses a
document boundary.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from itertools import pairwise

import torch


def check_linear_inputs(
    op: str,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    gates: dict[str, tuple[torch.Tensor | None, tuple[int, ...]]],
    initial_state: torch.Tensor | None,
    cu_seqlens: torch.Tensor | None,
) -> int:
    """Validate the arguments of a linear-recurrence op and return the number of sequences.

    Args:
        op: name of the op, used in error messages.
        q, k: ``[B, T, H, dk]``; v: ``[B, T, H, dv]``.
        gates: ``name -> (tensor, expected shape)`` for the gate tensors (``g``, ``beta``).
        initial_state: ``[N, H, dk, dv]`` where N is B, or the number of documents with ``cu_seqlens``.
        cu_seqlens: ``[N + 1]`` integer offsets, starting at 0 and ending at T; only with B == 1.

    Raises:
        ValueError: naming the argument, its value and what is allowed.
    """
    if q.dim() != 4:
        raise ValueError(f"{op}: q must be [B, T, H, dk], got shape {tuple(q.shape)}")
    if k.shape != q.shape:
        raise ValueError(f"{op}: k must have q's shape {tuple(q.shape)}, got {tuple(k.shape)}")
    if v.dim() != 4 or v.shape[:3] != q.shape[:3]:
        raise ValueError(f"{op}: v must be [B, T, H, dv] with B, T, H = {tuple(q.shape[:3])}, got {tuple(v.shape)}")
    for name, (tensor, shape) in gates.items():
        if tensor is None:
            raise ValueError(f"{op}: {name} is required, with shape {shape}")
        if tuple(tensor.shape) != shape:
            raise ValueError(f"{op}: {name} must have shape {shape}, got {tuple(tensor.shape)}")
    batch, seq_len, heads, dk = q.shape
    num_seqs = batch
    if cu_seqlens is not None:
        if batch != 1:
            raise ValueError(f"{op}: cu_seqlens needs a batch of one packed row, got batch size {batch}")
        if cu_seqlens.dim() != 1 or cu_seqlens.numel() < 2 or cu_seqlens.dtype.is_floating_point:
            raise ValueError(f"{op}: cu_seqlens must be a 1-D integer tensor [N + 1], got {cu_seqlens!r}")
        offsets = cu_seqlens.tolist()
        if offsets[0] != 0 or offsets[-1] != seq_len or any(b < a for a, b in pairwise(offsets)):
            raise ValueError(
                f"{op}: cu_seqlens must rise from 0 to the sequence length {seq_len}, got {offsets}"
            )
        num_seqs = len(offsets) - 1
    if initial_state is not None:
        expected = (num_seqs, heads, dk, v.shape[-1])
        if tuple(initial_state.shape) != expected:
            raise ValueError(f"{op}: initial_state must have shape {expected}, got {tuple(initial_state.shape)}")
    return num_seqs


class ChunkLayout:
    """Where each token of a ``[B, T]`` batch goes when the sequence is cut into chunks.

    The chunk is ``chunk_size`` tokens, or the smallest power of two (at least 16) that holds the longest
    sequence when that is shorter.

    Every document starts on a fresh chunk and is right-padded to a whole number of chunks. Padded
    positions get zero keys, values and gates (``g = 0``, ``beta = 0``), which leaves the state unchanged,
    so the state after a document's last chunk is its exact final state.
    """

    def __init__(self, batch: int, seq_len: int, chunk_size: int, cu_seqlens: torch.Tensor | None, device):
        longest = seq_len if cu_seqlens is None else int((cu_seqlens[1:] - cu_seqlens[:-1]).max())
        # Short sequences get a smaller chunk (a power of two, at least 16) instead of mostly padding.
        chunk_size = min(chunk_size, max(16, 1 << max(0, longest - 1).bit_length()))
        self.chunk_size = chunk_size
        self.seq_len = seq_len
        if cu_seqlens is None:
            num_chunks = max(1, -(-seq_len // chunk_size))
            self.doc_bounds = [(0, num_chunks)]
            self.token_index = None
            self.padded_len = num_chunks * chunk_size
        else:
            offsets = cu_seqlens.tolist()
            index, bounds, chunk = [], [], 0
            for start, end in pairwise(offsets):
                doc_chunks = max(1, -(-(end - start) // chunk_size))
                index.extend(range(chunk * chunk_size, chunk * chunk_size + end - start))
                bounds.append((chunk, chunk + doc_chunks))
                chunk += doc_chunks
            self.doc_bounds = bounds
            self.token_index = torch.tensor(index, dtype=torch.long, device=device)
            self.padded_len = chunk * chunk_size
        self.num_chunks = self.padded_len // chunk_size

    def pack(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, T, ...] -> [B, num_chunks * chunk_size, ...]`` with zeros at padded positions."""
        if self.token_index is None:
            pad = self.padded_len - self.seq_len
            if pad == 0:
                return x
            return torch.cat([x, x.new_zeros(x.shape[0], pad, *x.shape[2:])], dim=1)
        out = x.new_zeros(x.shape[0], self.padded_len, *x.shape[2:])
        return out.index_copy(1, self.token_index, x)

    def unpack(self, x: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`pack`: ``[B, num_chunks * chunk_size, ...] -> [B, T, ...]``."""
        if self.token_index is None:
            return x[:, : self.seq_len]
        return x.index_select(1, self.token_index)


def to_chunks(x: torch.Tensor, layout: ChunkLayout) -> torch.Tensor:
    """``[B, T, H, *D]`` -> fp32 ``[B, H, N, C, *D]`` (N chunks of C tokens)."""
    x = layout.pack(x.float())
    batch, _, heads = x.shape[:3]
    x = x.view(batch, layout.num_chunks, layout.chunk_size, heads, *x.shape[3:])
    return x.movedim(3, 1)


def from_chunks(x: torch.Tensor, layout: ChunkLayout) -> torch.Tensor:
    """fp32 ``[B, H, N, C, D]`` -> ``[B, T, H, D]``."""
    batch, heads = x.shape[:2]
    x = x.movedim(1, 3).reshape(batch, layout.padded_len, heads, x.shape[-1])
    return layout.unpack(x)


class _ChunkStateScan(torch.autograd.Function):
    """The sequential part of a chunkwise op, with a hand-written backward.

    For each chunk c, with ``S_c`` the state entering it:

        V'_c    = U_c - W_c S_c            (V'_c = U_c when W is None)
        S_{c+1} = a_c * S_c + K_c^T V'_c

    Only the state (forward) and its gradient (backward) are carried sequentially; the gradients of
    U, W, K and a are then formed for all chunks at once with batched matmuls.
    """

    @staticmethod
    def forward(ctx, u, w, k_t, decay, initial_state, layout):
        states, corrected, finals = [], [], []
        for doc, (first, last) in enumerate(layout.doc_bounds):
            state = _entry_state(initial_state, doc, layout, u.shape[0], k_t.shape[-2], u.shape[-1], u)
            for c in range(first, last):
                states.append(state)
                fixed = u[:, :, c] if w is None else u[:, :, c] - w[:, :, c] @ state
                corrected.append(fixed)
                state = decay[:, :, c] * state + k_t[:, :, c] @ fixed
            finals.append(state)
        states, corrected = torch.stack(states, dim=2), torch.stack(corrected, dim=2)
        ctx.save_for_backward(w, k_t, decay, states, corrected)
        ctx.layout, ctx.has_initial_state = layout, initial_state is not None
        return states, corrected, torch.cat(finals, dim=0)

    @staticmethod
    def backward(ctx, d_states, d_corrected, d_final):
        w, k_t, decay, states, corrected = ctx.saved_tensors
        layout = ctx.layout
        d_states = torch.zeros_like(states) if d_states is None else d_states
        d_corrected = torch.zeros_like(corrected) if d_corrected is None else d_corrected
        d_leaving, d_fixed, d_initial = [None] * layout.num_chunks, [None] * layout.num_chunks, []
        for doc, (first, last) in enumerate(layout.doc_bounds):
            if d_final is None:
                grad = torch.zeros_like(states[:, :, first])
            elif layout.token_index is None:
                grad = d_final
            else:
                grad = d_final[doc : doc + 1]
            for c in range(last - 1, first - 1, -1):
                d_leaving[c] = grad
                d_fixed[c] = d_corrected[:, :, c] + k_t[:, :, c].transpose(-1, -2) @ grad
                grad = decay[:, :, c] * grad + d_states[:, :, c]
                if w is not None:
                    grad = grad - w[:, :, c].transpose(-1, -2) @ d_fixed[c]
            d_initial.append(grad)
        d_leaving, d_fixed = torch.stack(d_leaving, dim=2), torch.stack(d_fixed, dim=2)
        d_w = None if w is None else -(d_fixed @ states.transpose(-1, -2))
        d_k_t = d_leaving @ corrected.transpose(-1, -2)
        d_decay = (d_leaving * states).sum(dim=tuple(i for i in (3, 4) if decay.shape[i] == 1), keepdim=True)
        d_init = torch.cat(d_initial, dim=0) if ctx.has_initial_state else None
        return d_fixed, d_w, d_k_t, d_decay, d_init, None


def _entry_state(initial_state, doc, layout, batch, dk, dv, reference):
    """State entering document ``doc``: ``[B, H, dk, dv]`` fp32."""
    heads = reference.shape[1]
    if initial_state is None:
        return reference.new_zeros(batch, heads, dk, dv)
    if layout.token_index is None:
        return initial_state.to(reference.dtype)
    return initial_state[doc : doc + 1].to(reference.dtype)


def scan_chunks(
    u: torch.Tensor,
    w: torch.Tensor | None,
    k_t: torch.Tensor,
    decay: torch.Tensor,
    initial_state: torch.Tensor | None,
    layout: ChunkLayout,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Run the state recurrence across chunks (see :class:`_ChunkStateScan`).

    Args:
        u: ``[B, H, N, C, dv]`` values written by each chunk.
        w: ``[B, H, N, C, dk]`` delta-rule correction (``V' = U - W S``), or None for plain linear attention.
        k_t: ``[B, H, N, dk, C]`` keys, transposed, already decayed to the end of their chunk.
        decay: ``[B, H, N, 1, 1]`` (scalar per head) or ``[B, H, N, dk, 1]`` (per key channel): the decay
            of the whole chunk.
        initial_state: ``[num_seqs, H, dk, dv]`` or None for zeros; each document starts from its own.
        layout: chunk layout of the sequences.

    Returns:
        ``states`` ``[B, H, N, dk, dv]`` (the state entering each chunk), ``corrected`` ``[B, H, N, C, dv]``
        (``V'``), and ``final_state`` ``[num_seqs, H, dk, dv]``.
    """
    if initial_state is not None:
        initial_state = initial_state.float()
    return _ChunkStateScan.apply(u, w, k_t, decay, initial_state, layout)


def recurrent_scan(
    step: Callable[..., torch.Tensor],
    q: torch.Tensor,
    per_token: tuple[torch.Tensor, ...],
    value_dim: int,
    scale: float,
    initial_state: torch.Tensor | None,
    output_final_state: bool,
    cu_seqlens: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Token-by-token recurrence shared by the reference ops; each document restarts from its own state.

    Args:
        step: ``step(state, *token_inputs) -> state`` advances the fp32 state ``[B, H, dk, dv]`` by one
            token; ``token_inputs`` are the slices ``[B, H, ...]`` (fp32) of ``per_token`` at that token.
        q: ``[B, T, H, dk]``; the output is ``o_t = S_t^T (scale * q_t)``.
        per_token: the other ``[B, T, ...]`` inputs (k, v, gates).
        value_dim: dv.

    Returns:
        ``o`` ``[B, T, H, dv]`` in q's dtype and ``final_state`` ``[N, H, dk, dv]`` or None.
    """
    batch, _, heads, dk = q.shape
    outputs, finals = [], []
    docs = zip(*(split_documents(x, cu_seqlens) for x in (q, *per_token)), strict=True)
    for doc, (q_d, *inputs) in enumerate(docs):
        if initial_state is None:
            state = q.new_zeros(q_d.shape[0], heads, dk, value_dim, dtype=torch.float32)
        else:
            state = (initial_state[doc : doc + 1] if cu_seqlens is not None else initial_state).float()
        for t in range(q_d.shape[1]):
            state = step(state, *(x[:, t].float() for x in inputs))
            outputs.append(torch.einsum("bhkv,bhk->bhv", state, q_d[:, t].float() * scale))
        finals.append(state)
    o = torch.stack(outputs, dim=1) if outputs else q.new_zeros(batch, 0, heads, value_dim)
    return o.to(q.dtype), torch.cat(finals, dim=0) if output_final_state else None


def split_documents(x: torch.Tensor, cu_seqlens: torch.Tensor | None) -> list[torch.Tensor]:
    """``[1, T, ...]`` packed row -> list of ``[1, T_i, ...]`` documents (or ``[x]`` without ``cu_seqlens``)."""
    if cu_seqlens is None:
        return [x]
    offsets = cu_seqlens.tolist()
    return [x[:, start:end] for start, end in pairwise(offsets)]


def use_fla(*tensors: torch.Tensor) -> bool:
    """True when the tensors are on CUDA and flash-linear-attention is installed (checked without importing it)."""
    if not all(t.is_cuda for t in tensors):
        return False
    import importlib.util

    return importlib.util.find_spec("fla") is not None


def fla_gated_backward_is_broken(capability: tuple[int, int], triton_version: str, has_tilelang: bool) -> bool:
    """Whether fla refuses the backward pass of its gated chunk kernels here: on Hopper GPUs (compute
    capability 9.x) Triton 3.4.0 to 3.7.0 miscompiles fla's gated ``chunk_bwd_dqkwg`` (fla issue #640), and fla
    raises a RuntimeError in the backward pass unless tilelang is installed to replace the kernel."""
    from packaging.version import Version

    version = Version(triton_version.split("+")[0])
    return capability[0] == 9 and Version("3.4.0") <= version < Version("3.7.1") and not has_tilelang


@functools.cache
def _fla_gated_backward_is_broken_on(device_index: int) -> bool:
    import importlib.util
    import warnings

    import triton

    broken = fla_gated_backward_is_broken(torch.cuda.get_device_capability(device_index), triton.__version__,
                                          importlib.util.find_spec("tilelang") is not None)
    if broken:
        warnings.warn(
            f"memlm: fla cannot train the gated delta rule on this GPU with Triton {triton.__version__} (fla issue "
            "#640: Hopper, Triton 3.4.0 to 3.7.0); memlm uses its own torch kernel when gradients are needed. "
            "Install Triton >= 3.7.1 or tilelang to train with fla's kernel.", stacklevel=3,
        )
    return broken


def needs_backward(*tensors: torch.Tensor | None) -> bool:
    """Whether autograd will differentiate through an op on these tensors (None entries, such as a missing
    initial state, are skipped)."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def use_fla_gated_chunk(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *inputs: torch.Tensor | None) -> bool:
    """:func:`use_fla` for ``q, k, v``, except where a backward pass through them or ``inputs`` (gates, initial
    state) will be needed and fla refuses it on this GPU (:func:`fla_gated_backward_is_broken`); the forward
    pass alone (inference) always goes to fla."""
    if not use_fla(q, k, v):
        return False
    return not (needs_backward(q, k, v, *inputs) and _fla_gated_backward_is_broken_on(q.device.index or 0))


def roll_rows(x: torch.Tensor, shifts: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """Roll every row ``b`` of ``x`` (batch first) by ``shifts[b]`` along ``dim``."""
    length = x.shape[dim]
    index = (torch.arange(length, device=x.device)[None, :] - shifts[:, None]) % length  # [B, T]
    shape = [x.shape[0]] + [1] * (x.dim() - 1)
    shape[dim] = length
    return x.gather(dim, index.view(shape).expand_as(x))


def left_pad_shifts(mask: torch.Tensor | None) -> torch.Tensor | None:
    """For a ``[B, T]`` 0/1 mask, the per-row shifts that move left pads to the right (None if no row has any).

    Raises ValueError for a row padded on both sides.
    """
    if mask is None:
        return None
    real = mask.long().sum(-1)
    left_padded = (mask[:, 0] == 0) & (real > 0)
    if bool((left_padded & (mask[:, -1] == 0)).any()):
        raise ValueError("attention_mask: the pads of a row must all be on its left or all on its right")
    if not bool(left_padded.any()):
        return None
    return torch.where(left_padded, real - mask.shape[1], torch.zeros_like(real))

