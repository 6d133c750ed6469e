"""Mamba-2's SSD op: chunked == token-by-token reference (values and every input gradient); transformers'
Mamba2Mixer is the reference of the layer (tests/layers/test_mamba2.py)."""

from itertools import pairwise

import pytest
import torch
from torch.nn import functional as F

from memlm.ops import chunk_ssd, naive_ssd, recurrent_ssd
from tests.ops.agreement import run_with_grads

NAMES = ["x", "dt", "A", "B", "C", "D", "initial_state"]


def make_inputs(batch, seq_len, heads=4, groups=2, head_dim=8, d_state=6, num_states=None, decay=1.0):
    x = torch.randn(batch, seq_len, heads, head_dim)
    dt = F.softplus(torch.randn(batch, seq_len, heads) - 1.0)
    A = -torch.rand(heads) * decay - 0.1
    B = torch.randn(batch, seq_len, groups, d_state)
    C = torch.randn(batch, seq_len, groups, d_state)
    D = torch.randn(heads)
    state = torch.randn(num_states or batch, heads, d_state, head_dim)
    return [t.requires_grad_() for t in (x, dt, A, B, C, D, state)]


def assert_ops_agree(inputs, tol=1e-4, op=chunk_ssd, **kwargs):
    y, final = naive_ssd(*inputs[:6], initial_state=inputs[6], output_final_state=True, **kwargs)
    weights = (torch.randn_like(y), torch.randn_like(final))
    result = run_with_grads(op, inputs, weights, **kwargs)
    reference = run_with_grads(naive_ssd, inputs, weights, **kwargs)
    scale = max(1.0, reference[0].abs().max().item())
    torch.testing.assert_close(result[0], reference[0], atol=tol * scale, rtol=0)
    torch.testing.assert_close(result[1], reference[1], atol=tol * scale, rtol=0)
    for name, a, b in zip(NAMES, result[2], reference[2], strict=True):
        assert torch.isfinite(a).all(), name
        bound = tol * max(1.0, b.abs().max().item())
        torch.testing.assert_close(a, b, atol=bound, rtol=0, msg=lambda m, name=name: f"grad of {name}: {m}")


def test_chunk_matches_recurrence_values_and_gradients():
    assert_ops_agree(make_inputs(2, 300))  # not a multiple of the chunk, with an initial state, 2 heads per group


@pytest.mark.parametrize("seq_len", [1, 5, 64, 65])
def test_short_and_boundary_lengths(seq_len):
    assert_ops_agree(make_inputs(1, seq_len))


def test_recurrent_matches_reference_step_by_step():
    inputs = make_inputs(2, 7)
    assert_ops_agree(inputs, op=recurrent_ssd)
    x, dt, A, B, C, D, state = (t.detach() for t in inputs)
    full, full_state = naive_ssd(x, dt, A, B, C, D, initial_state=state, output_final_state=True)
    for t in range(7):  # one token a call, carrying the state
        y, state = recurrent_ssd(x[:, t:t + 1], dt[:, t:t + 1], A, B[:, t:t + 1], C[:, t:t + 1], D,
                                 initial_state=state, output_final_state=True)
        torch.testing.assert_close(y, full[:, t:t + 1], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(state, full_state, atol=1e-5, rtol=1e-5)


def test_cu_seqlens_match_recurrence_and_documents_alone():
    cu_seqlens = torch.tensor([0, 40, 41, 130, 200])
    inputs = make_inputs(1, 200, num_states=4)
    assert_ops_agree(inputs, cu_seqlens=cu_seqlens)
    assert_ops_agree(inputs, op=recurrent_ssd, cu_seqlens=cu_seqlens)
    packed, finals = chunk_ssd(*inputs[:6], initial_state=inputs[6], output_final_state=True, cu_seqlens=cu_seqlens)
    for doc, (start, end) in enumerate(pairwise(cu_seqlens.tolist())):
        x, dt, B, C = (t[:, start:end] for t in (inputs[0], inputs[1], inputs[3], inputs[4]))
        alone, final = chunk_ssd(x, dt, inputs[2], B, C, inputs[5], initial_state=inputs[6][doc:doc + 1],
                                 output_final_state=True)
        torch.testing.assert_close(packed[:, start:end], alone, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(finals[doc:doc + 1], final, atol=1e-5, rtol=1e-5)


def test_strong_decay_is_stable():
    inputs = make_inputs(1, 200, decay=60.0)  # dt * A down to about -100 per token
    assert_ops_agree(inputs)


def test_long_sequence_is_finite():
    x, dt, A, B, C, D, _ = (t.detach() for t in make_inputs(1, 16384, heads=2, groups=1, head_dim=4, d_state=4))
    y, final = chunk_ssd(x, dt, A * 0.01, B, C, D, output_final_state=True)  # weak decay: the state accumulates
    assert torch.isfinite(y).all() and torch.isfinite(final).all()
    tail, _ = naive_ssd(x[:, -50:], dt[:, -50:], A * 0.01, B[:, -50:], C[:, -50:], D,
                        initial_state=chunk_ssd(x[:, :-50], dt[:, :-50], A * 0.01, B[:, :-50], C[:, :-50], D,
                                                output_final_state=True)[1])
    torch.testing.assert_close(y[:, -50:], tail, atol=1e-3, rtol=1e-4)


def test_bf16_inputs_give_bf16_outputs_and_fp32_state():
    x, dt, A, B, C, D, _ = (t.detach() for t in make_inputs(1, 70))
    y, final = chunk_ssd(x.bfloat16(), dt, A, B.bfloat16(), C.bfloat16(), D, output_final_state=True)
    assert y.dtype == torch.bfloat16 and final.dtype == torch.float32
    reference, _ = chunk_ssd(x, dt, A, B, C, D)
    torch.testing.assert_close(y.float(), reference, atol=0.1, rtol=0.05)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda a: a.update(x=a["x"][0]), "x must be"),
        (lambda a: a.update(B=a["B"][:, :5]), "B must be"),
        (lambda a: a.update(C=a["C"][..., :2]), "C must have B's shape"),
        (lambda a: a.update(dt=a["dt"][..., None]), "dt must have shape"),
        (lambda a: a.update(A=a["A"][:2]), "A must have shape"),
        (lambda a: a.update(D=a["D"][:2]), "D must be None or"),
        (lambda a: a.update(initial_state=torch.zeros(1, 4, 8, 6)), "initial_state must have shape"),
        (lambda a: a.update(cu_seqlens=torch.tensor([0, 5, 4, 20])), "cu_seqlens must rise"),
    ],
)
def test_bad_input_raises(change, message):
    x, dt, A, B, C, D, _ = (t.detach() for t in make_inputs(1, 20))
    args = dict(x=x, dt=dt, A=A, B=B, C=C, D=D)
    change(args)
    for op in (chunk_ssd, recurrent_ssd, naive_ssd):
        with pytest.raises(ValueError, match=message):
            op(**args)


def test_the_hand_written_backward_of_the_intra_chunk_term_matches_finite_differences():
    from memlm.ops.ssd import _WithinChunks

    gen = torch.Generator().manual_seed(0)
    # 2 groups of 3 heads, 2 chunks of 5 tokens, head_dim 4, in fp64
    cb = torch.randn(1, 2, 1, 2, 5, 5, generator=gen, dtype=torch.float64)
    dt = torch.rand(1, 2, 3, 2, 5, generator=gen, dtype=torch.float64)
    log_decay = (-dt * 2).cumsum(-1)
    x = torch.randn(1, 2, 3, 2, 5, 4, generator=gen, dtype=torch.float64)
    args = tuple(t.requires_grad_() for t in (cb, log_decay, dt, x))
    assert torch.autograd.gradcheck(_WithinChunks.apply, args)
    assert torch.autograd.gradgradcheck(_WithinChunks.apply, args)
