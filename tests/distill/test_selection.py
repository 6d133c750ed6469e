"""KL-guided layer selection on a teacher where one layer's attention matters most by construction."""

from __future__ import annotations

import pytest
import torch

from memlm.distill import hybrid_from_teacher, restore_attention
from memlm.distill.selection import kl_to_teacher, select_attention_layers
from tests.distill.teachers import batch, tiny_teacher


def teacher_whose_layer_2_matters():
    """A Llama whose attention outputs are scaled down 100x but in layer 2: only that attention shapes the logits
    (the students' mixers take o_proj from the teacher, so their outputs are as small)."""
    teacher = tiny_teacher("llama")
    with torch.no_grad():
        for i in (0, 1, 3):
            teacher.model.layers[i].self_attn.o_proj.weight.mul_(0.01)
            teacher.model.layers[i].self_attn.o_proj.bias.mul_(0.01)
    return teacher


def test_selection_finds_the_layer_that_matters():
    teacher = teacher_whose_layer_2_matters()
    student = hybrid_from_teacher(teacher, [], mixer="gated_deltanet")
    batches = [batch(seed) for seed in range(2)] + [batch(5)[0]]  # (ids, mask) pairs and a bare tensor
    before = {n: p.clone() for n, p in student.named_parameters()}
    selection = select_attention_layers(teacher, student, batches, num_keep=1, progress=False)
    assert selection.layers == [2] and selection.ranking[0] == 2
    assert sorted(selection.kl) == [0, 1, 2, 3]
    others = [selection.kl[i] for i in (0, 1, 3)]
    assert selection.kl[2] < 0.5 * min(others), selection.kl  # measured: 0.16 against >= 0.58
    assert selection.baseline_kl > selection.kl[2]
    assert all(torch.equal(p, before[n]) for n, p in student.named_parameters())  # the student is unchanged
    two = select_attention_layers(teacher, student, batches, num_keep=2, progress=False)
    assert two.layers == sorted(two.ranking[:2]) and 2 in two.layers
    assert two.as_dict()["kl"] == two.kl


def test_restoring_every_layer_gives_kl_zero_and_finetune_sees_each_candidate():
    teacher = tiny_teacher("qwen3")
    student = hybrid_from_teacher(teacher, [], mixer="gla")
    batches = [batch(0)]
    assert kl_to_teacher(teacher, restore_attention(teacher, student, [0, 1, 2, 3]), batches) < 1e-8
    seen = []
    selection = select_attention_layers(teacher, student, batches, num_keep=0, progress=False,
                                        finetune=lambda model: seen.append(model.config.mixer_types))
    assert selection.layers == [] and len(seen) == 4
    assert seen[1] == ["gla", "full_attention", "gla", "gla"]


def test_bad_arguments_fail_before_any_work():
    teacher = tiny_teacher("llama")
    student = hybrid_from_teacher(teacher, [], mixer="gla")
    with pytest.raises(ValueError, match=r"num_keep=5 is not allowed: an integer in \[0, 4\]"):
        select_attention_layers(teacher, student, [batch()], num_keep=5)
    with pytest.raises(ValueError, match="batches is empty"):
        select_attention_layers(teacher, student, [], num_keep=1)
    with pytest.raises(ValueError, match="a batch must be"):
        select_attention_layers(teacher, student, ["text"], num_keep=1)
    with pytest.raises(ValueError, match=r"layers \[3\] are attention"):
        select_attention_layers(teacher, hybrid_from_teacher(teacher, [3]), [batch()], num_keep=1)
