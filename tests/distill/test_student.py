"""hybrid_from_teacher: the identity student, the initialization of replaced layers, the checks."""

from __future__ import annotations

import pytest
import torch

import memlm
from memlm.distill import SUPPORTED_TEACHERS, hybrid_from_teacher, restore_attention
from memlm.layers.registry import linear_mixers
from tests.distill.teachers import TEACHERS, batch, tiny_teacher


@pytest.mark.parametrize("model_type", sorted(TEACHERS))
def test_keeping_every_layer_gives_the_teachers_logits(model_type):
    teacher = tiny_teacher(model_type)
    student = hybrid_from_teacher(teacher, keep_attention=1.0).eval()
    assert isinstance(student, memlm.MemLMForCausalLM)
    expected_types = {"mistral": ["sliding_attention"] * 4, "qwen2-sliding": ["full_attention"] * 2 + [
        "sliding_attention"] * 2}.get(model_type, ["full_attention"] * 4)
    assert student.config.layer_types == expected_types
    ids, mask = batch()
    with torch.no_grad():
        expected = teacher(ids, attention_mask=mask).logits
        got = student(ids, attention_mask=mask).logits
        unpadded = student(ids).logits  # Mistral: longer than two windows, read in blocks
    real = mask.bool()
    assert expected.abs().max() > 1  # not trivially small
    torch.testing.assert_close(got[real], expected[real], atol=1e-4, rtol=0)
    torch.testing.assert_close(unpadded, teacher(ids).logits, atol=1e-4, rtol=0)


def test_student_takes_the_teachers_dtype_and_weights():
    teacher = tiny_teacher("qwen3").to(torch.bfloat16)
    student = hybrid_from_teacher(teacher, [1, 3])
    assert next(student.parameters()).dtype == torch.bfloat16
    assert student.config.tie_word_embeddings and student.lm_head.weight is student.model.embed_tokens.weight
    assert torch.equal(student.model.embed_tokens.weight, teacher.model.embed_tokens.weight)
    assert torch.equal(student.model.norm.weight, teacher.model.norm.weight)
    for i in range(4):
        ours, theirs = student.model.layers[i], teacher.model.layers[i]
        assert torch.equal(ours.mlp.down_proj.weight, theirs.mlp.down_proj.weight)
        assert torch.equal(ours.input_layernorm.weight, theirs.input_layernorm.weight)
    assert torch.equal(student.model.layers[1].mixer.q_norm.weight, teacher.model.layers[1].self_attn.q_norm.weight)


def expanded(weight: torch.Tensor, head_dim: int = 8, heads: int = 4) -> torch.Tensor:
    """A key/value projection [Hkv * D, in] written out for ``heads`` query heads, head h <- kv head h // groups."""
    kv_heads = weight.shape[0] // head_dim
    rows = [weight[(h // (heads // kv_heads)) * head_dim:(h // (heads // kv_heads) + 1) * head_dim]
            for h in range(heads)]
    return torch.cat(rows)


@pytest.mark.parametrize("mixer", ["gated_deltanet", "gla", "deltanet", "kda", "hgrn2", "mamba2"])
def test_replaced_layers_start_from_the_attention_projections(mixer):
    teacher = tiny_teacher("llama")
    student = hybrid_from_teacher(teacher, keep_attention=0.25, mixer=mixer)
    report = student.distill_init_report
    assert report.kept == [3] and report.replaced == [0, 1, 2]
    assert student.config.mixer_types == [mixer, mixer, mixer, "full_attention"]
    attention = teacher.model.layers[1].self_attn
    q, k, v, o = (getattr(attention, f"{p}_proj").weight for p in "qkvo")
    k, v = expanded(k), expanded(v)
    layer = student.model.layers[1].mixer
    width = 32  # 4 heads x 8
    if mixer == "gated_deltanet":
        assert torch.equal(layer.in_proj_qkv.weight, torch.cat([q, k, v]))
        assert torch.equal(layer.out_proj.weight, o)
    elif mixer == "hgrn2":
        assert torch.equal(layer.q_proj.weight, q) and torch.equal(layer.i_proj.weight, v)
        assert torch.equal(layer.o_proj.weight, o)
        assert "k_proj.weight" in report.not_used[1] and "f_proj.weight" in report.default_init[1]
    elif mixer == "mamba2":  # in_proj rows: gate | x | B | C | dt
        assert torch.equal(layer.in_proj.weight[width:4 * width], torch.cat([v, k, q]))
        assert torch.equal(layer.out_proj.weight, o)
        assert report.copied[1]["in_proj.weight"] == "[default; v expanded; k expanded; q; default]"
    else:
        for name, weight in zip("qkvo", (q, k, v, o), strict=True):
            assert torch.equal(getattr(layer, f"{name}_proj").weight, weight)
    # Llama with attention_bias: the biases have no place in the mixer, and say so
    assert {"q_proj.bias", "k_proj.bias", "v_proj.bias", "o_proj.bias"} <= set(report.not_used[1])
    ids, _ = batch()
    assert torch.isfinite(student(ids).logits).all()


def test_a_shape_that_does_not_line_up_keeps_the_default_and_is_reported():
    teacher = tiny_teacher("qwen2")
    student = hybrid_from_teacher(teacher, [], mixer="based", mixer_config={"linear_key_head_dim": 4})
    report = student.distill_init_report
    assert set(report.copied[0]) == {"v_proj.weight", "o_proj.weight"}
    assert any(entry.startswith("q_proj.weight") and "does not fit" in entry for entry in report.default_init[0])
    assert "q_proj.weight" in report.not_used[0] and "q_proj.bias" in report.not_used[0]
    assert report.as_dict()["replaced"] == [0, 1, 2, 3]


def test_fraction_places_attention_as_hybrid_ratio_does():
    teacher = tiny_teacher("llama")
    for fraction, ratio in ((0.0, "1:0"), (0.25, "3:1"), (0.5, "1:1"), (0.75, "1:3"), (1.0, "0:1")):
        student = hybrid_from_teacher(teacher, fraction)
        assert student.config.layer_types == memlm.hybrid_layer_types(4, ratio), fraction
    assert hybrid_from_teacher(teacher, 0.25).distill_init_report.kept == [3]
    assert hybrid_from_teacher(teacher, 0.3).distill_init_report.kept == [3]  # round(0.3 * 4) = 1 layer


def test_restoring_every_layer_gives_the_teacher_back():
    teacher = tiny_teacher("qwen3")
    student = hybrid_from_teacher(teacher, [], mixer="gla")
    restored = restore_attention(teacher, student, [0, 2])
    assert restored.config.mixer_types == ["full_attention", "gla", "full_attention", "gla"]
    assert restored.distill_init_report.kept == [0, 2] and restored.distill_init_report.replaced == [1, 3]
    assert torch.equal(restored.model.layers[1].mixer.g_proj.weight, student.model.layers[1].mixer.g_proj.weight)
    everything = restore_attention(teacher, restored, [1, 3])
    ids, mask = batch()
    with torch.no_grad():
        torch.testing.assert_close(everything(ids, attention_mask=mask).logits[mask.bool()],
                                   teacher(ids, attention_mask=mask).logits[mask.bool()], atol=1e-4, rtol=0)
    with pytest.raises(ValueError, match="already attention"):
        restore_attention(teacher, restored, [0])


def test_teacher_from_a_directory(tmp_path):
    teacher = tiny_teacher("qwen2")
    teacher.save_pretrained(tmp_path)
    student = hybrid_from_teacher(str(tmp_path), [0])
    assert torch.equal(student.model.layers[0].mixer.q_proj.bias, teacher.model.layers[0].self_attn.q_proj.bias)
    assert not student.model.layers[0].mixer.o_proj.bias.any()  # Qwen2's o_proj has no bias: memlm's is zero


@pytest.mark.parametrize("kwargs, message", [
    (dict(keep_attention=[4]), r"keep_attention holds 4: layer indices are integers in \[0, 4\)"),
    (dict(keep_attention=[-1]), r"holds -1"),
    (dict(keep_attention=[1, 1]), r"repeats layers \[1\]"),
    (dict(keep_attention=1.5), r"keep_attention=1.5: a fraction must be in \[0, 1\]"),
    (dict(keep_attention=2), r"give a list of layer indices"),
    (dict(keep_attention=[0], mixer="full_attention"), r"not a registered linear mixer; allowed: \["),
    (dict(keep_attention=[0], mixer_config={"hidden_size": 8}), r"mixer_config keys \['hidden_size'\]"),
])
def test_bad_arguments_fail_before_any_work(kwargs, message, monkeypatch):
    teacher = tiny_teacher("llama")
    monkeypatch.setattr(teacher, "state_dict", lambda *a, **k: pytest.fail("weights read"))
    with pytest.raises(ValueError, match=message):
        hybrid_from_teacher(teacher, **kwargs)


def test_unsupported_teachers_are_refused():
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=32))
    with pytest.raises(ValueError, match=r"model_type='gpt2' is not supported; supported: \['llama'"):
        hybrid_from_teacher(gpt2, [0])
    llama = LlamaForCausalLM(LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                         num_attention_heads=2, mlp_bias=True))
    with pytest.raises(ValueError, match="mlp_bias=True cannot be represented"):
        hybrid_from_teacher(llama, [0])
    assert set(SUPPORTED_TEACHERS) == {"llama", "mistral", "qwen2", "qwen3"}
    assert set(linear_mixers()) >= {"gated_deltanet", "gla"}


def test_a_directory_is_checked_before_its_weights_are_read(tmp_path):
    tiny_teacher("llama").config.save_pretrained(tmp_path)  # config.json only: reading weights would fail
    with pytest.raises(ValueError, match=r"keep_attention holds 9"):
        hybrid_from_teacher(str(tmp_path), [9])
    with pytest.raises(ValueError, match=r"mixer='mla' is not a registered linear mixer"):
        hybrid_from_teacher(str(tmp_path), [0], mixer="mla")
