"""Long sequences in blocks (memlm.ops.common.blocks): every chunked op cut into blocks of 4 chunks of 16 tokens
(64 tokens) against its token-by-token reference: values, final states, every input gradient, with packed documents
that cross block boundaries, an empty document and initial states."""

import pytest
import torch

from memlm.ops import chunk_based, chunk_ssd, naive_based
from memlm.ops.common import blocks
from memlm.ops.common.blocks import block_tokens
from tests.ops import test_gated_delta_rule, test_gla, test_kda, test_ssd

CHUNK = 16
PACKED = torch.tensor([0, 50, 50, 130, 300])  # an empty document; documents across the block ends 64, 128, 192, 256


@pytest.fixture(autouse=True)
def small_blocks(monkeypatch):
    monkeypatch.setattr(blocks, "BLOCK_ELEMENTS", 1)  # the minimum: MIN_BLOCK_CHUNKS chunks per block
    assert block_tokens(2, 2, 40, CHUNK) == 64


@pytest.mark.parametrize("packed", [False, True])
def test_gated_delta_rule_in_blocks(packed):
    inputs = test_gated_delta_rule.make_inputs(1, 300, num_states=4) if packed else test_gated_delta_rule.make_inputs(
        2, 300)
    test_gated_delta_rule.assert_ops_agree(inputs, op_kwargs={"chunk_size": CHUNK},
                                           **({"cu_seqlens": PACKED} if packed else {}))


@pytest.mark.parametrize("packed", [False, True])
def test_gla_in_blocks(packed):
    inputs = test_gla.make_inputs(1, 300, num_states=4) if packed else test_gla.make_inputs(2, 300)
    test_gla.assert_ops_agree(inputs, chunk_size=CHUNK, **({"cu_seqlens": PACKED} if packed else {}))


@pytest.mark.parametrize("packed", [False, True])
def test_kda_in_blocks(packed):
    inputs = test_kda.make_inputs(1, 300, num_states=4) if packed else test_kda.make_inputs(2, 300)
    test_kda.assert_ops_agree(inputs, chunk_size=CHUNK, **({"cu_seqlens": PACKED} if packed else {}))


@pytest.mark.parametrize("packed", [False, True])
def test_ssd_in_blocks(packed):
    def op(*args, **kwargs):
        return chunk_ssd(*args, chunk_size=CHUNK, **kwargs)

    inputs = test_ssd.make_inputs(1, 300, num_states=4) if packed else test_ssd.make_inputs(2, 300)
    test_ssd.assert_ops_agree(inputs, op=op, **({"cu_seqlens": PACKED} if packed else {}))


def test_based_in_blocks():
    generator = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 300, 2, n, generator=generator, dtype=torch.float64).requires_grad_() for n in (4, 4, 6))
    y, _ = chunk_based(q, k, v, chunk_size=CHUNK)
    reference = naive_based(q, k, v)
    torch.testing.assert_close(y, reference, atol=2e-5, rtol=1e-4)
    weights = torch.randn_like(y)
    grads = torch.autograd.grad((y * weights).sum(), (q, k, v))
    expected = torch.autograd.grad((reference * weights).sum(), (q, k, v))
    for got, want in zip(grads, expected, strict=True):
        torch.testing.assert_close(got, want, atol=2e-5, rtol=1e-4)
