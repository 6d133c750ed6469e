"""Granite-4.0-H (dense) and Bamba import: tiny checkpoints saved by transformers' ``GraniteMoeHybridForCausalLM``
(``num_local_experts=0``) and ``BambaForCausalLM``, converted, against transformers' own classes on a left-padded
batch: fp32 logits, greedy generation (20 tokens) and every cached decoding step's logits; refusals before
writing."""

import json

import pytest
import torch
import transformers
from transformers import AutoModelForCausalLM

import memlm  # noqa: F401  (registers memlm with the Auto classes)
from memlm.convert import ConversionError, convert, from_pretrained
from tests.convert.sources import assert_matches_transformers, randomize, relative_error

COMMON = dict(
    vocab_size=97, hidden_size=32, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
    mamba_n_heads=8, mamba_d_state=6, mamba_n_groups=1, mamba_chunk_size=16, pad_token_id=0, eos_token_id=None,
    initializer_range=0.1,
)


def tiny_granite(directory, **overrides):
    fields = dict(
        COMMON, num_local_experts=0, shared_intermediate_size=48, layer_types=["mamba", "attention"] * 2,
        embedding_multiplier=3.0, residual_multiplier=0.4, attention_multiplier=0.05, logits_scaling=2.5,
    )
    torch.manual_seed(0)
    model = randomize(transformers.GraniteMoeHybridForCausalLM(
        transformers.GraniteMoeHybridConfig(**{**fields, **overrides})))
    model.save_pretrained(directory)
    return model


def tiny_bamba(directory, **overrides):
    fields = dict(COMMON, intermediate_size=48, attn_layer_indices=[1, 3])
    torch.manual_seed(0)
    model = randomize(transformers.BambaForCausalLM(transformers.BambaConfig(**{**fields, **overrides})))
    model.save_pretrained(directory)
    return model


SOURCES = {"granite": tiny_granite, "bamba": tiny_bamba}


@pytest.mark.parametrize("family", list(SOURCES))
def test_converted_model_matches_transformers(tmp_path, family):
    reference = SOURCES[family](tmp_path / "source")
    model = from_pretrained(tmp_path / "source")
    assert model.config.mixer_types == ["mamba2", "full_attention"] * 2
    assert_matches_transformers(model, reference, 97)


def test_granite_fields_and_auto_classes(tmp_path):
    # in_proj/out_proj biases: on a sequence without padding (transformers lets in_proj's bias of left pads into the
    # conv window, memlm keeps pads out of every state)
    # and a time-step limit: on a whole sequence (transformers' decoding step, as mamba_ssm's, does not clamp dt;
    # memlm clamps in both forms, so its cached and uncached forwards agree)
    reference = tiny_granite(tmp_path / "granite", tie_word_embeddings=True, mamba_proj_bias=True,
                             time_step_limit=(0.0, 0.5))
    convert(tmp_path / "granite", tmp_path / "memlm")
    config = json.loads((tmp_path / "memlm" / "config.json").read_text())
    assert config["position_embedding_type"] == "nope" and config["attention_multiplier"] == 0.05
    assert (config["embedding_multiplier"], config["residual_multiplier"], config["logits_scaling"]) == (3.0, 0.4, 2.5)
    assert config["mamba_time_step_limit"] == [0.0, 0.5] and config["intermediate_size"] == 48
    assert config["mamba_proj_bias"] is True
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "memlm").eval()
    ids = torch.randint(2, 97, (1, 30))
    with torch.no_grad():
        assert relative_error(loaded(ids).logits, reference(ids).logits) < 1e-4


@pytest.mark.parametrize("family, field, value, named", [
    ("granite", "num_local_experts", 4, "num_local_experts=4"),
    ("granite", "hidden_act", "gelu", "hidden_act='gelu'"),
    ("granite", "position_embedding_type", "alibi", "position_embedding_type='alibi'"),
    ("granite", "layer_types", ["mamba", "sliding", "mamba", "attention"], "layer_types"),
    ("bamba", "mlp_bias", True, "mlp_bias=True"),
    ("bamba", "z_loss_coefficient", 0.1, "z_loss_coefficient=0.1"),
    ("bamba", "num_experts", 8, "num_experts"),
])
def test_bad_sources_are_refused_before_writing(tmp_path, family, field, value, named):
    SOURCES[family](tmp_path / "source")
    path = tmp_path / "source" / "config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), field: value}))
    with pytest.raises(ConversionError, match=named):
        convert(tmp_path / "source", tmp_path / "memlm")
    assert not (tmp_path / "memlm").exists()
