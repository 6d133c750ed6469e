"""One decoding token through every ``recurrent_*`` op (``memlm.ops.common.recurrent.recurrent_step`` on the torch
path) against the op's token-by-token reference: outputs, final states and gradients; ``inplace_final_state`` writes
the final state into the initial state (also for longer inputs) and is refused where it cannot be honoured."""

import pytest
import torch

from memlm.ops import (
    chunk_based,
    naive_gated_delta_rule,
    naive_gla,
    naive_kda,
    naive_ssd,
    recurrent_based,
    recurrent_gated_delta_rule,
    recurrent_gla,
    recurrent_kda,
    recurrent_ssd,
)
from tests.ops import agreement, test_gated_delta_rule, test_gla, test_kda, test_ssd

# name -> (op, reference, make_inputs(batch, seq_len) with the initial state last, argument names)
OPS = {
    "gated_delta_rule": (recurrent_gated_delta_rule, naive_gated_delta_rule, test_gated_delta_rule.make_inputs,
                         test_gated_delta_rule.NAMES),
    "kda": (recurrent_kda, naive_kda, test_kda.make_inputs, test_kda.NAMES),
    "gla": (recurrent_gla, naive_gla, test_gla.make_inputs, test_gla.NAMES),
    "ssd": (recurrent_ssd, naive_ssd, test_ssd.make_inputs, test_ssd.NAMES),
}


@pytest.mark.parametrize("name", OPS)
def test_one_token_matches_the_reference_with_gradients(name):
    op, reference, make_inputs, names = OPS[name]
    agreement.assert_ops_agree(op, reference, make_inputs(3, 1), names, tol=1e-5)


@pytest.mark.parametrize("seq_len", [1, 4])
@pytest.mark.parametrize("name", OPS)
def test_in_place_final_state_is_the_initial_state(name, seq_len):
    op, reference, make_inputs, _ = OPS[name]
    *tensors, state = (x.detach() for x in make_inputs(3, seq_len))
    expected, expected_state = reference(*tensors, initial_state=state.clone(), output_final_state=True)
    o, final = op(*tensors, initial_state=state, output_final_state=True, inplace_final_state=True)
    assert final is state
    torch.testing.assert_close(o, expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(state, expected_state, atol=1e-5, rtol=0)
    assert op(*tensors, initial_state=state, inplace_final_state=True)[1] is None  # written, not returned


def test_based_in_place_step_continues_the_chunked_form():
    q, k, v = (torch.randn(2, 9, 2, n, dtype=torch.float64) for n in (4, 4, 6))
    whole, _ = chunk_based(q, k, v)
    _, state = chunk_based(q[:, :8], k[:, :8], v[:, :8], output_final_state=True)
    _, expected_state = chunk_based(q, k, v, output_final_state=True)
    step, final = recurrent_based(q[:, 8:], k[:, 8:], v[:, 8:], initial_state=state, output_final_state=True,
                                  inplace_final_state=True)
    assert final is state
    torch.testing.assert_close(step, whole[:, 8:], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(state, expected_state, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", OPS)
def test_in_place_needs_an_fp32_state_without_gradients(name):
    op, _, make_inputs, _ = OPS[name]
    *tensors, state = make_inputs(1, 1)
    with pytest.raises(ValueError, match=f"recurrent_{name}: inplace_final_state=True needs an fp32 initial_state"):
        op(*(x.detach() for x in tensors), inplace_final_state=True)
    with pytest.raises(ValueError, match=f"recurrent_{name}: inplace_final_state=True needs an fp32 initial_state"):
        op(*(x.detach() for x in tensors), initial_state=state.detach().double(), inplace_final_state=True)
    with pytest.raises(ValueError, match=f"recurrent_{name}: inplace_final_state=True needs inputs without gradients"):
        op(*tensors, initial_state=state.detach(), inplace_final_state=True)
