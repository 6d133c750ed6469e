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
        (dict(layer_types=["full_attention"] * 4, hybrid_ratio="3:1"), "disagrees with the layer_types"),
    ],
)
def test_bad_config_raises(kwargs, message):
    with pytest.raises(ValueError, match=message):
        MemLMConfig(**{**SMALL, **kwargs})
