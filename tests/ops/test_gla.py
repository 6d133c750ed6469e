import pytest
import torch
from torch.nn import functional as F

from memlm.ops import chunk_gla, naive_gla, recurrent_gla
from tests.ops import agreement
from tests.ops.agreement import BAD_STATE_AND_OFFSETS, assert_documents_alone, assert_refused

NAMES = ["q", "k", "v", "g", "initial_state"]


def make_inputs(batch, seq_len, heads=2, dk=16, dv=24, num_states=None, bias=2.0):
    """Per-channel log decays ``logsigmoid(2 z + bias)``: mild for bias = 2, about -11 for bias = -11."""
    q = torch.randn(batch, seq_len, heads, dk)
    k = torch.randn(batch, seq_len, heads, dk)
    v = torch.randn(batch, seq_len, heads, dv)
    g = F.logsigmoid(2 * torch.randn(batch, seq_len, heads, dk) + bias)
    state = torch.randn(num_states or batch, heads, dk, dv)
    return [x.requires_grad_() for x in (q, k, v, g, state)]


def assert_ops_agree(inputs, tol=1e-4, rtol=0.0, chunk_size=64, **kwargs):
    agreement.assert_ops_agree(chunk_gla, naive_gla, inputs, NAMES, tol, rtol, {"chunk_size": chunk_size}, **kwargs)


def test_chunk_matches_recurrence_values_and_gradients():
    # T = 1000 is not a multiple of the chunk (64); with an initial state.
    assert_ops_agree(make_inputs(2, 1000))


@pytest.mark.parametrize(("seq_len", "chunk_size"), [(1, 64), (5, 64), (40, 64), (64, 64), (65, 64), (100, 24)])
def test_short_and_boundary_lengths(seq_len, chunk_size):
    # Shorter than one chunk, exactly one, one past it, and a chunk that is not a multiple of 16.
    assert_ops_agree(make_inputs(1, seq_len), chunk_size=chunk_size)


def test_cu_seqlens_match_recurrence_and_documents_alone():
    cu_seqlens = torch.tensor([0, 100, 101, 400, 700])
    inputs = make_inputs(1, 700, num_states=4)
    assert_ops_agree(inputs, cu_seqlens=cu_seqlens)
    weights = torch.randn(1, 700, 2, 24), torch.randn(4, 2, 16, 24)
    assert_documents_alone(chunk_gla, inputs, NAMES, cu_seqlens, weights)


def test_no_state_crosses_documents():
    cu_seqlens = torch.tensor([0, 70, 150])
    q, k, v, g, _ = make_inputs(1, 150)
    o, _ = chunk_gla(q, k, v, g, cu_seqlens=cu_seqlens)
    v2 = v.detach().clone()
    v2[:, :70] += 10.0  # change only the first document
    o2, _ = chunk_gla(q, k, v2, g, cu_seqlens=cu_seqlens)
    torch.testing.assert_close(o[:, 70:], o2[:, 70:])


def test_strong_decay_long_sequence_is_finite():
    # HGRN-2 forget gates near 1e-5: g ~ -11 per token and channel, cumulative -700 within a chunk.
    q, k, v, g, state = make_inputs(1, 16384, heads=1, dk=16, dv=16, bias=-11.0)
    assert -12 < g.mean() < -10
    o, final = chunk_gla(q, k, v, g, initial_state=state, output_final_state=True)
    assert torch.isfinite(o).all() and torch.isfinite(final).all()
    ((o * torch.randn_like(o)).sum() + (final * torch.randn_like(final)).sum()).backward()
    for name, x in zip(NAMES, (q, k, v, g, state), strict=True):
        assert torch.isfinite(x.grad).all(), name


@pytest.mark.parametrize("bias", [-11.0, -100.0])
def test_strong_decay_matches_recurrence(bias):
    assert_ops_agree(make_inputs(1, 512, heads=1, dk=16, dv=16, bias=bias))


def test_no_decay_matches_recurrence():
    inputs = make_inputs(1, 200)
    with torch.no_grad():
        inputs[3].zero_()
    assert_ops_agree(inputs, rtol=1e-5)  # the state only grows: values and gradients reach ~1e2


def test_default_scale_and_no_final_state():
    q, k, v, g, _ = make_inputs(1, 20)
    o, final = chunk_gla(q, k, v, g)
    o_scaled, _ = chunk_gla(q * 16**-0.5, k, v, g, scale=1.0)
    assert final is None
    torch.testing.assert_close(o, o_scaled, atol=1e-5, rtol=0)


def test_bf16_inputs_give_bf16_outputs_and_fp32_state():
    q, k, v, g, _ = (x.detach() for x in make_inputs(1, 70))
    for op in (chunk_gla, recurrent_gla, naive_gla):
        o, final = op(q.bfloat16(), k.bfloat16(), v.bfloat16(), g.bfloat16(), output_final_state=True)
        assert o.dtype == torch.bfloat16 and final.dtype == torch.float32
        reference, _ = op(q, k, v, g)
        torch.testing.assert_close(o.float(), reference, atol=0.1, rtol=0.05)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda a: a.update(k=a["k"][..., :8]), "k must have q's shape"),
        (lambda a: a.update(v=a["v"][:, :5]), "v must be"),
        (lambda a: a.update(g=a["g"][..., 0]), "g must have shape"),
        (lambda a: a.update(g=a["g"][..., :8]), "g must have shape"),
        *BAD_STATE_AND_OFFSETS,
    ],
)
def test_bad_input_raises(change, message):
    assert_refused((chunk_gla, recurrent_gla, naive_gla), NAMES[:4], make_inputs(1, 20)[:4], change, message)


def test_cu_seqlens_needs_batch_of_one():
    q, k, v, g, _ = (x.detach() for x in make_inputs(2, 20))
    for op in (chunk_gla, recurrent_gla, naive_gla):
        with pytest.raises(ValueError, match="batch of one"):
            op(q, k, v, g, cu_seqlens=torch.tensor([0, 10, 20]))
