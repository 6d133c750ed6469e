import pytest
import torch
from torch.nn import functional as F

from memlm.ops import chunk_kda, naive_kda, recurrent_kda
from tests.ops import agreement
from tests.ops.agreement import BAD_STATE_AND_OFFSETS, assert_documents_alone, assert_refused

NAMES = ["q", "k", "v", "g", "beta", "initial_state"]


def make_inputs(batch, seq_len, heads=2, dk=16, dv=24, num_states=None, bias=2.0):
    """Normalized keys (the layer's), per-channel log decays ``logsigmoid(2 z + bias)``: mild for bias = 2, about
    -11 for bias = -11."""
    q = torch.randn(batch, seq_len, heads, dk)
    k = F.normalize(torch.randn(batch, seq_len, heads, dk), dim=-1)
    v = torch.randn(batch, seq_len, heads, dv)
    g = F.logsigmoid(2 * torch.randn(batch, seq_len, heads, dk) + bias)
    beta = torch.rand(batch, seq_len, heads)
    state = torch.randn(num_states or batch, heads, dk, dv)
    return [x.requires_grad_() for x in (q, k, v, g, beta, state)]


def assert_ops_agree(inputs, op=chunk_kda, tol=1e-4, chunk_size=None, **kwargs):
    op_kwargs = {} if chunk_size is None else {"chunk_size": chunk_size}
    agreement.assert_ops_agree(op, naive_kda, inputs, NAMES, tol, tol, op_kwargs, **kwargs)


def test_chunk_matches_recurrence_values_and_gradients():
    # T = 300 is not a multiple of the chunk (64); with an initial state.
    assert_ops_agree(make_inputs(2, 300))


def test_recurrent_matches_reference():
    assert_ops_agree(make_inputs(2, 7), op=recurrent_kda, tol=1e-6)


@pytest.mark.parametrize(("seq_len", "chunk_size"), [(1, 64), (5, 64), (64, 64), (65, 64), (100, 32)])
def test_short_and_boundary_lengths(seq_len, chunk_size):
    assert_ops_agree(make_inputs(1, seq_len), chunk_size=chunk_size)


def test_qk_l2norm_in_kernel():
    q, k, v, g, beta, state = make_inputs(1, 90)
    with torch.no_grad():
        k.mul_(3.0)
    assert_ops_agree([q, k, v, g, beta, state], use_qk_l2norm_in_kernel=True)


def test_cu_seqlens_match_recurrence_and_documents_alone():
    cu_seqlens = torch.tensor([0, 100, 101, 250])
    inputs = make_inputs(1, 250, num_states=3)
    assert_ops_agree(inputs, cu_seqlens=cu_seqlens)
    weights = torch.randn(1, 250, 2, 24), torch.randn(3, 2, 16, 24)
    assert_documents_alone(chunk_kda, inputs, NAMES, cu_seqlens, weights)


@pytest.mark.parametrize("bias", [-11.0, -100.0])
def test_strong_decay_matches_recurrence(bias):
    assert_ops_agree(make_inputs(1, 200, heads=1, bias=bias))


def test_strong_decay_long_sequence_is_finite():
    q, k, v, g, beta, state = make_inputs(1, 16384, heads=1, dk=16, dv=16, bias=-11.0)
    o, final = chunk_kda(q, k, v, g, beta, initial_state=state, output_final_state=True)
    assert torch.isfinite(o).all() and torch.isfinite(final).all()
    ((o * torch.randn_like(o)).sum() + (final * torch.randn_like(final)).sum()).backward()
    for name, x in zip(NAMES, (q, k, v, g, beta, state), strict=True):
        assert torch.isfinite(x.grad).all(), name


def test_bf16_inputs_give_bf16_outputs_and_fp32_state():
    q, k, v, g, beta, _ = (x.detach() for x in make_inputs(1, 70))
    for op in (chunk_kda, recurrent_kda, naive_kda):
        o, final = op(*(x.bfloat16() for x in (q, k, v, g, beta)), output_final_state=True)
        assert o.dtype == torch.bfloat16 and final.dtype == torch.float32
        torch.testing.assert_close(o.float(), op(q, k, v, g, beta)[0], atol=0.1, rtol=0.05)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda a: a.update(g=a["g"][..., 0]), "g must have shape"),
        (lambda a: a.update(beta=a["beta"][..., None]), "beta must have shape"),
        *BAD_STATE_AND_OFFSETS,
    ],
)
def test_bad_input_raises(change, message):
    assert_refused((chunk_kda, recurrent_kda, naive_kda), NAMES[:5], make_inputs(1, 20)[:5], change, message)


@pytest.mark.parametrize("l2norm", [False, True])
def test_matches_transformers_torch_path(l2norm):
    kimi = pytest.importorskip("transformers.models.kimi_linear.modeling_kimi_linear",
                               reason="this transformers has no Kimi Linear (transformers 5.16 does not)")
    q, k, v, g, beta, state = (x.detach().double() for x in make_inputs(2, 150))
    for ours, theirs in ((chunk_kda, kimi.chunk_kimi_delta_attention),
                         (recurrent_kda, kimi.recurrent_kimi_delta_attention)):
        o, final = ours(q, k, v, g, beta, initial_state=state, output_final_state=True,
                        use_qk_l2norm_in_kernel=l2norm)
        o_ref, final_ref = theirs(q, k, v, g, beta, initial_state=state, output_final_state=True,
                                  use_qk_l2norm_in_kernel=l2norm)
        torch.testing.assert_close(o.double(), o_ref.double(), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(final.double(), final_ref.double(), atol=1e-5, rtol=1e-5)
