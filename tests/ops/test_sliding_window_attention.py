"""Blockwise sliding-window attention against the dense masked definition."""

import pytest
import torch

from memlm.ops.sliding_window_attention import chunk_sliding_window_attention, naive_sliding_window_attention


@pytest.mark.parametrize(("length", "window"), [(1, 4), (7, 4), (64, 16), (70, 16), (50, 128)])
def test_blockwise_equals_the_dense_definition(length, window):
    g = torch.Generator().manual_seed(0)
    q = torch.randn(2, length, 4, 8, generator=g, dtype=torch.float64, requires_grad=True)  # [B, T, H, d]
    k, v = (torch.randn(2, length, 2, 8, generator=g, dtype=torch.float64, requires_grad=True) for _ in range(2))
    out = chunk_sliding_window_attention(q, k, v, window, 8**-0.5)
    reference = naive_sliding_window_attention(q, k, v, window, 8**-0.5)
    torch.testing.assert_close(out, reference)
    weights = torch.randn_like(out)
    for got, want in zip(torch.autograd.grad((out * weights).sum(), (q, k, v)),
                         torch.autograd.grad((reference * weights).sum(), (q, k, v)), strict=True):
        torch.testing.assert_close(got, want)
