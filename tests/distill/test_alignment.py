"""Stage 1: the teacher's attention inputs/outputs, the alignment loss, its training."""

from __future__ import annotations

import pytest
import torch

from memlm.distill import hybrid_from_teacher
from memlm.distill.alignment import alignment_loss, attention_io, mixer_parameters
from tests.distill.teachers import batch, tiny_teacher


def test_attention_io_is_what_the_attention_sees_and_returns():
    teacher = tiny_teacher("qwen3")
    ids, mask = batch()
    captured = attention_io(teacher, ids, mask, layers=[0, 2])
    assert sorted(captured) == [0, 2]
    # layer 0's attention input is the input norm of the embeddings; its output, re-run by hand
    with torch.no_grad():
        embedded = teacher.model.embed_tokens(ids)
        normed = teacher.model.layers[0].input_layernorm(embedded)
        hidden = teacher(ids, attention_mask=mask, output_hidden_states=True).hidden_states
    x, y = captured[0]
    assert x.shape == y.shape == (2, 12, 32)
    torch.testing.assert_close(x, normed)
    # the residual stream after layer 2's attention: hidden_2 + y_2; the MLP adds the rest of hidden_3
    layer = teacher.model.layers[2]
    with torch.no_grad():
        after = hidden[2] + captured[2][1]
        torch.testing.assert_close(after + layer.mlp(layer.post_attention_layernorm(after)), hidden[3])
    hooks = teacher.model.layers[0].self_attn._forward_hooks.values()
    assert all(hook.__name__ != "capture" for hook in hooks)  # ours removed (transformers installs its own)


@pytest.mark.parametrize("mixer", ["gated_deltanet", "gla"])
def test_training_the_mixers_alone_lowers_every_layers_error(mixer):
    teacher = tiny_teacher("llama")
    student = hybrid_from_teacher(teacher, keep_attention=[3], mixer=mixer)
    ids, mask = batch(rows=4, length=16)
    captured = attention_io(teacher, ids, mask)
    replaced = [0, 1, 2]

    def losses():
        return [alignment_loss(student, i, *captured[i], mask) for i in replaced]

    before = [loss.item() for loss in losses()]
    parameters = mixer_parameters(student)
    assert {id(p) for p in parameters} == {id(p) for i in replaced for p in student.model.layers[i].mixer.parameters()}
    optimizer = torch.optim.Adam(parameters, lr=3e-3)
    frozen = student.model.layers[0].mlp.up_proj.weight.clone()
    for _ in range(15):
        optimizer.zero_grad()
        sum(losses()).backward()
        optimizer.step()
    after = [loss.item() for loss in losses()]
    assert all(a < 0.9 * b for a, b in zip(after, before, strict=True)), (before, after)
    assert torch.equal(student.model.layers[0].mlp.up_proj.weight, frozen)
    # the kept layer is the teacher's attention: no error
    assert alignment_loss(student, 3, *captured[3], mask).item() < 1e-10


def test_padding_is_not_counted():
    teacher = tiny_teacher("qwen2")
    student = hybrid_from_teacher(teacher, [], mixer="gla")
    ids, mask = batch()
    x, y = attention_io(teacher, ids, mask, layers=[1])[1]
    loss = alignment_loss(student, 1, x, y, mask)
    y_bad = y.clone()
    y_bad[0, :3] = 1e3  # what the teacher outputs at pads changes nothing
    assert alignment_loss(student, 1, x, y_bad, mask).item() == pytest.approx(loss.item())
    with pytest.raises(ValueError, match=r"layer holds \[7\]"):
        alignment_loss(student, 7, x, y, mask)
    with pytest.raises(ValueError, match="must both be"):
        alignment_loss(student, 1, x, y[:, :5], mask)


@pytest.mark.parametrize("name", ["mistral", "qwen2-sliding"])
def test_a_kept_sliding_window_layer_has_no_error(name):
    teacher = tiny_teacher(name)
    student = hybrid_from_teacher(teacher, [3], mixer="hgrn2")  # layer 3 is sliding in both
    assert student.config.layer_types[3] == "sliding_attention"
    ids, mask = batch(length=14)  # longer than two windows of 5
    for attention_mask in (mask, None):
        x, y = attention_io(teacher, ids, attention_mask, layers=[3])[3]
        assert alignment_loss(student, 3, x, y, attention_mask).item() < 1e-10
    assert len(mixer_parameters(student)) == 3 * 5 + 1  # 3 HGRN-2 mixers of 5 tensors, the lower bounds
