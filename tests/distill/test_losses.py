"""distillation_loss against a hand computation."""

from __future__ import annotations

import math

import pytest
import torch

from memlm.distill.losses import distillation_loss


def test_matches_a_hand_computation():
    torch.manual_seed(0)
    student, teacher = torch.randn(2, 3, 5), torch.randn(2, 3, 5)
    mask = torch.tensor([[0, 1, 1], [1, 1, 1]])
    labels = torch.tensor([[-100, 2, 4], [1, -100, 3]])
    tau, weight = 2.0, 0.5
    kls = []
    for b in range(2):
        for t in range(3):
            if not mask[b, t]:
                continue
            p = [math.exp(x / tau) for x in teacher[b, t].tolist()]
            q = [math.exp(x / tau) for x in student[b, t].tolist()]
            p, q = [x / sum(p) for x in p], [x / sum(q) for x in q]
            kls.append(sum(pi * math.log(pi / qi) for pi, qi in zip(p, q, strict=True)))
    # next-token targets: (b=0, t=1) -> labels[0, 2] = 4; (b=1, t=1) -> labels[1, 2] = 3; labels[1, 1] is -100
    ces = []
    for b, t, target in ((0, 1, 4), (1, 1, 3)):
        row = student[b, t].tolist()
        ces.append(math.log(sum(math.exp(x) for x in row)) - row[target])
    expected = tau**2 * sum(kls) / len(kls) + weight * sum(ces) / len(ces)
    got = distillation_loss(student, teacher, mask, labels, temperature=tau, ce_weight=weight)
    assert got.item() == pytest.approx(expected, rel=1e-5)


def test_zero_for_identical_logits_and_positive_otherwise():
    logits = torch.randn(2, 4, 7)
    assert distillation_loss(logits, logits.clone()).item() == pytest.approx(0.0, abs=1e-6)
    assert distillation_loss(logits + torch.randn(2, 4, 7), logits).item() > 0


def test_gradient_reaches_the_student_only():
    student = torch.randn(1, 3, 4, requires_grad=True)
    teacher = torch.randn(1, 3, 4)
    distillation_loss(student, teacher, temperature=3.0).backward()
    assert student.grad.abs().sum() > 0


@pytest.mark.parametrize("kwargs, message", [
    (dict(teacher_logits=torch.zeros(1, 3, 5)), "must both be"),
    (dict(attention_mask=torch.ones(1, 2)), r"attention_mask must be \[batch, seq_len\]"),
    (dict(temperature=0.0), "temperature=0.0"),
    (dict(ce_weight=-1.0), "ce_weight=-1.0"),
    (dict(ce_weight=1.0), "needs labels"),
    (dict(attention_mask=torch.zeros(1, 3)), "no token"),
])
def test_bad_arguments(kwargs, message):
    arguments = {"student_logits": torch.zeros(1, 3, 4), "teacher_logits": torch.zeros(1, 3, 4), **kwargs}
    with pytest.raises(ValueError, match=message):
        distillation_loss(**arguments)
