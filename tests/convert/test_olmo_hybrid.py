"""OLMo Hybrid import: tiny ``OlmoHybridForCausalLM`` checkpoints saved by transformers (one with RoPE, one NoPE as
released), converted, against transformers' own class on a left-padded batch: fp32 logits, greedy generation,
the cached decoding steps' logits."""

import json

import pytest
import torch
import transformers
from transformers import AutoModelForCausalLM

import memlm  # noqa: F401  (registers memlm with the Auto classes)
from memlm.convert import ConversionError, convert, from_pretrained
from tests.convert.sources import assert_matches_transformers, relative_error

pytestmark = pytest.mark.skipif(not hasattr(transformers, "OlmoHybridForCausalLM"),
                                reason="this transformers has no OLMo Hybrid (models/olmo_hybrid)")

LAYER_TYPES = ["linear_attention", "full_attention", "linear_attention", "full_attention"]


def tiny_olmo_hybrid(directory, rope: bool, **overrides):
    """A 4-layer OLMo Hybrid with random norm weights (every norm, q/k norms and the gated output norms included),
    saved with ``save_pretrained``; ``rope=False`` is the released checkpoints' NoPE (``rope_theta`` null)."""
    fields = dict(
        vocab_size=97, hidden_size=64, intermediate_size=96, num_hidden_layers=4, num_attention_heads=4,
        num_key_value_heads=2, linear_num_key_heads=2, linear_num_value_heads=2, linear_key_head_dim=16,
        linear_value_head_dim=32, layer_types=LAYER_TYPES, pad_token_id=0, eos_token_id=None,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0 if rope else None},
    )
    config = transformers.OlmoHybridConfig(**{**fields, **overrides})
    model = transformers.OlmoHybridForCausalLM(config).eval()
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith("norm.weight"):
                parameter.uniform_(0.5, 1.5)
    model.save_pretrained(directory)
    return model


@pytest.mark.parametrize("rope", [True, False], ids=["rope", "nope"])
def test_converted_model_matches_transformers(tmp_path, rope):
    reference = tiny_olmo_hybrid(tmp_path / "olmo", rope)
    model = from_pretrained(tmp_path / "olmo")
    assert model.config.position_embedding_type == ("rope" if rope else "nope")
    assert model.config.mixer_types == ["gated_deltanet", "full_attention", "gated_deltanet", "full_attention"]

    assert_matches_transformers(model, reference, 97)


def test_convert_writes_a_checkpoint_the_auto_classes_load(tmp_path):
    reference = tiny_olmo_hybrid(tmp_path / "olmo", rope=False, tie_word_embeddings=True)
    (tmp_path / "olmo" / "tokenizer.json").write_text('{"fake": "tokenizer"}')
    convert(tmp_path / "olmo", tmp_path / "memlm")
    assert (tmp_path / "memlm" / "tokenizer.json").is_file()
    config = json.loads((tmp_path / "memlm" / "config.json").read_text())
    assert config["model_type"] == "memlm" and config["norm_placement"] == ["pre", "post", "pre", "post"]
    assert config["attention_qk_norm"] == "all" and config["linear_norm_eps"] == 1e-5
    assert config["linear_allow_neg_eigval"] is True
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "memlm").eval()
    ids = torch.randint(2, 97, (1, 9))
    with torch.no_grad():
        assert relative_error(loaded(ids).logits, reference(ids).logits) < 1e-4


def test_beta_without_negative_eigenvalues(tmp_path):
    reference = tiny_olmo_hybrid(tmp_path / "olmo", rope=True, linear_allow_neg_eigval=False)
    model = from_pretrained(tmp_path / "olmo")
    assert model.config.linear_allow_neg_eigval is False
    ids = torch.randint(2, 97, (1, 10))
    with torch.no_grad():
        assert relative_error(model(ids).logits, reference(ids).logits) < 1e-4


@pytest.mark.parametrize("field, value, named", [
    ("hidden_act", "gelu", "hidden_act='gelu'"),
    ("layer_types", ["linear_attention", "sliding_attention", "linear_attention", "full_attention"], "layer_types"),
    ("num_experts", 8, "num_experts"),
    ("rope_parameters", {"rope_type": "unheard_of", "rope_theta": 10.0}, "unheard_of"),
])
def test_bad_sources_are_refused_before_writing(tmp_path, field, value, named):
    tiny_olmo_hybrid(tmp_path / "olmo", rope=True)
    path = tmp_path / "olmo" / "config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), field: value}))
    with pytest.raises(ConversionError, match=named):
        convert(tmp_path / "olmo", tmp_path / "memlm")
    assert not (tmp_path / "memlm").exists()


def test_fields_left_out_take_olmo_hybrids_defaults(tmp_path):
    """A config.json without some fields means OlmoHybridConfig's defaults (here the value head width
    ``2 * linear_key_head_dim`` and the GatedDeltaNet's beta in [0, 2]), not memlm's."""
    reference = tiny_olmo_hybrid(tmp_path / "olmo", rope=True)
    path = tmp_path / "olmo" / "config.json"
    config = json.loads(path.read_text())
    for field in ("linear_value_head_dim", "linear_allow_neg_eigval", "num_key_value_heads"):
        del config[field]
    config["num_key_value_heads"] = None
    path.write_text(json.dumps(config))
    with pytest.raises(ConversionError, match="do not fit"):  # num_key_value_heads null: OLMo's default, 4 heads
        from_pretrained(tmp_path / "olmo")
    config["num_key_value_heads"] = 2
    path.write_text(json.dumps(config))
    model = from_pretrained(tmp_path / "olmo")
    assert model.config.linear_value_head_dim == 32 and model.config.linear_allow_neg_eigval is True
    ids = torch.randint(2, 97, (1, 10))
    with torch.no_grad():
        assert relative_error(model(ids).logits, reference(ids).logits) < 1e-4
