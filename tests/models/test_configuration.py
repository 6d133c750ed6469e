import pytest

from memlm import MemLMConfig, hybrid_layer_types

SMALL = dict(vocab_size=64, hidden_size=32, num_attention_heads=4, num_hidden_layers=4)


def test_hybrid_layer_types_patterns():
    assert hybrid_layer_types(8, "3:1") == (["linear_attention"] * 3 + ["full_attention"]) * 2
    assert hybrid_layer_types(3, "1:0") == ["linear_attention"] * 3
    assert hybrid_layer_types(3, "0:1") == ["full_attention"] * 3
    assert hybrid_layer_types(7, "6:1", attention="sliding_attention")[-1] == "sliding_attention"


@pytest.mark.parametrize("ratio", ["3-1", "a:b", "0:0", "3:1:1", "", None])
def test_malformed_ratio_raises(ratio):
    with pytest.raises(ValueError, match="hybrid ratio"):
        hybrid_layer_types(8, ratio)


def test_ratio_that_does_not_fit_raises():
    with pytest.raises(ValueError, match="does not fit num_hidden_layers=6"):
        hybrid_layer_types(6, "3:1")
    with pytest.raises(ValueError, match="does not fit"):
        MemLMConfig(**{**SMALL, "num_hidden_layers": 5}, hybrid_ratio="3:1")


def test_standard_fields_only_build_with_derived_linear_fields():
    config = MemLMConfig(**SMALL)
    assert config.layer_types == hybrid_layer_types(4, "3:1")
    assert config.head_dim == 8 and config.num_key_value_heads == 4
    assert (config.linear_num_key_heads, config.linear_key_head_dim, config.linear_value_head_dim) == (4, 8, 8)
    assert config.model_type == "memlm"


def test_rope_theta_is_accepted():
    assert MemLMConfig(**SMALL, rope_theta=5e5).rope_parameters["rope_theta"] == 5e5


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(layer_types=["linear_attention", "mamba", "full_attention", "full_attention"]), "mamba"),
        (dict(layer_types=["full_attention"] * 3), "layer_types has 3 entries but num_hidden_layers=4"),
        (dict(linear_attn_type="mamba2"), "linear_attn_type='mamba2'"),
        (dict(hidden_size=30), "hidden_size=30 is not divisible by num_attention_heads=4"),
        (dict(num_key_value_heads=3), "num_key_value_heads=3"),
        (dict(linear_num_key_heads=3, linear_num_value_heads=4), "linear_num_value_heads=4"),
        (dict(layer_types=["sliding_attention"] * 4), "sliding_window=None"),
        (dict(hidden_size=0), "hidden_size must be a positive integer"),
        (dict(linear_key_head_dim=0), "linear_key_head_dim must be a positive integer, got 0"),  # not the default
        (dict(memory_num_heads=0), "memory_num_heads must be a positive integer, got 0"),
        (dict(layer_types=["full_attention"] * 4, hybrid_ratio="3:1"), "disagrees with the layer_types"),
    ],
)
def test_bad_config_raises(kwargs, message):
    with pytest.raises(ValueError, match=message):
        MemLMConfig(**{**SMALL, **kwargs})


def test_a_keyword_close_to_a_field_is_refused_naming_the_field():
    with pytest.raises(ValueError, match=r"hiden_size=64, which is no field; did you mean 'hidden_size'"):
        MemLMConfig(**SMALL, hiden_size=64)
    with pytest.raises(ValueError, match=r"'num_hidden_layers'"):
        MemLMConfig(**SMALL, num_layers=4)
    # a key far from every field is kept as an attribute, as transformers does (hub configs carry extras)
    assert MemLMConfig(**SMALL, my_project_tag="x").my_project_tag == "x"


def test_keys_transformers_and_the_hub_write_still_load(tmp_path):
    import json

    from transformers import AutoConfig

    config = MemLMConfig(**SMALL, rope_theta=5e5, pad_token_id=0, eos_token_id=1)
    config.save_pretrained(tmp_path)
    assert MemLMConfig.from_pretrained(tmp_path).to_dict() == config.to_dict()
    saved = json.loads((tmp_path / "config.json").read_text())
    saved.update(auto_map={"AutoConfig": "configuration_memlm.MemLMConfig"}, architectures=["MemLMForCausalLM"],
                 torch_dtype="float32", _name_or_path="someone/memlm", id2label={"0": "a", "1": "b"},
                 output_hidden_states=False, return_dict=True, is_decoder=False, use_bfloat16=False,
                 max_length=20, num_beams=1, rope_scaling=None, _commit_hash="abc")
    (tmp_path / "config.json").write_text(json.dumps(saved))
    loaded = AutoConfig.from_pretrained(tmp_path)
    assert isinstance(loaded, MemLMConfig) and loaded.hidden_size == 32 and loaded.architectures == ["MemLMForCausalLM"]
    assert loaded.rope_parameters["rope_theta"] == 5e5


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(rms_norm_eps=0.0), r"rms_norm_eps=0.0 is not allowed: a finite number > 0"),
        (dict(rms_norm_eps=float("nan")), r"rms_norm_eps=nan"),
        (dict(rope_theta=-1.0), r"rope_theta=-1.0 is not allowed: the RoPE base, a finite number > 0"),
        (dict(rope_theta=0), r"rope_theta=0 is not allowed"),
        (dict(attention_dropout=1.0), r"attention_dropout=1.0 is not allowed: a probability in \[0, 1\)"),
        (dict(attention_dropout=-0.1), r"attention_dropout=-0.1"),
        (dict(hidden_act="nope"), r"hidden_act='nope' is unknown; allowed \(transformers' ACT2FN\): \[.*'silu'"),
        (dict(pad_token_id=64), r"pad_token_id=64 is not allowed: None or a token id in \[0, vocab_size=64\)"),
        (dict(pad_token_id=-1), r"pad_token_id=-1"),
        (dict(head_dim=7), r"head_dim=7 is not allowed: .*rotary embedding.* must be even"),
        (dict(head_dim=0), r"head_dim must be a positive integer, got 0"),
        (dict(gla_gate_low_rank_dim=0), r"gla_gate_low_rank_dim must be a positive integer, got 0"),
        (dict(gla_gate_logit_normalizer=0.0), r"gla_gate_logit_normalizer=0.0 is not allowed: a finite number > 0"),
        (dict(deltanet_use_gate="yes"), r"deltanet_use_gate='yes' is not allowed: true or false"),
    ],
)
def test_numeric_fields_are_checked_naming_the_field(kwargs, message):
    with pytest.raises(ValueError, match=message):
        MemLMConfig(**{**SMALL, **kwargs})


def test_odd_head_dim_is_allowed_without_rotary_layers():
    assert MemLMConfig(**SMALL, head_dim=7, layer_types=["linear_attention"] * 4).head_dim == 7


@pytest.mark.parametrize(
    ("rule", "message"),
    [
        ({"forgetting": "no"}, r"memory_rule field forgetting='no' is not allowed: true or false"),
        ({"residual": 1}, r"residual=1 is not allowed: true or false"),
        ({"sign_sharpness": -1.0}, r"sign_sharpness=-1.0 is not allowed: a finite number > 0"),
        ({"abs_eps": -1e-6}, r"abs_eps=-1e-06 is not allowed"),
        ({"p": float("inf")}, r"p=inf is not allowed"),
        ({"depth": 2.5}, r"depth=2.5 is not allowed: a positive integer"),
        ({"grad_clip": "10"}, r"grad_clip='10' is not allowed: a finite number > 0 or null"),
        ({"algorithm": 3}, r"algorithm=3 is not allowed: a string"),
    ],
)
def test_memory_rule_fields_are_type_checked(rule, message):
    with pytest.raises(ValueError, match=message):
        MemLMConfig(**SMALL, memory_rule=rule)


def test_memory_rule_accepts_well_typed_fields():
    rule = {"forgetting": False, "grad_clip": None, "sign_sharpness": 5, "abs_eps": 1e-4, "depth": 1}
    assert MemLMConfig(**SMALL, memory_rule=rule).memory_rule == rule
