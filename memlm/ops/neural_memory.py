"""Neural long-term memory trained at test time: Titans (arXiv 2501.00663) and Miras (arXiv 2504.13173).

Per head, the memory ``M`` is an MLP of depth 1 to 4 over head vectors of size ``d`` (depth 1 is a
linear memory ``M(x) = W x``). It is trained online on an associative loss while the sequence is read:

    loss_t = ell(M_{t-1}(k_t), v_t)                                  attentional bias       (1)
    S_t    = eta_t S_{t-1} - theta_t grad_W loss_t                    momentum               (2)
    P_t    = a_t P_{t-1} + S_t,   a_t = 1 - alpha_t                   forgetting (retention) (3)
    W_t    = f(P_t)                                                   retention readout      (4)
    y_t    = M_{W_t}(q_t)                                             retrieval, no update   (5)

``P`` is the accumulated parameter; the retention choice fixes ``f``: ``l2`` (weight decay, Titans)
``f(P) = P``; ``lq`` (Moneta) the mirror map of the regularizer ``1/2 ||W||_q^2`` (follow-the-regularized-
leader, Miras section 5.2) ``f(A) = Sign(A) |A|^(r-1) / ||A||_r^(r-2)``, ``r = q / (q - 1)``, with the smooth
``|x| ~ sqrt(x^2 + eps)``; ``kl`` (Memora, eq. 21) ``f(L) = c softmax(L)`` over each row with ``c`` the fan-in,
so (3) is ``log W_t = a_t log W_{t-1} - theta_t grad`` up to the row normalizer. With algorithm ``gd`` there
is no momentum (``eta = 0``, ``S_t = -theta_t grad``).

Moneta's printed shorthand ``W = A / ||A||_q^(q-2)`` is homogeneous of degree ``3 - q`` (-1 for q = 4): its
weights shrink as ``A`` grows, so the memory cannot store, and grow without bound as retention shrinks ``A``.
The mirror map is degree 1 and stores (measurements: docs/guides/titans.md).

Chunk-parallel training (Titans section 3.2): the sequence is cut into chunks of ``C`` tokens and every
gradient of a chunk is taken at the chunk's starting weights ``W_{t'}`` (``t'`` the chunk start). The
gradient of one token is rank one per matrix, ``grad_{W_l} = delta_l h_{l-1}^T`` (back-propagated error
times layer input), and (2)-(3) are linear, so inside a chunk, with ``A_t = prod a``, ``E_t = prod eta``
(products from the chunk start):

    P_t = A_t P_0 + m_t S_0 - sum_{s<=t} c_ts delta_s h_s^T                                    (6)
    m_t = sum_{r<=t} (A_t / A_r) E_r,   c_ts = theta_s sum_{s<=r<=t} (A_t / A_r) (E_r / E_s)     (7)

(``c = (D @ F) * theta`` with ``D_tr = A_t / A_r``, ``F_rs = E_r / E_s``, lower-triangular, computed from
differences of cumulative logs so nothing overflows). For ``l2`` retention the retrieval (5) through
layer ``l`` never forms ``W_t``:

    W_t x = A_t (P_0 x) + m_t (S_0 x) - sum_{s<=t} c_ts (h_s . x) delta_s                       (8)

an attention-like product inside the chunk, so no weight copy exists per token or per chunk beyond the
chunk-boundary state. ``lq`` and ``kl`` apply a non-linear ``f`` to ``P_t``; the algebra does not avoid
``P_t`` there, and those retentions form ``P_t`` for the tokens of one chunk at a time.

Pads (``mask = 0``) are exact no-ops: ``theta = 0``, ``a = eta = 1`` and they add no momentum to ``P``.
They must come after a row's real tokens, so that the chunk grid starts at the row's first real token and a
padded row computes exactly what the row computes alone; a layer moves left pads there first
(:mod:`memlm.layers.padding`).

The ops follow fla's naming and layout: :func:`chunk_neural_memory` (training, prefill),
:func:`recurrent_neural_memory` (one token, decoding), :func:`naive_neural_memory` (the reference); inputs
``[B, T, H, d]`` and gates ``[B, T, H]``; the state's tensors are ``[B, H, out, in]``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch.nn import functional as F
from torch.utils.checkpoint import checkpoint

ATTENTIONAL_BIASES = ("l2", "lp", "huber", "dot")
RETENTIONS = ("l2", "lq", "kl")
ALGORITHMS = ("gd", "gd_momentum")


@dataclass(frozen=True)
class MemoryRule:
    """The Miras choices of one memory (see the module docstring).

    attentional_bias: ``l2`` ``1/2 ||r||^2``; ``lp`` ``1/p sum |r|^p`` with the smooth ``Sign(x) ~ tanh(a x)``
        and ``|x| ~ sqrt(x^2 + eps)`` (gradient ``Sign(r) |r|^(p-1)``); ``huber`` ``H_delta(||r||)`` with a
        learned, per-token ``delta_t`` (Miras eq. 15): gradient ``r`` when ``||r|| <= delta_t``, else
        ``delta_t r / ||r||``, continuous at the threshold; ``dot`` ``-<M(k), v>`` (gradient ``-v``,
        Hebbian). ``r = M(k) - v``.
    retention: ``l2``, ``lq`` (with ``q``) or ``kl``; algorithm ``gd`` or ``gd_momentum``.
    depth: MLP depth (1 = linear memory ``W x``); ``expansion`` the hidden width factor of deeper MLPs;
        ``residual``: ``M(x) = x + LN(MLP(x))`` (Miras' memory; needs ``depth >= 2``). ``norm_eps``: that
        LayerNorm's epsilon, 1.0 by default: LN makes the memory's output blind to the scale of its weights,
        so as retention shrinks them the inner step grows like ``1 / var(MLP(x))``; with the usual 1e-5 the
        inner dynamics turn chaotic, with 1.0 the amplification is bounded (docs/guides/titans.md).
    forgetting: False removes the forgetting gate (``alpha = 0``), the Titans ablation.
    grad_clip: each token's gradient (all matrices together) is scaled to Frobenius norm <= ``grad_clip``
        (default 10) before it enters (2) (titans-pytorch's ``max_grad_norm``); None turns it off. It keeps
        the inner descent finite while the outer training grows the memory (why 10: docs/guides/titans.md,
        Stability).
    max_lr: the ceiling of the data-dependent inner learning rate ``theta_t`` (default 0.03). Measured: a 4-layer
        Titans LMM (depth-2 MLP memory, momentum) trained on passkey rows with AdamW lr 3e-3 produced inf/NaN
        within 12-50 outer steps at 0.1 (the outer updates grow the memory's weights until the inner descent
        diverges), and trained without at 0.03. Moneta's is 0.01: its mirror map enlarges steps on small
        entries, and at 0.1 its inner dynamics diverge within 4k tokens.
    """

    attentional_bias: str = "l2"
    retention: str = "l2"
    algorithm: str = "gd_momentum"
    depth: int = 2
    expansion: float = 2.0
    residual: bool = False
    p: float = 2.0
    q: float = 2.0
    sign_sharpness: float = 10.0
    abs_eps: float = 1e-6
    norm_eps: float = 1.0
    max_lr: float = 0.03
    grad_clip: float | None = 10.0
    forgetting: bool = True

    def __post_init__(self):
        def refuse(name, value, allowed):
            raise ValueError(f"MemoryRule.{name}={value!r} is not allowed: {allowed}")

        if self.attentional_bias not in ATTENTIONAL_BIASES:
            refuse("attentional_bias", self.attentional_bias, f"one of {ATTENTIONAL_BIASES}")
        if self.retention not in RETENTIONS:
            refuse("retention", self.retention, f"one of {RETENTIONS}")
        if self.algorithm not in ALGORITHMS:
            refuse("algorithm", self.algorithm, f"one of {ALGORITHMS}")
        if not (isinstance(self.depth, int) and 1 <= self.depth <= 4):
            refuse("depth", self.depth, "an integer from 1 (linear memory) to 4")
        if self.expansion <= 0:
            refuse("expansion", self.expansion, "a positive width factor")
        if self.residual and self.depth < 2:
            refuse("residual", self.residual, "True only with depth >= 2 (a residual MLP; a linear memory has none)")
        if self.attentional_bias == "lp" and self.p < 1:
            refuse("p", self.p, "p >= 1 for the lp attentional bias (p < 1 has no descent direction)")
        if self.retention == "lq" and self.q <= 1:
            refuse("q", self.q, "q > 1 for the lq retention (the regularizer 1/2 ||W||_q^2, dual exponent q/(q-1))")
        if self.norm_eps <= 0:
            refuse("norm_eps", self.norm_eps, "a positive LayerNorm epsilon")
        if self.max_lr <= 0:
            refuse("max_lr", self.max_lr, "a positive inner learning rate")
        if self.grad_clip is not None and self.grad_clip <= 0:
            refuse("grad_clip", self.grad_clip, "a positive gradient norm, or None for no clipping")
        if self.retention == "kl" and self.attentional_bias == "dot":
            refuse("attentional_bias", self.attentional_bias,
                   "l2, lp or huber with the kl retention (a dot bias drives softmax rows to one-hot)")

    def hidden_size(self, head_dim: int) -> int:
        return max(1, round(head_dim * self.expansion))

    def shapes(self, head_dim: int) -> list[tuple[int, int]]:
        """``[(out, in)]`` of the memory's matrices for head vectors of ``head_dim``."""
        if self.depth == 1:
            return [(head_dim, head_dim)]
        hidden = self.hidden_size(head_dim)
        return [(hidden, head_dim)] + [(hidden, hidden)] * (self.depth - 2) + [(head_dim, hidden)]


PRESETS = {
    "titans": MemoryRule(attentional_bias="l2", retention="l2", algorithm="gd_momentum", depth=2),
    "moneta": MemoryRule(attentional_bias="lp", p=3.0, retention="lq", q=4.0, algorithm="gd", depth=2,
                         residual=True, max_lr=0.01),
    "yaad": MemoryRule(attentional_bias="huber", retention="l2", algorithm="gd", depth=2, residual=True),
    "memora": MemoryRule(attentional_bias="l2", retention="kl", algorithm="gd", depth=2, residual=True),
}


@dataclass
class MemoryState:
    """Where a memory stands after some tokens; tensors ``[B, H, out, in]`` per memory matrix.

    ``params``: ``P`` of (3); ``momentum``: ``S`` of (2) (None for ``gd``); ``chunk_start``: ``P`` at the
    start of the current chunk (gradients are taken there); ``seen``: ``[B]`` real tokens read.
    """

    params: list[torch.Tensor]
    momentum: list[torch.Tensor] | None
    chunk_start: list[torch.Tensor]
    seen: torch.Tensor

    def current_chunk_start(self, chunk_size: int) -> list[torch.Tensor]:
        """``P`` at the start of the chunk the next token falls in: ``params`` for a row at a chunk boundary."""
        boundary = (self.seen % chunk_size == 0).view(-1, 1, 1, 1)
        return [torch.where(boundary, p, s) for p, s in zip(self.params, self.chunk_start, strict=True)]

    def map(self, fn) -> MemoryState:
        """A state with ``fn`` applied to every tensor (batch selection, repeat, device moves)."""
        return MemoryState(
            [fn(p) for p in self.params],
            None if self.momentum is None else [fn(s) for s in self.momentum],
            [fn(p) for p in self.chunk_start],
            fn(self.seen),
        )


def _at_least_fp32(t: torch.Tensor) -> torch.Tensor:
    return t.to(torch.promote_types(t.dtype, torch.float32))


def initial_state(initial_params: list[torch.Tensor], rule: MemoryRule, batch: int) -> MemoryState:
    """The state before any token: learned ``[H, out, in]`` initial parameters repeated over the batch."""
    params = [_at_least_fp32(p).unsqueeze(0).expand(batch, *p.shape) for p in initial_params]
    momentum = [torch.zeros_like(p) for p in params] if rule.algorithm == "gd_momentum" else None
    seen = torch.zeros(batch, dtype=torch.long, device=initial_params[0].device)
    return MemoryState(params, momentum, list(params), seen)


# --- the memory as a function of its weights -----------------------------------------------------------


def readout(params: torch.Tensor, rule: MemoryRule) -> torch.Tensor:
    """Equation (4): the weights ``W = f(P)`` of one accumulated parameter (any leading dims)."""
    if rule.retention == "l2":
        return params
    if rule.retention == "kl":
        return torch.softmax(params, dim=-1) * params.shape[-1] ** 0.5  # c Softmax(L), c = sqrt(fan-in)
    # lq: the mirror map of R(W) = 1/2 ||W||_q^2, W = Sign(A) |A|^(r-1) / ||A||_r^(r-2) with r = q / (q - 1)
    r = rule.q / (rule.q - 1)
    # smooth |A|, flattened below a tenth of the matrix's RMS: the map's slope |A|^(r-2) is unbounded at 0
    floor = 0.01 * (params * params).mean((-2, -1), keepdim=True) + rule.abs_eps
    magnitude = (params * params + floor).sqrt()
    norm = magnitude.pow(r).sum((-2, -1), keepdim=True).pow(1.0 / r)
    return params * (magnitude / norm).pow(r - 2)


def _layer_norm(x: torch.Tensor, rule: MemoryRule) -> torch.Tensor:
    return F.layer_norm(x, x.shape[-1:], eps=rule.norm_eps)


def memory_forward(weights: list[torch.Tensor], x: torch.Tensor, rule: MemoryRule) -> torch.Tensor:
    """``M_W(x)``: ``weights`` ``[..., out, in]`` per matrix, ``x`` ``[..., N, d]`` -> ``[..., N, d]``."""
    h = x
    for i, w in enumerate(weights):
        h = h @ w.transpose(-1, -2)
        if i < len(weights) - 1:
            h = F.gelu(h)
    return x + _layer_norm(h, rule) if rule.residual else h


class _GeluDerivative(torch.autograd.Function):
    """``gelu'(z) = d/dz [z Phi(z)] = Phi(z) + z phi(z)`` (exact GELU), elementwise, saving only ``z`` for its own
    derivative ``gelu''(z) = phi(z) (2 - z^2)`` (autograd through the formula keeps several intermediates of
    ``z``'s size: 6 of Titans' 55.5 KB/token at the bench's shapes, docs/results/benchmarks/benchmarks.md)."""

    @staticmethod
    def forward(ctx, z: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(z)
        return 0.5 * (1 + torch.erf(z / math.sqrt(2))) + z * torch.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (z,) = ctx.saved_tensors
        return grad * torch.exp(-0.5 * z * z) * (2 - z * z) / math.sqrt(2 * math.pi)


_gelu_derivative = _GeluDerivative.apply


def _smooth_sign(x: torch.Tensor, rule: MemoryRule) -> torch.Tensor:
    return torch.tanh(rule.sign_sharpness * x)


def output_gradient(out: torch.Tensor, v: torch.Tensor, rule: MemoryRule, huber_delta=None) -> torch.Tensor:
    """``d loss_t / d M(k_t)`` for the attentional bias (1); ``[..., N, d]`` (``huber_delta`` ``[..., N]``)."""
    r = out - v
    if rule.attentional_bias == "l2":
        return r
    if rule.attentional_bias == "dot":
        return -v
    if rule.attentional_bias == "lp":
        return _smooth_sign(r, rule) * (r * r + rule.abs_eps).pow((rule.p - 1) / 2)
    delta = huber_delta[..., None]
    norm = (r * r).sum(-1, keepdim=True).add(1e-12).sqrt()  # differentiable at r = 0
    return torch.where(norm <= delta, r, delta * r / norm)


def token_gradients(weights, k, v, rule: MemoryRule, huber_delta=None):
    """Per-token gradients of (1) at fixed weights, as rank-one factors.

    ``weights`` ``[..., out, in]``, ``k, v`` ``[..., N, d]``. Returns ``(deltas, inputs)``: for matrix ``l``,
    ``grad_{W_l} loss_t = deltas[l][..., t, :] (outer) inputs[l][..., t, :]`` (``[..., N, out]``, ``[..., N, in]``).
    """
    inputs, pre = [], []
    h = k
    for i, w in enumerate(weights):
        inputs.append(h)
        z = h @ w.transpose(-1, -2)
        pre.append(z)
        h = F.gelu(z) if i < len(weights) - 1 else z
    if rule.residual:
        normed = _layer_norm(h, rule)
        g = output_gradient(k + normed, v, rule, huber_delta)
        std = (h.var(-1, unbiased=False, keepdim=True) + rule.norm_eps).sqrt()
        g = (g - g.mean(-1, keepdim=True) - normed * (g * normed).mean(-1, keepdim=True)) / std
    else:
        g = output_gradient(h, v, rule, huber_delta)
    deltas = [None] * len(weights)
    for i in range(len(weights) - 1, -1, -1):
        deltas[i] = g
        if i > 0:
            g = (g @ weights[i]) * _gelu_derivative(pre[i - 1])
    if rule.grad_clip is not None:
        deltas = [d * gradient_clip_scale(deltas, inputs, rule.grad_clip) for d in deltas]
    return deltas, inputs


def gradient_clip_scale(deltas, inputs, max_norm: float) -> torch.Tensor:
    """``[..., N, 1]`` factor that scales each token's whole gradient to Frobenius norm <= ``max_norm``.

    A rank-one gradient ``delta h^T`` has norm ``||delta|| ||h||``, so the norm over all matrices is
    ``sqrt(sum_l ||delta_l||^2 ||h_l||^2)``, read off the factors without forming the gradient.
    """
    squared = sum(d.pow(2).sum(-1, keepdim=True) * h.pow(2).sum(-1, keepdim=True) for d, h in zip(deltas, inputs,
                                                                                                    strict=True))
    return (max_norm / (squared + 1e-12).sqrt()).clamp(max=1.0)


# --- the chunk-parallel op -------------------------------------------------------------------------------


def _heads_first(*tensors: torch.Tensor | None) -> list[torch.Tensor | None]:
    """``[B, T, H, ...]`` -> ``[B, H, T, ...]`` (at least fp32; None stays None): the layout the math below uses."""
    return [None if t is None else _at_least_fp32(t).transpose(1, 2) for t in tensors]


def _check_memory_inputs(op: str, q, k, v, gates: dict, state: MemoryState, mask) -> None:
    """Raise ValueError naming the argument unless ``q, k, v`` are ``[B, T, H, d]``, every gate ``[B, T, H]``,
    the state has ``B`` rows of ``H`` heads and ``mask`` is ``[B, T]`` with its pads after the real tokens."""
    if q.dim() != 4 or k.shape != q.shape or v.shape != q.shape:
        raise ValueError(
            f"{op}: q, k, v must be [B, T, H, d] of one shape, got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}"
        )
    for name, gate in gates.items():
        if gate is not None and gate.shape != q.shape[:3]:
            raise ValueError(f"{op}: {name} must be [B, T, H] = {tuple(q.shape[:3])}, got {tuple(gate.shape)}")
    expected = (q.shape[0], q.shape[2])
    if tuple(state.params[0].shape[:2]) != expected:
        raise ValueError(f"{op}: state must hold [B, H] = {expected} memories, got {tuple(state.params[0].shape[:2])}")
    if mask is None:
        return
    if mask.shape != q.shape[:2]:
        raise ValueError(f"{op}: mask must be [B, T] = {tuple(q.shape[:2])}, got {tuple(mask.shape)}")
    if bool((mask[:, 1:] > mask[:, :-1]).any()):
        raise ValueError(
            f"{op}: mask has a pad before a real token; pads must come last (memlm.layers.padding moves left pads)"
        )


def _chunk_coefficients(log_a, log_eta, theta, live, momentum: bool):
    """Equation (7) for one chunk: ``log_a, log_eta, theta, live`` ``[B, H, C]`` ->
    ``decay A_t``, ``m_t`` (None without momentum), ``c [B, H, C, C]`` and the end-of-chunk momentum
    weights ``E_C / E_s * theta_s`` (None without momentum).
    """
    size = log_a.shape[-1]
    causal = torch.ones(size, size, dtype=torch.bool, device=log_a.device).tril()
    cum_a = log_a.cumsum(-1)
    decay = (cum_a[..., :, None] - cum_a[..., None, :]).masked_fill(~causal, float("-inf")).exp()
    decay = decay * live[..., None, :]  # D_tr, a pad adds no momentum to P
    if not momentum:
        return cum_a.exp(), None, decay * theta[..., None, :], None
    cum_eta = log_eta.cumsum(-1)
    carry = (cum_eta[..., :, None] - cum_eta[..., None, :]).masked_fill(~causal, float("-inf")).exp()
    m = (decay * cum_eta.exp()[..., None, :]).sum(-1)
    c = (decay @ carry) * theta[..., None, :]
    momentum_weights = carry[..., -1, :] * theta
    return cum_a.exp(), m, c, momentum_weights


class _RetrieveThroughLayer(torch.autograd.Function):
    """Equation (8) for one memory layer: ``h [B, H, C, in]`` -> ``z [B, H, C, out]``,

        z_t = A_t (P_0 h_t) + m_t (S_0 h_t) - sum_s c_ts (h_s' . h_t) delta_s

    with ``P_0, S_0 [B, H, out, in]``, ``A, m [B, H, C]``, ``c [B, H, C, C]`` and the chunk's key-path layer inputs
    ``h' [B, H, C, in]`` and errors ``delta [B, H, C, out]`` (``S_0`` and ``m`` None without momentum). It saves
    only its inputs, which the chunk keeps anyway, and recomputes the three products ``P_0 h``, ``S_0 h`` and
    ``h' . h`` in the backward pass: autograd through the formula would keep them (10 of Titans' 55.5 KB/token at
    the bench's shapes).
    """

    @staticmethod
    def forward(ctx, h, p0, decay, c, inputs, deltas, s0, m):
        ctx.save_for_backward(h, p0, decay, c, inputs, deltas, s0, m)
        z = decay[..., None] * (h @ p0.transpose(-1, -2))
        if m is not None:
            z = z + m[..., None] * (h @ s0.transpose(-1, -2))
        return z - ((h @ inputs.transpose(-1, -2)) * c) @ deltas

    @staticmethod
    def backward(ctx, dz):
        h, p0, decay, c, inputs, deltas, s0, m = ctx.saved_tensors
        d_decay = (dz * (h @ p0.transpose(-1, -2))).sum(-1)
        dz_p = decay[..., None] * dz
        dh = dz_p @ p0
        dp0 = dz_p.transpose(-1, -2) @ h
        ds0 = d_m = None
        if m is not None:
            d_m = (dz * (h @ s0.transpose(-1, -2))).sum(-1)
            dz_s = m[..., None] * dz
            dh = dh + dz_s @ s0
            ds0 = dz_s.transpose(-1, -2) @ h
        overlap = h @ inputs.transpose(-1, -2)  # [B, H, C, C]: h'_s . h_t at [t, s]
        d_deltas = -((overlap * c).transpose(-1, -2) @ dz)
        d_scores = -(dz @ deltas.transpose(-1, -2))
        dc = d_scores * overlap
        d_overlap = d_scores * c
        dh = dh + d_overlap @ inputs
        d_inputs = d_overlap.transpose(-1, -2) @ h
        return dh, dp0, d_decay, dc, d_inputs, d_deltas, ds0, d_m


def _retrieve_linear_algebra(x, chunk_start_params, momentum, decay, m, c, deltas, inputs, rule):
    """Equation (8) through every layer: ``x [B, H, C, d]`` -> ``M_{W_t}(x_t)`` without forming ``W_t``."""
    h = x
    last = len(chunk_start_params) - 1
    for i, p0 in enumerate(chunk_start_params):
        z = _RetrieveThroughLayer.apply(h, p0, decay, c, inputs[i], deltas[i],
                                         None if momentum is None else momentum[i], m)
        h = F.gelu(z) if i < last else z
    return x + _layer_norm(h, rule) if rule.residual else h


def _retrieve_materialized(x, chunk_start_params, momentum, decay, m, c, deltas, inputs, rule):
    """``lq`` / ``kl``: form ``P_t`` (6) for the chunk's tokens, apply ``f`` and read every token."""
    weights = []
    for i, p0 in enumerate(chunk_start_params):
        p = decay[..., None, None] * p0.unsqueeze(-3)
        if m is not None:
            p = p + m[..., None, None] * momentum[i].unsqueeze(-3)
        p = p - torch.einsum("bhts,bhso,bhsi->bhtoi", c, deltas[i], inputs[i])
        weights.append(readout(p, rule))
    return memory_forward(weights, x.unsqueeze(-2), rule).squeeze(-2)


def _one_chunk(rule: MemoryRule, num_matrices: int, q, k, v, theta, log_a, log_eta, live, huber_delta, *state):
    """Equations (6)-(8) for one chunk: returns ``(y, *P_end, *S_end)`` from ``state = (*P_0, *S_0)``."""
    params, momentum = list(state[:num_matrices]), list(state[num_matrices:]) or None
    deltas, inputs = token_gradients([readout(p, rule) for p in params], k, v, rule, huber_delta)
    decay, m, c, momentum_weights = _chunk_coefficients(log_a, log_eta, theta, live, momentum is not None)
    retrieve = _retrieve_linear_algebra if rule.retention == "l2" else _retrieve_materialized
    y = retrieve(q, params, momentum, decay, m, c, deltas, inputs, rule)
    new_params = []
    for i, p0 in enumerate(params):
        p = decay[..., -1, None, None] * p0 - (deltas[i] * c[..., -1, :, None]).transpose(-1, -2) @ inputs[i]
        if momentum is not None:
            p = p + m[..., -1, None, None] * momentum[i]
        new_params.append(p)
    if momentum is None:
        return (y, *new_params)
    end_eta = log_eta.sum(-1).exp()[..., None, None]
    new_momentum = [
        end_eta * s - (deltas[i] * momentum_weights[..., None]).transpose(-1, -2) @ inputs[i]
        for i, s in enumerate(momentum)
    ]
    return (y, *new_params, *new_momentum)


def chunk_neural_memory(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    theta: torch.Tensor,
    log_a: torch.Tensor,
    log_eta: torch.Tensor | None,
    state: MemoryState,
    rule: MemoryRule,
    chunk_size: int,
    huber_delta: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
    recompute_chunks: bool = False,
) -> tuple[torch.Tensor, MemoryState]:
    """Chunk-parallel training and prefill (Titans section 3.2): equations (1)-(5) with every gradient of a chunk
    taken at the chunk's starting weights, computed through (6)-(8):

        P_t = A_t P_0 + m_t S_0 - sum_{s<=t} c_ts delta_s h_s^T,     y_t = M_{f(P_t)}(q_t)

    Args:
        q, k, v: ``[B, T, H, d]``. theta: ``[B, T, H]`` learning rates. log_a: ``[B, T, H]`` ``log(1 - alpha)``.
        log_eta: ``[B, T, H]`` ``log eta`` (None for ``gd``). huber_delta: ``[B, T, H]`` (``huber`` only).
        state: from :func:`initial_state` or an earlier call; its ``seen`` must be a multiple of
            ``chunk_size`` for every row (use :func:`recurrent_neural_memory` to continue inside a chunk).
        mask: ``[B, T]`` 1 for real tokens; pads must come last (a layer moves left pads there first).
        recompute_chunks: for training, keep only the states at chunk boundaries and recompute each chunk in
            the backward pass (less memory, one more forward).
    Returns ``(y [B, T, H, d], new state)``; computed in fp32, ``y`` in the dtype of ``q``.
    """
    if bool((state.seen % chunk_size != 0).any()):
        raise ValueError("chunk_neural_memory continues only from a chunk boundary; use recurrent_neural_memory")
    momentum_on = rule.algorithm == "gd_momentum"
    _check_memory_inputs("chunk_neural_memory", q, k, v, {"theta": theta, "log_a": log_a, "huber_delta": huber_delta,
                         "log_eta": log_eta if momentum_on else None}, state, mask)
    batch, length, heads, _ = q.shape
    dtype = q.dtype
    q, k, v, theta, log_a, log_eta, huber_delta = _heads_first(
        q, k, v, theta, log_a, log_eta if momentum_on else None, huber_delta
    )
    live = torch.ones(batch, length, device=q.device, dtype=q.dtype) if mask is None else mask.to(q.dtype)
    live_h = live[:, None, :].expand(batch, heads, length)
    theta = theta * live_h
    log_a = log_a * live_h
    log_eta = log_eta * live_h if momentum_on else None

    real = live.sum(-1).long()  # tokens each row reads now
    chunk_of_end = real // chunk_size  # the chunk whose start the next token's gradient uses
    params, momentum = list(state.params), list(state.momentum) if momentum_on else None
    chunk_start = list(state.chunk_start)
    outputs = []
    # one split per input: slicing each chunk out separately would give the backward pass one full-length zero
    # gradient per chunk (quadratic in T)
    per_token = [None if t is None else t.split(chunk_size, dim=2)
                 for t in (q, k, v, theta, log_a, log_eta, live_h, huber_delta)]
    for index in range(-(-length // chunk_size)):
        keep = (chunk_of_end == index).view(batch, 1, 1, 1)
        chunk_start = [torch.where(keep, p, s) for p, s in zip(params, chunk_start, strict=True)]
        pieces = [None if t is None else t[index] for t in per_token]
        if recompute_chunks and torch.is_grad_enabled():  # keep only chunk-boundary states, recompute the rest
            out = checkpoint(_one_chunk, rule, len(params), *pieces, *params, *(momentum or []), use_reentrant=False)
        else:
            out = _one_chunk(rule, len(params), *pieces, *params, *(momentum or []))
        outputs.append(out[0])
        params = list(out[1 : 1 + len(params)])
        momentum = list(out[1 + len(params) :]) if momentum_on else None
    keep = (chunk_of_end == len(outputs)).view(batch, 1, 1, 1)
    chunk_start = [torch.where(keep, p, s) for p, s in zip(params, chunk_start, strict=True)]
    y = torch.cat(outputs, dim=2).transpose(1, 2)
    return y.to(dtype), MemoryState(params, momentum, chunk_start, state.seen + real)


def recurrent_neural_memory(q, k, v, theta, log_a, log_eta, state: MemoryState, rule: MemoryRule, chunk_size: int,
                            huber_delta=None, mask=None) -> tuple[torch.Tensor, MemoryState]:
    """One token per row (``T = 1``, decoding), continuing anywhere inside a chunk: equations (1)-(5),

        S_t = eta_t S_{t-1} - theta_t grad ell(M_{f(P_c)}(k_t), v_t),   P_t = a_t P_{t-1} + S_t,   y_t = M_{f(P_t)}(q_t)

    with the gradient taken at ``f(P_c)``, ``P_c`` the chunk start; a row whose ``seen`` is a multiple of
    ``chunk_size`` starts a new chunk here. Same arguments and layout as :func:`chunk_neural_memory`. A pad
    (``mask = 0``) leaves the row's state unchanged.
    """
    if q.shape[1] != 1:
        raise ValueError(f"recurrent_neural_memory reads one token per row, got q of shape {tuple(q.shape)}")
    _check_memory_inputs("recurrent_neural_memory", q, k, v, {"theta": theta, "log_a": log_a,
                         "huber_delta": huber_delta}, state, mask)
    dtype = q.dtype
    q, k, v, theta, log_a = (_at_least_fp32(t)[:, 0] for t in (q, k, v, theta, log_a))
    batch = q.shape[0]
    live = torch.ones(batch, device=q.device, dtype=q.dtype) if mask is None else mask[:, -1].to(q.dtype)
    chunk_start = state.current_chunk_start(chunk_size)
    weights = [readout(p, rule) for p in chunk_start]
    delta_h = _at_least_fp32(huber_delta)[:, 0, :, None] if huber_delta is not None else None
    deltas, inputs = token_gradients(weights, k[:, :, None], v[:, :, None], rule, delta_h)
    live4 = live.view(batch, 1, 1, 1)
    theta4 = (theta * live[:, None])[..., None, None]
    a4 = torch.where(live4.bool(), log_a[..., None, None].exp(), torch.ones_like(theta4))
    grads = [d.transpose(-1, -2) @ h for d, h in zip(deltas, inputs, strict=True)]  # [B, H, out, in]
    if rule.algorithm == "gd_momentum":
        eta4 = torch.where(live4.bool(), _at_least_fp32(log_eta)[:, 0, :, None, None].exp(), torch.ones_like(theta4))
        momentum = [eta4 * s - theta4 * g for s, g in zip(state.momentum, grads, strict=True)]
        params = [a4 * p + live4 * s for p, s in zip(state.params, momentum, strict=True)]
    else:
        momentum = None
        params = [a4 * p - theta4 * g for p, g in zip(state.params, grads, strict=True)]
    weights = [readout(p, rule) for p in params]
    y = memory_forward(weights, q[:, :, None], rule).transpose(1, 2)  # [B, 1, H, d]
    # a pad that fell on a chunk boundary must not move the row's chunk start
    chunk_start = [torch.where(live4.bool(), s, old) for s, old in zip(chunk_start, state.chunk_start, strict=True)]
    return y.to(dtype), MemoryState(params, momentum, chunk_start, state.seen + live.long())


# --- the naive reference ---------------------------------------------------------------------------------


def naive_neural_memory(q, k, v, theta, log_a, log_eta, state: MemoryState, rule: MemoryRule, chunk_size: int,
                        huber_delta=None) -> tuple[torch.Tensor, MemoryState]:
    """The reference: token by token, straight from (1)-(5), with autograd's gradients through the memory (no
    rank-one algebra):

        S_t = eta_t S_{t-1} - theta_t grad_W ell(M_W(k_t), v_t) at W = f(P_c),   P_t = a_t P_{t-1} + S_t,
        y_t = M_{f(P_t)}(q_t)

    Weights are formed for every token; gradients are taken at ``f(P_c)``, ``P_c`` the chunk start (chunk size 1:
    at ``M_{t-1}``, the fully sequential Titans update). Layout as :func:`chunk_neural_memory`. For tests only: slow.
    """
    dtype = q.dtype
    q, k, v, theta, log_a, log_eta, huber_delta = _heads_first(q, k, v, theta, log_a, log_eta, huber_delta)
    params = [_at_least_fp32(p) for p in state.params]
    momentum = [_at_least_fp32(s) for s in state.momentum] if rule.algorithm == "gd_momentum" else None
    chunk_start = list(state.chunk_start)
    outputs = []
    for t in range(q.shape[2]):
        if t % chunk_size == 0:
            chunk_start = params
        with torch.enable_grad():
            weights = [readout(p, rule) for p in chunk_start]
            out = memory_forward(weights, _at_least_fp32(k[:, :, t : t + 1]), rule)
            target = _at_least_fp32(v[:, :, t : t + 1])
            delta = _at_least_fp32(huber_delta[:, :, t : t + 1]) if huber_delta is not None else None
            # vector-Jacobian product with d loss / d M(k) (the definition of each attentional bias)
            grads = torch.autograd.grad(out, weights, output_gradient(out, target, rule, delta), create_graph=True)
            if rule.grad_clip is not None:  # the token's whole gradient to norm <= grad_clip
                norm = sum(g.pow(2).sum((-2, -1), keepdim=True) for g in grads).add(1e-12).sqrt()
                grads = [g * (rule.grad_clip / norm).clamp(max=1.0) for g in grads]
        th = _at_least_fp32(theta[:, :, t, None, None])
        a = _at_least_fp32(log_a[:, :, t, None, None]).exp()
        if momentum is not None:
            eta = _at_least_fp32(log_eta[:, :, t, None, None]).exp()
            momentum = [eta * s - th * g for s, g in zip(momentum, grads, strict=True)]
            params = [a * p + s for p, s in zip(params, momentum, strict=True)]
        else:
            params = [a * p - th * g for p, g in zip(params, grads, strict=True)]
        weights = [readout(p, rule) for p in params]
        outputs.append(memory_forward(weights, _at_least_fp32(q[:, :, t : t + 1]), rule))
    seen = state.seen + q.shape[2]
    return torch.cat(outputs, dim=2).transpose(1, 2).to(dtype), MemoryState(params, momentum, chunk_start, seen)
