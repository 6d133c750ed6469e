"""Checks the tests of the linear-recurrence ops share: an op against its token-by-token reference (values, final
states and every input gradient) and every form of an op refusing bad input.

``inputs`` are the op's positional tensors with the initial state last (as each test's ``make_inputs`` returns them).
"""

from itertools import pairwise

import pytest
import torch

BAD_STATE_AND_OFFSETS = [  # for inputs with heads = 2, dk = 16, dv = 24 and T = 20
    (lambda a: a.update(initial_state=torch.zeros(1, 2, 16, 16)), "initial_state must have shape"),
    (lambda a: a.update(cu_seqlens=torch.tensor([0, 5, 4, 20])), "cu_seqlens must rise"),
]


def run_with_grads(op, inputs, weights, **kwargs):
    """``o, final = op(*inputs[:-1], initial_state=inputs[-1], output_final_state=True)`` on fresh leaf copies of
    ``inputs``, then the backward of ``sum(o * weights[0]) + sum(final * weights[1])``; returns ``o``, ``final`` and
    the gradient of each input."""
    inputs = [x.detach().clone().requires_grad_() for x in inputs]
    o, final = op(*inputs[:-1], initial_state=inputs[-1], output_final_state=True, **kwargs)
    ((o * weights[0]).sum() + (final * weights[1]).sum()).backward()
    return o.detach(), final.detach(), [x.grad for x in inputs]


def assert_ops_agree(op, reference_op, inputs, names, tol, rtol=0.0, op_kwargs=None, **kwargs):
    """``op`` == ``reference_op`` on ``inputs`` (``names`` name them): outputs, final states and every input gradient
    (finite) within ``atol=tol`` and ``rtol``, for random output weights; ``op_kwargs`` go to ``op`` only, ``kwargs``
    to both."""
    with torch.no_grad():
        o, final = op(*inputs[:-1], initial_state=inputs[-1], output_final_state=True, **kwargs)
    weights = (torch.randn_like(o), torch.randn_like(final))
    result = run_with_grads(op, inputs, weights, **(op_kwargs or {}), **kwargs)
    reference = run_with_grads(reference_op, inputs, weights, **kwargs)
    torch.testing.assert_close(result[0], reference[0], atol=tol, rtol=rtol)
    torch.testing.assert_close(result[1], reference[1], atol=tol, rtol=rtol)
    for name, a, b in zip(names, result[2], reference[2], strict=True):
        assert torch.isfinite(a).all(), name
        torch.testing.assert_close(a, b, atol=tol, rtol=rtol, msg=lambda m, name=name: f"grad of {name}: {m}")


def assert_documents_alone(op, inputs, names, cu_seqlens, weights):
    """Packed documents (``cu_seqlens`` over a batch of one row) == each document alone through ``op``: outputs,
    final states and the gradients of every input (of the initial state, each document's row), to 1e-5, for the
    output weights ``weights`` (``[1, T, H, dv]`` and ``[N, H, dk, dv]``)."""
    packed, finals, grads = run_with_grads(op, inputs, weights, cu_seqlens=cu_seqlens)
    for doc, (start, end) in enumerate(pairwise(cu_seqlens.tolist())):
        alone = [x.detach()[:, start:end] for x in inputs[:-1]] + [inputs[-1].detach()[doc : doc + 1]]
        o, final, doc_grads = run_with_grads(op, alone, (weights[0][:, start:end], weights[1][doc : doc + 1]))
        torch.testing.assert_close(packed[:, start:end], o, atol=1e-5, rtol=0)
        torch.testing.assert_close(finals[doc : doc + 1], final, atol=1e-5, rtol=0)
        for name, a, b in zip(names[:-1], grads[:-1], doc_grads[:-1], strict=True):
            torch.testing.assert_close(a[:, start:end], b, atol=1e-5, rtol=0, msg=lambda m, n=name: f"{n}: {m}")
        torch.testing.assert_close(grads[-1][doc : doc + 1], doc_grads[-1], atol=1e-5, rtol=0)


def assert_refused(ops, names, inputs, change, message):
    """Each of ``ops`` raises a ValueError matching ``message`` on the keyword arguments ``names``: ``inputs`` after
    ``change(arguments)``."""
    args = dict(zip(names, (x.detach() for x in inputs), strict=True))
    change(args)
    for op in ops:
        with pytest.raises(ValueError, match=message):
            op(**args)
