"""Qwen3.5 and Qwen3-Next checkpoints (tiny, random, saved by transformers' own classes) converted to memlm give
transformers' logits and greedy tokens; memlm models exported to Qwen3.5 load in transformers' class alone."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, Qwen3_5ForCausalLM, Qwen3_5ForConditionalGeneration, Qwen3NextForCausalLM

import memlm
from memlm.convert import ConversionError, convert, from_pretrained
from memlm.convert.checkpoint import Checkpoint
from memlm.convert.registry import importer_for
from tests.convert.sources import QWEN_TEXT, TOKENIZER_FILES, qwen3_5_text, qwen3_5_vision_language, qwen3_next

# two rows, the first left-padded by 3 (pad id 0)
IDS = torch.tensor([[0, 0, 0, 5, 17, 42, 8, 77, 23, 9, 61, 30], [11, 4, 93, 28, 50, 7, 66, 12, 39, 85, 2, 47]])
MASK = (torch.arange(IDS.shape[1]) >= torch.tensor([[3], [0]])).long()


def assert_same_logits(reference, model, ids=IDS, mask=MASK):
    """fp32 logits at the real (unpadded) positions within 1e-4 of the logits' scale."""
    expected = reference(input_ids=ids, attention_mask=mask).logits[mask.bool()]
    got = model(input_ids=ids, attention_mask=mask).logits[mask.bool()]
    scale = expected.abs().max()
    assert scale > 1  # the tiny models' logits are not near zero: the comparison can fail
    assert (got - expected).abs().max() <= 1e-4 * scale


def greedy(model, use_cache=True):
    return model.generate(IDS, attention_mask=MASK, max_new_tokens=20, do_sample=False, use_cache=use_cache,
                          pad_token_id=0, eos_token_id=None)


def assert_same_generation(reference, model):
    expected = greedy(reference)
    assert torch.equal(greedy(model), expected)
    assert torch.equal(greedy(model, use_cache=False), expected)  # cached decoding == recomputation


@pytest.fixture(scope="module")
def qwen_dir(tmp_path_factory):
    return qwen3_5_text(tmp_path_factory.mktemp("qwen3_5_text"))


@pytest.fixture(scope="module")
def next_dir(tmp_path_factory):
    return qwen3_next(tmp_path_factory.mktemp("qwen3_next"))


@pytest.fixture(scope="module")
def vl_dir(tmp_path_factory):
    return qwen3_5_vision_language(tmp_path_factory.mktemp("qwen3_5"), mtp=True)


@torch.no_grad()
def test_qwen3_5_text_gives_transformers_logits_and_tokens(qwen_dir):
    reference = Qwen3_5ForCausalLM.from_pretrained(qwen_dir).eval()
    model = from_pretrained(qwen_dir)
    config = model.config
    assert config.mixer_types == ["gated_deltanet"] * 3 + ["full_attention"]
    assert (config.attention_output_gate, config.attention_qk_norm) == (True, "head")
    assert config.rope_parameters["partial_rotary_factor"] == 0.25 and "mrope_section" not in config.rope_parameters
    # the zero-centred norms are stored as 1 + w; GatedDeltaNet's gated norm as it is
    source = load_file(qwen_dir / "model.safetensors")
    attention, linear = model.model.layers[3].mixer, model.model.layers[0].mixer
    torch.testing.assert_close(attention.q_norm.weight, 1 + source["model.layers.3.self_attn.q_norm.weight"])
    torch.testing.assert_close(linear.norm.weight, source["model.layers.0.linear_attn.norm.weight"])
    assert_same_logits(reference, model)
    assert_same_generation(reference, model)


@torch.no_grad()
def test_qwen3_next_dense_layers_give_transformers_logits_and_tokens(next_dir):
    reference = Qwen3NextForCausalLM.from_pretrained(next_dir).eval()
    model = from_pretrained(next_dir)
    assert_same_logits(reference, model)
    assert_same_generation(reference, model)


@torch.no_grad()
def test_qwen3_5_vision_language_checkpoint_converts_its_text_model(vl_dir, tmp_path):
    reference = Qwen3_5ForConditionalGeneration.from_pretrained(vl_dir).eval()
    with pytest.raises(ConversionError, match=r"vision_config is set.*--drop vision"):
        convert(vl_dir, tmp_path / "out", drop=["mtp"])
    with pytest.raises(ConversionError, match=r"mtp_num_hidden_layers=1.*--drop mtp"):
        convert(vl_dir, tmp_path / "out", drop=["vision"])
    assert not (tmp_path / "out").exists()
    model = from_pretrained(vl_dir, drop=["vision", "mtp"])
    assert model.config.tie_word_embeddings
    assert_same_logits(reference, model)
    assert torch.equal(greedy(model), greedy(reference))


@torch.no_grad()
def test_converted_checkpoint_loads_with_the_auto_classes(qwen_dir, tmp_path):
    result = convert(qwen_dir, tmp_path / "memlm")
    assert result.summary().startswith("qwen3_5_text -> memlm: 4 layers (3 gated_deltanet, 1 full_attention)")
    for name, text in TOKENIZER_FILES.items():
        assert (tmp_path / "memlm" / name).read_text() == text
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "memlm").eval()
    assert isinstance(loaded, memlm.MemLMForCausalLM)
    assert_same_logits(Qwen3_5ForCausalLM.from_pretrained(qwen_dir).eval(), loaded)


@torch.no_grad()
def test_export_round_trip_gives_the_same_logits_in_transformers_class(qwen_dir, tmp_path):
    model = from_pretrained(qwen_dir)
    convert(qwen_dir, tmp_path / "memlm")
    convert(tmp_path / "memlm", tmp_path / "qwen", to="qwen3_5")
    config = json.loads((tmp_path / "qwen" / "config.json").read_text())
    assert (config["model_type"], config["architectures"]) == ("qwen3_5_text", ["Qwen3_5ForCausalLM"])
    exported = Qwen3_5ForCausalLM.from_pretrained(tmp_path / "qwen").eval()
    assert_same_logits(model, exported)
    # the round trip gives back the source's tensors (the norm offsets undone)
    source, back = load_file(qwen_dir / "model.safetensors"), load_file(tmp_path / "qwen" / "model.safetensors")
    assert sorted(back) == sorted(source)
    for name in source:
        torch.testing.assert_close(back[name], source[name], rtol=0, atol=1e-6)


@torch.no_grad()
def test_a_memlm_model_with_qwen3_5_layers_exports(tmp_path):
    config = memlm.MemLMConfig(
        vocab_size=96, hidden_size=64, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
        linear_num_key_heads=2, linear_num_value_heads=4, attention_output_gate=True, attention_qk_norm="head",
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0}, tie_word_embeddings=True,
        initializer_range=0.1)
    model = memlm.MemLMForCausalLM(config).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.ndim == 1:
                parameter.add_(torch.randn_like(parameter) * 0.3)
    model.save_pretrained(tmp_path / "memlm")
    convert(tmp_path / "memlm", tmp_path / "qwen", to="qwen3_5")
    exported = AutoModelForCausalLM.from_pretrained(tmp_path / "qwen").eval()
    assert type(exported).__name__ == "Qwen3_5ForCausalLM"  # transformers' own class, memlm not involved
    assert exported.config.rope_parameters["partial_rotary_factor"] == 1.0  # memlm's default, written out
    assert_same_logits(model, exported)


@pytest.mark.parametrize("change, message", [
    (dict(mixer_types=["hgrn2", "gated_deltanet", "gated_deltanet", "full_attention"]),
     r"layer 0 has mixer 'hgrn2' \(mixer_types\[0\]\): Qwen3.5 has the layers \['full_attention', 'gated_deltanet'\]"),
    (dict(attention_qk_norm=None), "attention_qk_norm=None: exporting to qwen3_5 needs attention_qk_norm='head'"),
    (dict(attention_output_gate=False), "attention_output_gate=False: exporting to qwen3_5 needs"),
    (dict(linear_allow_neg_eigval=True), "linear_allow_neg_eigval=True"),
    (dict(linear_norm_eps=1e-5), "linear_norm_eps=1e-05"),
    (dict(norm_placement=["post"] * 4), "norm_placement="),
])
def test_export_refuses_what_qwen3_5_cannot_represent(tmp_path, change, message):
    options = {"attention_output_gate": True, "attention_qk_norm": "head", **change}
    memlm.MemLMForCausalLM(memlm.MemLMConfig(vocab_size=96, hidden_size=32, num_hidden_layers=4,
                                             num_attention_heads=2, **options)).save_pretrained(tmp_path / "memlm")
    with pytest.raises(ConversionError, match=message):
        convert(tmp_path / "memlm", tmp_path / "qwen", to="qwen3_5")
    assert not (tmp_path / "qwen").exists()


def write_config(directory, **fields):
    directory.mkdir()
    (directory / "config.json").write_text(json.dumps(fields))
    (directory / "model.safetensors").write_bytes(b"not read: the config is refused first")
    return directory


@pytest.mark.parametrize("fields, message", [
    (dict(model_type="qwen3_next", num_experts=4, mlp_only_layers=[0, 1], num_hidden_layers=4),
     r"num_experts=4, decoder_sparse_step=1, mlp_only_layers=\[0, 1\]: layers \[2, 3\] have a mixture-of-experts MLP"),
    (dict(model_type="qwen3_next"), "num_experts=512"),  # transformers' default: every layer MoE
    (dict(model_type="qwen3_5_text", attn_output_gate=False), "attn_output_gate=False"),
    (dict(model_type="qwen3_5_text", hidden_act="gelu"), "hidden_act='gelu'.*allowed 'silu'"),
    (dict(model_type="qwen3_5_text", layer_types=["linear_attention", "sliding_attention"], num_hidden_layers=2),
     r"layer_types\[1\]='sliding_attention'"),
    (dict(model_type="qwen3_5_text", rope_parameters={"rope_type": "warp", "rope_theta": 1e4}),
     "rope_type='warp' is unknown"),
    (dict(model_type="qwen3_5_text", router_jitter=0.1), r"config keys \[.router_jitter.\] are unknown"),
    (dict(model_type="qwen3_5", text_config=QWEN_TEXT, vision_config={"depth": 1}), "vision_config is set"),
    (dict(model_type="mamba2"), "model_type='mamba2', which memlm cannot import"),
])
def test_bad_sources_fail_on_their_config_before_reading_tensors(tmp_path, fields, message):
    source = write_config(tmp_path / "src", **fields)
    with pytest.raises(ConversionError, match=message):
        convert(source, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_source_tensor_memlm_has_no_place_for_is_refused(qwen_dir, tmp_path):
    source = tmp_path / "src"
    source.mkdir()
    for file in qwen_dir.iterdir():
        (source / file.name).write_bytes(file.read_bytes())
    tensors = load_file(source / "model.safetensors")
    save_file({**tensors, "model.layers.0.linear_attn.extra.weight": torch.ones(3)}, source / "model.safetensors")
    with pytest.raises(ConversionError, match=r"1 source tensors have no place.*linear_attn\.extra\.weight"):
        convert(source, tmp_path / "out")
    del tensors["model.layers.1.linear_attn.A_log"]
    save_file(tensors, source / "model.safetensors")
    with pytest.raises(ConversionError, match="source tensor 'model.layers.1.linear_attn.A_log' is missing"):
        convert(source, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_the_fields_of_the_hubs_qwen3_5_configs_are_all_read(tmp_path):
    """A config.json with every field the hub's Qwen3.5 vision-language configs carry (Qwen/Qwen3.5-0.8B's
    layout: 24 layers, 3:1, 8 heads of 256, 16 GatedDeltaNet heads of 128, tied embeddings, an MTP layer), read
    before any tensor (the weights file here is not safetensors)."""
    text = dict(
        attn_output_gate=True, dtype="bfloat16", eos_token_id=248044, full_attention_interval=4, head_dim=256,
        hidden_act="silu", hidden_size=1024, initializer_range=0.02, intermediate_size=3584,
        layer_types=(["linear_attention"] * 3 + ["full_attention"]) * 6, linear_conv_kernel_dim=4,
        linear_key_head_dim=128, linear_num_key_heads=16, linear_num_value_heads=16, linear_value_head_dim=128,
        mamba_ssm_dtype="float32", max_position_embeddings=262144, model_type="qwen3_5_text",
        mtp_num_hidden_layers=1, mtp_use_dedicated_embeddings=False, num_attention_heads=8, num_hidden_layers=24,
        num_key_value_heads=2, rms_norm_eps=1e-6, tie_word_embeddings=True, use_cache=True, vocab_size=248320,
        rope_parameters={"mrope_interleaved": True, "mrope_section": [11, 11, 10], "rope_type": "default",
                         "rope_theta": 10000000, "partial_rotary_factor": 0.25},
        attention_bias=False, attention_dropout=0.0,
    )
    source = write_config(tmp_path / "src", architectures=["Qwen3_5ForConditionalGeneration"], model_type="qwen3_5",
                          text_config=text, vision_config={"depth": 12, "hidden_size": 768}, image_token_id=248056,
                          video_token_id=248057, vision_start_token_id=248053, vision_end_token_id=248054,
                          tie_word_embeddings=True, transformers_version="4.57.0.dev0")
    checkpoint = Checkpoint.open(source)
    config = importer_for(checkpoint.config, str(source)).config(checkpoint, frozenset({"vision", "mtp"}))
    assert config.mixer_types == (["gated_deltanet"] * 3 + ["full_attention"]) * 6
    assert (config.head_dim, config.num_key_value_heads, config.linear_num_value_heads) == (256, 2, 16)
    assert config.rope_parameters == {"rope_type": "default", "rope_theta": 10000000, "partial_rotary_factor": 0.25}
    assert config.tie_word_embeddings and config.eos_token_id == 248044
