"""The neural-memory op against its token-by-token definition (fp64, values and gradients)."""

import dataclasses

import pytest
import torch
from torch.nn import functional as F

from memlm.ops.neural_memory import (
    PRESETS,
    MemoryRule,
    chunk_neural_memory,
    initial_state,
    naive_neural_memory,
    recurrent_neural_memory,
)

RULES = {
    **PRESETS,
    "linear": MemoryRule(depth=1),
    "linear-gd": MemoryRule(depth=1, algorithm="gd"),
    "depth3": MemoryRule(depth=3),
    "depth4-residual": MemoryRule(depth=4, residual=True, algorithm="gd"),
    "dot": MemoryRule(attentional_bias="dot"),
    "lp-momentum": MemoryRule(attentional_bias="lp", p=3.0),
    "clipped": MemoryRule(grad_clip=0.05),  # every token's gradient is clipped
    "unclipped": MemoryRule(grad_clip=None),
}


def inputs(rule, batch=2, heads=2, length=13, dim=8, dtype=torch.float64):
    """q, k (unit), v ``[B, T, H, d]``, theta, log(1 - alpha), log eta, Huber delta ``[B, T, H]`` and the learned
    M_0, all requiring grad."""
    g = torch.Generator().manual_seed(1)

    def rand(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g, dtype=dtype) * scale).requires_grad_()

    q = F.normalize(torch.randn(batch, length, heads, dim, generator=g, dtype=dtype), dim=-1).requires_grad_()
    k = F.normalize(torch.randn(batch, length, heads, dim, generator=g, dtype=dtype), dim=-1).requires_grad_()
    v = rand(batch, length, heads, dim)
    theta = (torch.rand(batch, length, heads, generator=g, dtype=dtype) * 0.5).requires_grad_()
    log_a = F.logsigmoid(torch.randn(batch, length, heads, generator=g, dtype=dtype) + 3).requires_grad_()
    log_eta = F.logsigmoid(torch.randn(batch, length, heads, generator=g, dtype=dtype)).requires_grad_()
    delta = (torch.rand(batch, length, heads, generator=g, dtype=dtype) + 0.2).requires_grad_()
    params = [rand(heads, out, inp, scale=inp**-0.5) for out, inp in rule.shapes(dim)]
    return [q, k, v, theta, log_a, log_eta, delta], params


def run(op, rule, tensors, params, chunk_size, state=None):
    q, k, v, theta, log_a, log_eta, delta = tensors
    state = state if state is not None else initial_state(params, rule, q.shape[0])
    return op(q, k, v, theta, log_a, log_eta, state, rule, chunk_size, huber_delta=delta)


def outputs_and_grads(op, rule, tensors, params, chunk_size):
    y, state = run(op, rule, tensors, params, chunk_size)
    loss = y.square().sum() + sum(p.sin().sum() for p in state.params)
    leaves = tensors + params
    grads = torch.autograd.grad(loss, leaves, allow_unused=True)
    return y, state, [g if g is not None else torch.zeros_like(x) for g, x in zip(grads, leaves, strict=True)]


@pytest.mark.parametrize("name", list(RULES))
@pytest.mark.parametrize("chunk_size", [1, 4, 16])
def test_chunked_equals_sequential_definition(name, chunk_size):
    """Chunk size 1 is the token-by-token Titans update; larger chunks take gradients at the chunk start."""
    rule = RULES[name]
    tensors, params = inputs(rule)
    y, state, grads = outputs_and_grads(chunk_neural_memory, rule, tensors, params, chunk_size)
    y_ref, state_ref, grads_ref = outputs_and_grads(naive_neural_memory, rule, tensors, params, chunk_size)
    torch.testing.assert_close(y, y_ref, atol=1e-9, rtol=1e-7)
    for p, p_ref in zip(state.params, state_ref.params, strict=True):
        torch.testing.assert_close(p, p_ref, atol=1e-9, rtol=1e-7)
    for g, g_ref in zip(grads, grads_ref, strict=True):
        torch.testing.assert_close(g, g_ref, atol=1e-8, rtol=1e-6)


@pytest.mark.parametrize("name", ["titans", "moneta", "yaad", "memora", "linear"])
def test_continuing_from_a_state_token_by_token(name):
    """Prefill (a length that ends inside a chunk), then one token at a time, equals one chunked pass."""
    rule = RULES[name]
    tensors, params = inputs(rule, length=30)
    with torch.no_grad():
        full, _ = run(chunk_neural_memory, rule, tensors, params, 8)
        prefix, state = run(chunk_neural_memory, rule, [t[:, :21] for t in tensors], params, 8)
        outs = [prefix]
        for t in range(21, 30):
            out, state = run(recurrent_neural_memory, rule, [x[:, t : t + 1] for x in tensors], params, 8, state)
            outs.append(out)
    torch.testing.assert_close(torch.cat(outs, dim=1), full, atol=1e-10, rtol=1e-8)
    assert state.seen.tolist() == [30, 30]


@pytest.mark.parametrize("name", ["titans", "yaad"])
def test_right_padded_rows_equal_each_row_alone(name):
    rule = RULES[name]
    tensors, params = inputs(rule, length=19)
    mask = torch.ones(2, 19)
    mask[1, 13:] = 0
    q, k, v, theta, log_a, log_eta, delta = tensors
    with torch.no_grad():
        y, state = chunk_neural_memory(q, k, v, theta, log_a, log_eta, initial_state(params, rule, 2), rule, 4,
                                       huber_delta=delta, mask=mask)
        alone, alone_state = chunk_neural_memory(
            *(t[1:, :13] for t in (q, k, v, theta, log_a, log_eta)), initial_state(params, rule, 1), rule, 4,
            huber_delta=delta[1:, :13],
        )
    torch.testing.assert_close(y[1:, :13], alone, atol=1e-10, rtol=1e-8)
    for p, p_alone in zip(state.params, alone_state.params, strict=True):
        torch.testing.assert_close(p[1:], p_alone, atol=1e-10, rtol=1e-8)
    for s, s_alone in zip(state.chunk_start, alone_state.chunk_start, strict=True):
        torch.testing.assert_close(s[1:], s_alone, atol=1e-10, rtol=1e-8)
    assert state.seen.tolist() == [19, 13]


def test_left_pads_and_the_old_heads_first_layout_are_refused():
    """The op reads pads only after the real tokens (layers move left pads there) and ``[B, T, H, d]`` only."""
    rule = RULES["titans"]
    tensors, params = inputs(rule, length=19)
    mask = torch.ones(2, 19)
    mask[1, :6] = 0
    with torch.no_grad(), pytest.raises(ValueError, match="pad before a real token"):
        chunk_neural_memory(*tensors[:6], initial_state(params, rule, 2), rule, 4, huber_delta=tensors[6], mask=mask)
    heads_first = [t.transpose(1, 2) for t in tensors]
    with torch.no_grad(), pytest.raises(ValueError, match=r"state must hold \[B, H\]"):
        chunk_neural_memory(*heads_first[:6], initial_state(params, rule, 2), rule, 4, huber_delta=heads_first[6])


@pytest.mark.parametrize("name", ["linear", "titans", "yaad", "memora", "moneta"])
def test_memory_memorizes_key_value_pairs(name):
    """After reading key-value pairs, retrieving with those keys is closer to their values than before."""
    rule = dataclasses.replace(RULES[name], attentional_bias="l2") if name == "moneta" else RULES[name]
    torch.manual_seed(0)
    heads, pairs, dim = 2, 6, 16
    keys = F.normalize(torch.randn(1, pairs, heads, dim, dtype=torch.float64), dim=-1)
    values = torch.randn(1, pairs, heads, dim, dtype=torch.float64)
    params = [torch.randn(heads, o, i, dtype=torch.float64) * i**-0.5 for o, i in rule.shapes(dim)]
    state = initial_state(params, rule, 1)
    reads = 30  # the pairs, read again and again
    k, v = keys.repeat(1, reads, 1, 1), values.repeat(1, reads, 1, 1)
    length = pairs * reads
    # inner steps that each memory takes stably (a softmax memory moves its logits, hence the larger step)
    step = 0.5 if rule.depth == 1 else 1.0 if rule.retention == "kl" else 0.05
    theta = torch.full((1, length, heads), step, dtype=torch.float64)
    no_decay = torch.zeros(1, length, heads, dtype=torch.float64)
    eta = torch.full((1, length, heads), 0.5, dtype=torch.float64).log()
    delta = torch.full((1, length, heads), 10.0, dtype=torch.float64)
    _, learned = chunk_neural_memory(k, k, v, theta, no_decay, eta, state, rule, 6, huber_delta=delta)

    def error(memory_state):
        from memlm.ops.neural_memory import memory_forward, readout

        weights = [readout(p, rule) for p in memory_state.params]
        return (memory_forward(weights, keys.transpose(1, 2), rule) - values.transpose(1, 2)).square().mean().item()

    before, after = error(state), error(learned)
    assert after < 0.5 * before, (before, after)


@pytest.mark.parametrize(
    "fields, message",
    [
        (dict(attentional_bias="l3"), "attentional_bias='l3'"),
        (dict(retention="l1"), "retention='l1'"),
        (dict(algorithm="adam"), "algorithm='adam'"),
        (dict(depth=5), "depth=5"),
        (dict(depth=1, residual=True), "residual=True"),
        (dict(attentional_bias="lp", p=0.5), "p=0.5"),
        (dict(retention="lq", q=1.0), "q=1.0"),
        (dict(retention="kl", attentional_bias="dot"), "kl retention"),
        (dict(norm_eps=0.0), "norm_eps=0.0"),
        (dict(grad_clip=0.0), "grad_clip=0.0"),
    ],
)
def test_invalid_miras_combinations_are_refused(fields, message):
    with pytest.raises(ValueError, match=message):
        MemoryRule(**fields)


def test_continuing_inside_a_chunk_needs_the_recurrent_op():
    rule = RULES["titans"]
    tensors, params = inputs(rule, length=5)
    with torch.no_grad():
        _, state = run(chunk_neural_memory, rule, tensors, params, 4)
        with pytest.raises(ValueError, match="recurrent_neural_memory"):
            run(chunk_neural_memory, rule, tensors, params, 4, state)


def test_gradient_clipping_bounds_every_token_update():
    from memlm.ops.neural_memory import token_gradients

    rule = MemoryRule(grad_clip=0.05)
    tensors, params = inputs(rule)
    with torch.no_grad():
        k, v = (t.transpose(1, 2) for t in tensors[1:3])  # [B, H, T, d]: heads lead, as the memory's matrices do
        deltas, layer_inputs = token_gradients(params, k, v * 10, rule)
        norms = sum((d[..., :, :, None] * h[..., :, None, :]).pow(2).sum((-2, -1))
                    for d, h in zip(deltas, layer_inputs, strict=True)).sqrt()
    assert norms.max() <= 0.05 * (1 + 1e-9) and norms.min() > 0.049  # all were above the bound



@pytest.mark.parametrize("momentum", [True, False])
def test_hand_written_backward_passes_match_finite_differences(momentum):
    """The two autograd functions that save less than autograd would (the retrieval (8) through one layer and
    GELU's derivative), first and second derivatives, against finite differences in fp64."""
    from memlm.ops.neural_memory import _gelu_derivative, _RetrieveThroughLayer

    g = torch.Generator().manual_seed(0)

    def rand(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64).requires_grad_()

    b, h, c, d_in, d_out = 1, 2, 5, 3, 4
    lower = rand(b, h, c, c).tril().detach().requires_grad_()  # c_ts, causal
    args = (rand(b, h, c, d_in), rand(b, h, d_out, d_in), rand(b, h, c), lower, rand(b, h, c, d_in),
            rand(b, h, c, d_out), rand(b, h, d_out, d_in) if momentum else None, rand(b, h, c) if momentum else None)
    assert torch.autograd.gradcheck(_RetrieveThroughLayer.apply, args)
    assert torch.autograd.gradgradcheck(_RetrieveThroughLayer.apply, args)
    z = rand(3, 7) * 2
    assert torch.autograd.gradcheck(_gelu_derivative, (z,))
    assert torch.autograd.gradgradcheck(_gelu_derivative, (z,))
