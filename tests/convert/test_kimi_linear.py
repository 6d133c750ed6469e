"""Kimi Linear checkpoints (tiny, random, dense, saved by transformers' own class) converted to memlm give
transformers' logits and greedy tokens; MoE sources are refused before anything is written."""

import json

import pytest
import torch
from safetensors.torch import save_file

from memlm.convert import ConversionError, convert, from_pretrained
from tests.convert.sources import randomize, save
from tests.convert.test_qwen import assert_same_generation, assert_same_logits, write_config

kimi = pytest.importorskip("transformers.models.kimi_linear",
                           reason="this transformers has no Kimi Linear (transformers 5.16 does not)")

# Kimi Linear's layout at toy width: KDA and MLA layers alternating, dense MLPs, MLA value width != key width.
KIMI = dict(
    vocab_size=96, hidden_size=64, intermediate_size=96, num_hidden_layers=4, num_attention_heads=4,
    num_key_value_heads=4, kv_lora_rank=16, qk_rope_head_dim=8, qk_nope_head_dim=16, v_head_dim=12,
    linear_head_dim=8, linear_num_heads=4, mlp_layer_types=["dense"] * 4, initializer_range=0.1,
    layer_types=["linear_attention", "full_attention", "linear_attention", "full_attention"],
    pad_token_id=0, bos_token_id=1, eos_token_id=2,
)


def kimi_linear(directory, **overrides):
    torch.manual_seed(0)
    model = randomize(kimi.KimiLinearForCausalLM(kimi.KimiLinearConfig(**{**KIMI, **overrides})))
    with torch.no_grad():  # A_log is [1, 1, H, 1]: randomize() leaves it; distinct decays per head
        for layer in model.model.layers:
            if hasattr(layer.self_attn, "forget_gate"):
                layer.self_attn.forget_gate.A_log.add_(torch.randn_like(layer.self_attn.forget_gate.A_log))
    return save(model, directory)


@pytest.fixture(scope="module", params=[None, 8], ids=["q_proj", "q_lora"])
def kimi_dir(request, tmp_path_factory):
    return kimi_linear(tmp_path_factory.mktemp("kimi_linear"), q_lora_rank=request.param)


@torch.no_grad()
def test_kimi_linear_gives_transformers_logits_and_tokens(kimi_dir):
    reference = kimi.KimiLinearForCausalLM.from_pretrained(kimi_dir).eval()
    model = from_pretrained(kimi_dir)
    config = model.config
    assert config.mixer_types == ["kda", "mla"] * 2 and config.position_embedding_type == "nope"
    assert (config.mla_kv_lora_rank, config.mla_v_head_dim, config.head_dim) == (16, 12, 8)
    assert_same_logits(reference, model)
    assert_same_generation(reference, model)


@torch.no_grad()
def test_transformers_runtime_names_convert_too(kimi_dir, tmp_path):
    """The spellings transformers uses in memory (one ``conv1d``, ``forget_gate.*``, ``mlp.*``) convert alike."""
    reference = kimi.KimiLinearForCausalLM.from_pretrained(kimi_dir).eval()
    source = tmp_path / "runtime"
    source.mkdir()
    (source / "config.json").write_text((kimi_dir / "config.json").read_text())
    state = reference.state_dict()
    assert any(".forget_gate." in name for name in state) and any(".self_attn.conv1d." in name for name in state)
    save_file({k: v.contiguous() for k, v in state.items()}, source / "model.safetensors")
    assert_same_logits(reference, from_pretrained(source))


@pytest.mark.parametrize("fields, message", [
    (dict(model_type="kimi_linear", num_hidden_layers=2), r"mlp_layer_types=\['dense', 'sparse'\].*layers \[1\]"),
    (dict(model_type="kimi_linear", num_hidden_layers=3, first_k_dense_replace=2),
     r"layers \[2\] have a mixture-of-experts MLP"),
    (dict(model_type="kimi_linear", num_hidden_layers=2, mlp_layer_types=["dense"] * 2, hidden_act="gelu"),
     "hidden_act='gelu'"),
    (dict(model_type="kimi_linear", num_hidden_layers=2, mlp_layer_types=["dense"] * 2, num_key_value_heads=8),
     "num_key_value_heads=8"),
    (dict(model_type="kimi_linear", num_hidden_layers=2, mlp_layer_types=["dense"] * 2, mla_use_magic=True),
     r"config keys \['mla_use_magic'\] are unknown"),
])
def test_bad_sources_fail_on_their_config_before_reading_tensors(tmp_path, fields, message):
    source = write_config(tmp_path / "src", **fields)
    with pytest.raises(ConversionError, match=message):
        convert(source, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_moe_checkpoint_config_is_refused_before_writing(kimi_dir, tmp_path):
    source = tmp_path / "moe"
    source.mkdir()
    for file in kimi_dir.iterdir():
        (source / file.name).write_bytes(file.read_bytes())
    config = json.loads((source / "config.json").read_text())
    config["mlp_layer_types"] = ["dense", "sparse", "sparse", "sparse"]
    (source / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConversionError, match=r"mlp_layer_types=.*layers \[1, 2, 3\] have a mixture-of-experts"):
        convert(source, tmp_path / "out")
    assert not (tmp_path / "out").exists()
