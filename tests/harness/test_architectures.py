import pytest
import torch

import memlm
from harness.architectures import ARCHITECTURES, model_section, parse_architectures


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_every_architecture_builds_one_width_and_depth(name):
    section = model_section(name, hidden_size=32, num_layers=4, num_heads=2, max_positions=128, sliding_window=8,
                            feature_dim=4)
    fields = {**section["config"], "vocab_size": 50}
    build = memlm.jrt_rnn_config if section.get("preset") == "jrt_rnn" else memlm.MemLMConfig
    config = build(**fields, **({"mask_token_id": 0} if build is memlm.jrt_rnn_config else {}))
    assert (config.hidden_size, config.num_hidden_layers, config.intermediate_size) == (32, 4, 64)
    model = memlm.MemLMForCausalLM(config)
    assert model(torch.randint(0, 50, (1, 20))).logits.shape == (1, 20, 50)
    if name == "Based":  # JRT-RNN's pattern read causally
        assert config.layer_types == ["linear_attention", "linear_attention", "sliding_attention", "linear_attention"]
        assert config.mixer_types == ["conv", "based", "sliding_attention", "conv"]
    if name.startswith("JRT-RNN"):
        assert config.prefix_lm_objective
        assert config.prefix_mlm_weight == (0.0 if name == "JRT-RNN (no MLM)" else 0.25)


def test_architecture_names_are_checked():
    assert parse_architectures(" attention, JRT-RNN ") == ["attention", "JRT-RNN"]
    with pytest.raises(ValueError, match=r"\['MAX'\] unknown"):
        parse_architectures("attention,MAX")
    with pytest.raises(ValueError, match="unknown"):
        model_section("MAX", 32, 4, 2, 128)
