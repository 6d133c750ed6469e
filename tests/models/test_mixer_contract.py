"""The mixer contract: layer types in transformers' vocabulary, a mixer per layer, old configs converted on load,
several linear mixers in one model, and nothing of transformers patched or reached into."""

import json
import re
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, DynamicCache, PreTrainedConfig
from transformers.cache_utils import LinearAttentionLayer

import memlm
from memlm import MemLMConfig
from memlm.layers.memory_cache import MemoryCacheLayer
from memlm.layers.registry import LAYER_TYPES, MIXERS
from tests.models.test_modeling import tiny_config, tiny_model

ROOT = Path(__file__).resolve().parents[2]
MIXED = ["gated_deltanet", "hgrn2", "memory", "full_attention"]


def test_layer_types_are_transformers_and_mixers_fill_from_the_conveniences():
    config = tiny_config(hybrid_ratio="3:1", linear_attn_type="hgrn2")
    assert config.layer_types == ["linear_attention"] * 3 + ["full_attention"]
    assert config.mixer_types == ["hgrn2"] * 3 + ["full_attention"]
    jrt = memlm.jrt_rnn_config(num_hidden_layers=5, hidden_size=32, num_attention_heads=4, vocab_size=61,
                               sliding_window=4)
    assert jrt.layer_types == ["linear_attention", "linear_attention", "sliding_attention", "linear_attention",
                               "linear_attention"]
    assert jrt.mixer_types == ["conv", "prefix_linear_attention", "sliding_attention", "conv", "conv"]
    for name, spec in MIXERS.items():  # every registry entry names a layer type transformers' cache knows
        assert spec.layer_type in LAYER_TYPES and spec.cache, name


@pytest.mark.parametrize(("mixers", "layer_types"), [
    (MIXED, ["linear_attention", "linear_attention", "linear_attention", "full_attention"]),
    (["conv", "prefix_linear_attention", "sliding_attention", "conv"],  # JRT-RNN: "conv" is stored as linear
     ["linear_attention", "linear_attention", "sliding_attention", "linear_attention"]),
])
def test_a_saved_config_passes_transformers_validation_unchanged(tmp_path, mixers, layer_types):
    config = tiny_config(mixer_types=mixers, sliding_window=4)
    config.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["layer_types"] == layer_types
    assert saved["mixer_types"] == mixers
    plain = PreTrainedConfig(**saved)  # transformers' own class and validators, layer types included
    plain.validate()
    assert plain.layer_types == layer_types
    reloaded = MemLMConfig.from_pretrained(tmp_path)
    reloaded.validate()
    assert (reloaded.layer_types, reloaded.mixer_types) == (layer_types, mixers)


def test_a_checkpoint_in_the_format_before_mixer_types_loads(tmp_path):
    """memlm wrote mixer names into layer_types and had no mixer_types: such a checkpoint loads converted, with
    the same weights and logits."""
    torch.manual_seed(0)
    model = tiny_model(layer_types=["memory", "sliding_attention", "prefix_linear_attention", "conv"],
                       sliding_window=4, linear_key_head_dim=8, memory_chunk_size=8)
    model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    saved["layer_types"] = ["memory", "sliding_attention", "prefix_linear_attention", "conv"]  # the old format
    del saved["mixer_types"]
    (tmp_path / "config.json").write_text(json.dumps(saved))
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert loaded.config.layer_types == ["linear_attention", "sliding_attention"] + ["linear_attention"] * 2
    assert loaded.config.mixer_types == ["memory", "sliding_attention", "prefix_linear_attention", "conv"]
    ids = torch.randint(1, 61, (2, 13))
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids, prefix_length=5).logits, model(ids, prefix_length=5).logits)


@pytest.mark.parametrize(("overrides", "message"), [
    (dict(mixer_types=["gated_deltanet", "full_attention"]), "mixer_types has 2 entries but num_hidden_layers=4"),
    (dict(hybrid_ratio="3:1", mixer_types=["gated_deltanet", "full_attention"]),
     "mixer_types has 2 entries but layer_types has 4"),
    (dict(mixer_types=["gated_deltanet", "mamba", "gated_deltanet", "full_attention"]),
     r"mixer_types contains \['mamba'\]; registered mixers"),
    (dict(layer_types=["linear_attention"] * 3 + ["full_attention"],
          mixer_types=["gated_deltanet", "full_attention", "hgrn2", "full_attention"]),
     "layer 1: mixer 'full_attention' runs in a 'full_attention' layer, but layer_types"),
    (dict(layer_types=["memory", "linear_attention", "linear_attention", "full_attention"],
          mixer_types=["hgrn2", "hgrn2", "hgrn2", "full_attention"]), "layer 0: layer_types names mixer 'memory'"),
    (dict(layer_types=["linear_attention"] * 3 + ["attention"]), r"layer_types\[3\]='attention' is unknown"),
])
def test_bad_mixer_types_name_the_layer(overrides, message):
    with pytest.raises(ValueError, match=message):
        tiny_config(**overrides)


def test_two_linear_mixers_and_a_titans_memory_train_generate_and_round_trip(tmp_path):
    torch.manual_seed(0)
    model = tiny_model(mixer_types=MIXED, memory_chunk_size=8)
    assert [type(layer.mixer).__name__ for layer in model.model.layers] == [
        "GatedDeltaNet", "HGRN2", "MemoryLayer", "Attention"]
    assert model.model.forget_lower_bounds.lower_bounds.shape[0] == 1  # one row per HGRN-2 layer
    check_trains_generates_and_round_trips(model, tmp_path, [LinearAttentionLayer] * 2 + [MemoryCacheLayer])


def test_gla_deltanet_and_gated_deltanet_train_generate_and_round_trip(tmp_path):
    torch.manual_seed(0)
    mixers = ["gla", "deltanet", "gated_deltanet", "full_attention"]
    model = tiny_model(mixer_types=mixers, deltanet_use_gate=True, gla_gate_low_rank_dim=4)
    assert [type(layer.mixer).__name__ for layer in model.model.layers] == [
        "GatedLinearAttention", "DeltaNet", "GatedDeltaNet", "Attention"]
    check_trains_generates_and_round_trips(model, tmp_path, [LinearAttentionLayer] * 3)


def check_trains_generates_and_round_trips(model, tmp_path, first_cache_layers: list[type]) -> None:
    """A few training steps lower the loss; cached greedy decoding equals full recomputation; the cache holds
    ``first_cache_layers`` first; save/load reproduces logits and generation."""
    mixers = list(model.config.mixer_types)
    # trains: a few steps lower the loss on a fixed batch
    model.train()
    ids = torch.randint(1, 61, (4, 24))
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(8):
        loss = model(ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.1
    model.eval()
    # generates exactly: cached greedy decoding equals decoding by full recomputation
    prompt = ids[:2, :11]
    with torch.no_grad():
        cached = model.generate(prompt, max_new_tokens=10, do_sample=False)
        expected = prompt
        for _ in range(10):
            expected = torch.cat([expected, model(expected, use_cache=False).logits[:, -1:].argmax(-1)], 1)
    assert torch.equal(cached, expected)
    cache = DynamicCache(config=model.config)
    with torch.no_grad():
        model(prompt, cache=cache, use_cache=True)
    assert [type(layer) for layer in cache.layers[: len(first_cache_layers)]] == first_cache_layers
    # round-trips save/load
    model.save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert loaded.config.mixer_types == mixers
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, model(ids).logits)
        assert torch.equal(loaded.generate(prompt, max_new_tokens=10, do_sample=False), cached)


def test_nothing_of_transformers_is_patched_or_reached_into():
    """No assignment into transformers' layer-type tables, no walk of its private validators, no import of a
    private transformers name, anywhere in memlm."""
    offenders = []
    for path in sorted((ROOT / "memlm").rglob("*.py")):
        text = path.read_text()
        for pattern in (r"_LAYER_TYPE_MAPPING", r"__class_validators__", r"from transformers[\w.]* import .*\b_\w+",
                        r"transformers\.[\w.]*\._\w+"):
            offenders += [f"{path.relative_to(ROOT)}: {m.group(0)}" for m in re.finditer(pattern, text)]
    assert offenders == []


def test_model_forward_has_no_branch_on_a_layer_or_mixer_type():
    import inspect

    from memlm.models.modeling_memlm import MemLMModel

    source = inspect.getsource(MemLMModel.forward)
    assert "layer_type" not in source and "mixer_type" not in source
    loop = r"for layer in self\.layers:\n(.*\n){0,3}\s+hidden_states = layer\(hidden_states, inputs\)"
    assert re.search(loop, source)
