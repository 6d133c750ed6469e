"""Prefix linear attention: chunked and recurrent forms against the quadratic definition, ragged prefixes."""

import pytest
import torch

from memlm.ops.prefix_linear_attention import (
    chunk_prefix_linear_attention,
    naive_prefix_linear_attention,
    prefix_token_mask,
    recurrent_prefix_linear_attention,
)

TOL = {"atol": 2e-5, "rtol": 1e-4}  # the ops accumulate in fp32; the reference runs in fp64


def inputs(batch=3, length=150, heads=2, d=8, dv=12):
    g = torch.Generator().manual_seed(0)
    return [torch.randn(batch, length, heads, n, generator=g, dtype=torch.float64).requires_grad_()
            for n in (d, d, dv, d, dv)]


@pytest.mark.parametrize("op", [chunk_prefix_linear_attention, recurrent_prefix_linear_attention])
@pytest.mark.parametrize("length", [1, 63, 150])  # not multiples of the chunk (64)
def test_chunked_and_recurrent_forms_equal_the_definition_with_ragged_prefixes(op, length):
    q, k, v, ke, ve = inputs(length=length)
    prefix_length = torch.tensor([0, length // 2, length])  # none, half, all: one per row
    mask = prefix_token_mask(prefix_length, 3, length)
    y, _ = op(q, k, v, ke, ve, mask)
    reference = naive_prefix_linear_attention(q, k, v, ke, ve, prefix_length)
    torch.testing.assert_close(y, reference, **TOL)
    weights = torch.randn_like(y)
    grads = torch.autograd.grad((y * weights).sum(), (q, k, v, ke, ve))
    expected = torch.autograd.grad((reference * weights).sum(), (q, k, v, ke, ve))
    for got, want in zip(grads, expected, strict=True):
        torch.testing.assert_close(got, want, **TOL)


def test_prefix_reads_ahead_and_the_suffix_stays_causal():
    q, k, v, ke, ve = (t.detach() for t in inputs(batch=1, length=40))
    mask = prefix_token_mask(16, 1, 40)
    y, _ = chunk_prefix_linear_attention(q, k, v, ke, ve, mask)
    changed = [t.clone() for t in (q, k, v, ke, ve)]
    for t in changed:
        t[:, 12] += 1.0  # a later prefix token
    y_changed, _ = chunk_prefix_linear_attention(*changed, mask)
    assert not torch.allclose(y[:, :12], y_changed[:, :12])  # earlier prefix positions see it
    changed = [t.clone() for t in (q, k, v, ke, ve)]
    for t in changed:
        t[:, 30] += 1.0  # a suffix token
    y_changed, _ = chunk_prefix_linear_attention(*changed, mask)
    torch.testing.assert_close(y[:, :30], y_changed[:, :30])  # nothing before it depends on it
    assert not torch.allclose(y[:, 30:], y_changed[:, 30:])


def test_final_state_continues_decoding():
    q, k, v, ke, ve = (t.detach() for t in inputs(batch=2, length=50))
    prefix_length = torch.tensor([20, 35])
    whole, _ = chunk_prefix_linear_attention(q, k, v, ke, ve, prefix_token_mask(prefix_length, 2, 50))
    head, state = chunk_prefix_linear_attention(
        *(t[:, :35] for t in (q, k, v, ke, ve)), prefix_token_mask(prefix_length, 2, 35), output_final_state=True
    )
    outputs = [head]
    for t in range(35, 50):
        step, state = recurrent_prefix_linear_attention(
            *(x[:, t:t + 1] for x in (q, k, v, ke, ve)), prefix_token_mask(0, 2, 1), initial_state=state,
            output_final_state=True,
        )
        outputs.append(step)
    torch.testing.assert_close(torch.cat(outputs, dim=1), whole, **TOL)


def test_packed_documents_each_read_their_own_prefix():
    q, k, v, ke, ve = (t.detach() for t in inputs(batch=1, length=90))
    cu_seqlens = torch.tensor([0, 20, 90])
    prefix_length = torch.tensor([5, 30])
    mask = prefix_token_mask(prefix_length, 1, 90, cu_seqlens)
    packed, _ = chunk_prefix_linear_attention(q, k, v, ke, ve, mask, cu_seqlens=cu_seqlens)
    for (start, end), length in zip(((0, 20), (20, 90)), prefix_length, strict=True):
        alone = naive_prefix_linear_attention(*(t[:, start:end] for t in (q, k, v, ke, ve)), length[None])
        torch.testing.assert_close(packed[:, start:end], alone, **TOL)


def test_prefix_token_mask_rows_and_documents():
    assert prefix_token_mask(torch.tensor([1, 3]), 2, 4).tolist() == [[True, False, False, False], [True] * 3 + [False]]
    packed = prefix_token_mask(torch.tensor([2, 1]), 1, 5, torch.tensor([0, 3, 5]))
    assert packed.tolist() == [[True, True, False, True, False]]


@pytest.mark.parametrize("bad", [5, -1, torch.tensor([1, 2, 3]), torch.tensor([1.0, 2.0]), "2"])
def test_bad_prefix_lengths_are_refused(bad):
    with pytest.raises(ValueError, match="prefix_length"):
        prefix_token_mask(bad, 2, 4)
