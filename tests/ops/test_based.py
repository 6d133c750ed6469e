"""Based linear attention: chunked and recurrent forms against the quadratic definition."""

import pytest
import torch

from memlm.ops.based import chunk_based, naive_based, recurrent_based, taylor_feature_map

TOL = {"atol": 2e-5, "rtol": 1e-4}  # the ops accumulate in fp32; the reference runs in fp64


def inputs(batch=2, length=150, heads=2, d=8, dv=12, dtype=torch.float64):
    g = torch.Generator().manual_seed(0)
    return [torch.randn(batch, length, heads, n, generator=g, dtype=dtype).requires_grad_() for n in (d, d, dv)]


def test_feature_map_is_the_second_order_taylor_expansion_of_exp():
    q, k = torch.randn(5, 16, dtype=torch.float64), torch.randn(5, 16, dtype=torch.float64)
    s = (q * k).sum(-1) / 4
    torch.testing.assert_close((taylor_feature_map(q) * taylor_feature_map(k)).sum(-1), 1 + s + s * s / 2)
    assert taylor_feature_map(q).shape == (5, 1 + 16 + 256)


@pytest.mark.parametrize("op", [chunk_based, recurrent_based])
@pytest.mark.parametrize("length", [1, 63, 150])  # not multiples of the chunk (64)
def test_chunked_and_recurrent_forms_equal_the_definition(op, length):
    q, k, v = inputs(length=length)
    y, _ = op(q, k, v)
    reference = naive_based(q, k, v)
    torch.testing.assert_close(y, reference, **TOL)
    weights = torch.randn_like(y)
    grads = torch.autograd.grad((y * weights).sum(), (q, k, v))
    expected = torch.autograd.grad((reference * weights).sum(), (q, k, v))
    for got, want in zip(grads, expected, strict=True):
        torch.testing.assert_close(got, want, **TOL)


def test_a_state_carries_the_prefix():
    q, k, v = inputs(length=150)
    whole, _ = chunk_based(q, k, v)
    first, state = chunk_based(q[:, :70], k[:, :70], v[:, :70], output_final_state=True)
    rest, _ = chunk_based(q[:, 70:], k[:, 70:], v[:, 70:], initial_state=state)
    step, _ = recurrent_based(q[:, 70:71], k[:, 70:71], v[:, 70:71], initial_state=state)
    torch.testing.assert_close(torch.cat([first, rest], dim=1), whole, **TOL)
    torch.testing.assert_close(step, whole[:, 70:71], **TOL)


def test_packed_documents_are_kept_apart():
    q, k, v = inputs(batch=1, length=90)
    cu_seqlens = torch.tensor([0, 20, 90])
    packed, _ = chunk_based(q, k, v, cu_seqlens=cu_seqlens)
    for start, end in ((0, 20), (20, 90)):
        alone, _ = chunk_based(q[:, start:end], k[:, start:end], v[:, start:end])
        torch.testing.assert_close(packed[:, start:end], alone, **TOL)


@pytest.mark.parametrize("op", [chunk_based, recurrent_based])
def test_mismatched_q_and_k_are_refused(op):
    q, k, v = inputs()
    with pytest.raises(ValueError, match=f"{op.__name__}: q .* and k .* must have one shape"):
        op(q, k[..., :4], v)


def test_masked_keys_count_for_nothing():
    q, k, v = inputs(batch=1, length=40)
    mask = torch.ones(1, 40)
    mask[:, :7] = 0  # left padding
    padded, _ = chunk_based(q, k, v, key_mask=mask)
    alone, _ = chunk_based(q[:, 7:], k[:, 7:], v[:, 7:])
    torch.testing.assert_close(padded[:, 7:], alone, **TOL)
