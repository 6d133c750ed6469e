from itertools import pairwise

import pytest
import torch
from torch.nn import functional as F

from memlm.ops import chunk_gated_delta_rule, naive_gated_delta_rule, recurrent_gated_delta_rule
from tests.ops import agreement
from tests.ops.agreement import BAD_STATE_AND_OFFSETS, assert_refused

NAMES = ["q", "k", "v", "g", "beta", "initial_state"]


def make_inputs(batch, seq_len, heads=2, dk=16, dv=24, num_states=None, decay=1.0):
    q = torch.randn(batch, seq_len, heads, dk)
    k = F.normalize(torch.randn(batch, seq_len, heads, dk), dim=-1)
    v = torch.randn(batch, seq_len, heads, dv)
    g = F.logsigmoid(torch.randn(batch, seq_len, heads)) * decay
    beta = torch.rand(batch, seq_len, heads)
    state = torch.randn(num_states or batch, heads, dk, dv)
    return [x.requires_grad_() for x in (q, k, v, g, beta, state)]


def assert_ops_agree(inputs, tol=1e-4, **kwargs):
    agreement.assert_ops_agree(chunk_gated_delta_rule, naive_gated_delta_rule, inputs, NAMES, tol, **kwargs)


def test_chunk_matches_recurrence_values_and_gradients():
    # T = 1000 is not a multiple of the chunk (64); with an initial state.
    assert_ops_agree(make_inputs(2, 1000))


def test_no_decay_the_delta_rule_of_deltanet():
    """g = 0 (DeltaNet: S_t = (I - beta_t k_t k_t^T) S_{t-1} + beta_t k_t v_t^T): chunked and recurrent == naive."""
    inputs = make_inputs(2, 700, decay=0.0)
    assert not inputs[3].any()
    assert_ops_agree(inputs)
    q, k, v, g, beta, state = (x.detach() for x in inputs)
    recurrent = recurrent_gated_delta_rule(q, k, v, g, beta, initial_state=state, output_final_state=True)
    naive = naive_gated_delta_rule(q, k, v, g, beta, initial_state=state, output_final_state=True)
    for a, b in zip(recurrent, naive, strict=True):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=0)


@pytest.mark.parametrize("seq_len", [1, 5, 64, 65])
def test_short_and_boundary_lengths(seq_len):
    assert_ops_agree(make_inputs(1, seq_len))


def test_cu_seqlens_match_recurrence_and_documents_alone():
    cu_seqlens = torch.tensor([0, 100, 101, 400, 1000])
    inputs = make_inputs(1, 1000, num_states=4)
    assert_ops_agree(inputs, cu_seqlens=cu_seqlens)
    packed, finals = chunk_gated_delta_rule(
        *inputs[:5], initial_state=inputs[5], output_final_state=True, cu_seqlens=cu_seqlens
    )
    for doc, (start, end) in enumerate(pairwise(cu_seqlens.tolist())):
        alone, final = chunk_gated_delta_rule(
            *(x[:, start:end] for x in inputs[:5]), initial_state=inputs[5][doc : doc + 1], output_final_state=True
        )
        torch.testing.assert_close(packed[:, start:end], alone, atol=1e-5, rtol=0)
        torch.testing.assert_close(finals[doc : doc + 1], final, atol=1e-5, rtol=0)


def test_no_state_crosses_documents():
    cu_seqlens = torch.tensor([0, 70, 150])
    q, k, v, g, beta, _ = make_inputs(1, 150)
    o, _ = chunk_gated_delta_rule(q, k, v, g, beta, cu_seqlens=cu_seqlens)
    v2 = v.detach().clone()
    v2[:, :70] += 10.0  # change only the first document
    o2, _ = chunk_gated_delta_rule(q, k, v2, g, beta, cu_seqlens=cu_seqlens)
    torch.testing.assert_close(o[:, 70:], o2[:, 70:])


def test_strong_decay_is_stable():
    inputs = make_inputs(1, 300, decay=40.0)  # per-token log decay down to about -100
    assert_ops_agree(inputs)


def test_default_scale_and_no_final_state():
    q, k, v, g, beta, _ = make_inputs(1, 20)
    o, final = chunk_gated_delta_rule(q, k, v, g, beta)
    o_scaled, _ = chunk_gated_delta_rule(q * 16**-0.5, k, v, g, beta, scale=1.0)
    assert final is None
    torch.testing.assert_close(o, o_scaled, atol=1e-5, rtol=0)


def test_bf16_inputs_give_bf16_outputs_and_fp32_state():
    q, k, v, g, beta, _ = (x.detach() for x in make_inputs(1, 70))
    o, final = chunk_gated_delta_rule(q.bfloat16(), k.bfloat16(), v.bfloat16(), g, beta, output_final_state=True)
    assert o.dtype == torch.bfloat16 and final.dtype == torch.float32
    reference, _ = chunk_gated_delta_rule(q, k, v, g, beta)
    torch.testing.assert_close(o.float(), reference, atol=0.1, rtol=0.05)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda a: a.update(k=a["k"][..., :8]), "k must have q's shape"),
        (lambda a: a.update(v=a["v"][:, :5]), "v must be"),
        (lambda a: a.update(g=a["g"][..., None]), "g must have shape"),
        (lambda a: a.update(beta=a["beta"][:, :3]), "beta must have shape"),
        *BAD_STATE_AND_OFFSETS,
    ],
)
def test_bad_input_raises(change, message):
    ops = (chunk_gated_delta_rule, recurrent_gated_delta_rule, naive_gated_delta_rule)
    assert_refused(ops, NAMES[:5], make_inputs(1, 20)[:5], change, message)


def test_cu_seqlens_needs_batch_of_one():
    q, k, v, g, beta, _ = (x.detach() for x in make_inputs(2, 20))
    with pytest.raises(ValueError, match="batch of one"):
        chunk_gated_delta_rule(q, k, v, g, beta, cu_seqlens=torch.tensor([0, 10, 20]))
