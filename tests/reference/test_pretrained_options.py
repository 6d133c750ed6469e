"""The options pretrained hybrids need (``MemLMConfig``: attention_output_gate, attention_qk_norm, partial rotary,
position_embedding_type, norm_placement, linear_allow_neg_eigval, linear_norm_eps), each against transformers' own
layers with the same weights:

- gated attention + per-head q/k norm + partial rotary: Qwen3.5's ``Qwen3_5Attention`` (its ``1 + weight`` norms
  stored as ``1 + weight`` in memlm's), outputs and gradients, and its rotary embedding;
- q/k norm over the whole projections + the post-norm block: OLMo 3's ``Olmo3DecoderLayer`` (RoPE) and OLMo Hybrid's
  ``OlmoHybridAttentionDecoderLayer`` without position embeddings ("nope");
- partial rotary with transformers' scaled RoPE types: Llama's rotary embedding at the rotary width;
- GatedDeltaNet with ``beta = 2 sigmoid(b)`` and the output norm's own eps: OLMo Hybrid's ``OlmoHybridGatedDeltaNet``
  (its separate q/k/v projections concatenated into ``in_proj_qkv``), outputs, gradients and cached decoding.

The whole model with the options on (cached decoding, generate, save/load) runs in tests/models/test_modeling.py
(variants ``qwen3.5-options`` and ``olmo-hybrid-options``).
"""

import pytest
import torch
from test_transformers_references import (
    HIDDEN,
    ROPE,
    SEQ_LEN,
    assert_matches,
    assert_same_gradients,
    causal_mask,
    randomize_,
    run_memlm_mixer,
)
from transformers import DynamicCache, LlamaConfig
from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

import memlm
from memlm.layers import Attention, GatedDeltaNet
from memlm.layers.rotary import RotaryEmbedding, apply_rotary
from memlm.models.modeling_memlm import MemLMPostNormDecoderLayer

qwen3_5 = pytest.importorskip("transformers.models.qwen3_5.modeling_qwen3_5", reason="transformers without Qwen3.5")
Qwen3_5TextConfig = pytest.importorskip("transformers.models.qwen3_5.configuration_qwen3_5").Qwen3_5TextConfig
olmo3 = pytest.importorskip("transformers.models.olmo3.modeling_olmo3", reason="transformers without OLMo 3")
olmo_hybrid = pytest.importorskip("transformers.models.olmo_hybrid.modeling_olmo_hybrid",
                                  reason="transformers without OLMo Hybrid")
from transformers import Olmo3Config, OlmoHybridConfig  # noqa: E402

HEADS = dict(num_attention_heads=4, num_key_value_heads=2)
NEW_FIELDS = ("attention_output_gate", "attention_qk_norm", "position_embedding_type", "norm_placement",
              "linear_allow_neg_eigval", "linear_norm_eps")


def copy_renamed(reference: torch.nn.Module, module: torch.nn.Module, rename) -> None:
    """Load ``reference``'s weights into ``module``: ``rename(name, value) -> (memlm name, value)``; strict."""
    module.load_state_dict(dict(rename(name, value) for name, value in reference.state_dict().items()))


def positions(batch: int = 2, start: int = 5) -> torch.Tensor:
    return torch.arange(start, start + SEQ_LEN).expand(batch, -1)


# ---------------------------------------------------------------- gated attention, per-head q/k norm, partial RoPE


def qwen3_5_attention_pair(attn_implementation):
    """Qwen3.5's attention (head_dim 16, partial_rotary_factor 0.25: 4 rotary channels) and memlm's with the options
    that reproduce it; the norm weights ``w`` of Qwen3.5 (which multiplies by ``1 + w``) go in as ``1 + w``."""
    qwen_config = Qwen3_5TextConfig(vocab_size=64, hidden_size=HIDDEN, num_hidden_layers=1, head_dim=16,
                                    layer_types=["full_attention"], attn_implementation=attn_implementation, **HEADS)
    rope = qwen_config.rope_parameters
    assert rope["partial_rotary_factor"] == 0.25
    memlm_config = memlm.MemLMConfig(
        vocab_size=64, hidden_size=HIDDEN, num_hidden_layers=1, head_dim=16, layer_types=["full_attention"],
        attention_output_gate=True, attention_qk_norm="head", attn_implementation=attn_implementation,
        rope_parameters={k: rope[k] for k in ("rope_type", "rope_theta", "partial_rotary_factor")}, **HEADS,
    )
    reference = qwen3_5.Qwen3_5Attention(qwen_config, layer_idx=0)
    randomize_(reference, seed=3)
    mixer = Attention(memlm_config, layer_idx=0)
    copy_renamed(reference, mixer, lambda name, w: (name, 1 + w if name.endswith("_norm.weight") else w))
    return reference, mixer, qwen3_5.Qwen3_5TextRotaryEmbedding(qwen_config), RotaryEmbedding(memlm_config)


@pytest.mark.parametrize("attn_implementation", ["eager", "sdpa"])
def test_gated_attention_with_head_qk_norm_and_partial_rotary_matches_qwen3_5(attn_implementation):
    reference, mixer, qwen_rotary, memlm_rotary = qwen3_5_attention_pair(attn_implementation)
    x = torch.randn(2, SEQ_LEN, HIDDEN)
    qwen_cos_sin, memlm_cos_sin = qwen_rotary(x, positions()), memlm_rotary(x, positions())
    for expected, got in zip(qwen_cos_sin, memlm_cos_sin, strict=True):
        assert got.shape == (2, SEQ_LEN, 4)  # the rotary channels only
        torch.testing.assert_close(got, expected)
    mask = causal_mask(2, SEQ_LEN)
    x_reference, x_memlm = x.clone().requires_grad_(), x.clone().requires_grad_()
    expected, _ = reference(x_reference, position_embeddings=qwen_cos_sin, attention_mask=mask)
    out = run_memlm_mixer(mixer, x_memlm, memlm_cos_sin, attention_mask=mask)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    upstream = torch.randn_like(expected)
    (expected * upstream).sum().backward()
    (out * upstream).sum().backward()
    assert_same_gradients(reference, mixer, {}, x_reference, x_memlm)


# ------------------------------------------------------ q/k norm over the projections + OLMo 2's post-norm block


def olmo_block_pair(kind):
    """An OLMo attention block (OLMo 3 with RoPE, or OLMo Hybrid's without position embeddings, at layer 1 after a
    GDN layer) and memlm's post-norm decoder layer with ``attention_qk_norm="all"`` and the same weights
    (``self_attn.`` -> ``mixer.``)."""
    sizes = dict(vocab_size=64, hidden_size=HIDDEN, intermediate_size=48, num_hidden_layers=2,
                 layer_types=["full_attention"] * 2, rms_norm_eps=1e-6, attn_implementation="sdpa", **HEADS)
    if kind == "olmo3":  # RoPE of the same parameters from Llama's rotary embedding (OLMo 3's is per layer type)
        sizes["rope_parameters"] = dict(ROPE["default"])
        reference = olmo3.Olmo3DecoderLayer(Olmo3Config(sliding_window=None, **sizes), layer_idx=1)
        rotary = LlamaRotaryEmbedding(LlamaConfig(**sizes))
        options = {}
    else:  # OLMo Hybrid wants a linear layer in its config
        sizes["layer_types"] = ["linear_attention", "full_attention"]
        reference = olmo_hybrid.OlmoHybridAttentionDecoderLayer(OlmoHybridConfig(**sizes), layer_idx=1)
        rotary, options = None, {"position_embedding_type": "nope"}
    memlm_config = memlm.MemLMConfig(attention_qk_norm="all", norm_placement=["pre", "post"], **options, **sizes)
    randomize_(reference, seed=4)
    layer = MemLMPostNormDecoderLayer(memlm_config, layer_idx=1)
    copy_renamed(reference, layer, lambda name, w: (name.replace("self_attn.", "mixer."), w))
    return reference, layer, rotary, None if rotary is None else RotaryEmbedding(memlm_config)


@pytest.mark.parametrize("kind", ["olmo3", "olmo_hybrid_nope"])
def test_post_norm_block_with_whole_projection_qk_norm_matches_olmo(kind):
    reference, layer, olmo_rotary, memlm_rotary = olmo_block_pair(kind)
    assert sorted(name for name, _ in layer.named_parameters() if "norm" in name) == [
        "mixer.k_norm.weight", "mixer.q_norm.weight", "post_attention_layernorm.weight",
        "post_feedforward_layernorm.weight"]
    assert layer.mixer.q_norm.weight.shape == (4 * 8,) and layer.mixer.k_norm.weight.shape == (2 * 8,)
    x = torch.randn(2, SEQ_LEN, HIDDEN)
    mask = causal_mask(2, SEQ_LEN)
    x_reference, x_memlm = x.clone().requires_grad_(), x.clone().requires_grad_()
    expected = reference(x_reference, attention_mask=mask,
                         position_embeddings=None if olmo_rotary is None else olmo_rotary(x, positions()))
    expected = expected[0] if isinstance(expected, tuple) else expected
    out = run_memlm_mixer(layer, x_memlm, None if memlm_rotary is None else memlm_rotary(x, positions()),
                          attention_mask=mask, layer_type="full_attention")
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    upstream = torch.randn_like(expected)
    (expected * upstream).sum().backward()
    (out * upstream).sum().backward()
    assert_same_gradients(reference, layer, {n: n.replace("self_attn.", "mixer.") for n, _ in
                                             reference.named_parameters()}, x_reference, x_memlm)


def test_nope_model_has_no_rotary_embedding_and_ignores_positions():
    """Without position embeddings, attention depends on the tokens only: spreading the positions apart changes
    nothing, while the same model with RoPE (same weights, relative positions) does change."""
    sizes = dict(vocab_size=64, hidden_size=HIDDEN, num_hidden_layers=2, layer_types=["full_attention"] * 2, **HEADS)
    nope = memlm.MemLMForCausalLM(memlm.MemLMConfig(position_embedding_type="nope", **sizes)).eval()
    rope = memlm.MemLMForCausalLM(memlm.MemLMConfig(**sizes)).eval()
    rope.load_state_dict(nope.state_dict())
    assert nope.model.rotary_emb is None and rope.model.rotary_emb is not None
    ids = torch.randint(0, 64, (2, 12))
    shifted = torch.arange(0, 36, 3)[None]
    with torch.no_grad():
        torch.testing.assert_close(nope(ids, position_ids=shifted).logits, nope(ids).logits)
        assert not torch.allclose(rope(ids, position_ids=shifted).logits, rope(ids).logits, atol=1e-4)


# ----------------------------------------------------------------------------------------------- partial rotary


@pytest.mark.parametrize("rope", ["default", "linear", "llama3"])
def test_partial_rotary_equals_full_rotary_of_the_rotary_width(rope):
    """RoPE on the first half of 16 channels = Llama's RoPE of 8 channels, for the scaled types too (transformers'
    initializers read ``partial_rotary_factor``); the other 8 channels pass through."""
    parameters = dict({**ROPE, "linear": {"rope_type": "linear", "rope_theta": 10000.0, "factor": 4.0}}[rope])
    common = dict(vocab_size=64, hidden_size=HIDDEN, num_hidden_layers=1, max_position_embeddings=256, **HEADS)
    memlm_config = memlm.MemLMConfig(layer_types=["full_attention"], head_dim=16, **common,
                                     rope_parameters={**parameters, "partial_rotary_factor": 0.5})
    llama_config = LlamaConfig(head_dim=8, rope_parameters=parameters, **common)
    x = torch.randn(2, 4, SEQ_LEN, 16)
    cos, sin = RotaryEmbedding(memlm_config)(x, positions())
    expected_cos, expected_sin = LlamaRotaryEmbedding(llama_config)(x, positions())
    torch.testing.assert_close(cos, expected_cos)
    torch.testing.assert_close(sin, expected_sin)
    rotated = apply_rotary(x, cos, sin)
    torch.testing.assert_close(rotated[..., :8], apply_rotary(x[..., :8], expected_cos, expected_sin))
    assert torch.equal(rotated[..., 8:], x[..., 8:])


# -------------------------------------------------- GatedDeltaNet: negative eigenvalues, the output norm's eps


def olmo_hybrid_gdn_pair(allow_neg_eigval=True):
    """OLMo Hybrid's GDN layer (output norm eps 1e-5, rms_norm_eps 1e-6) and memlm's GatedDeltaNet with
    ``linear_allow_neg_eigval`` and ``linear_norm_eps=1e-5``; q/k/v projections concatenated into ``in_proj_qkv``."""
    sizes = dict(vocab_size=64, hidden_size=HIDDEN, num_hidden_layers=2, layer_types=["linear_attention",
                 "full_attention"], rms_norm_eps=1e-6, linear_num_key_heads=2, linear_num_value_heads=2,
                 linear_key_head_dim=8, linear_value_head_dim=16, linear_conv_kernel_dim=4,
                 linear_allow_neg_eigval=allow_neg_eigval, **HEADS)
    olmo_config = OlmoHybridConfig(**sizes)
    memlm_config = memlm.MemLMConfig(linear_norm_eps=1e-5, **sizes)
    reference = olmo_hybrid.OlmoHybridGatedDeltaNet(olmo_config, layer_idx=0)
    randomize_(reference, seed=5)
    mixer = GatedDeltaNet(memlm_config, layer_idx=0)
    assert mixer.norm.eps == 1e-5
    weights = reference.state_dict()
    names = {"g_proj.weight": "in_proj_z.weight", "a_proj.weight": "in_proj_a.weight", "b_proj.weight":
             "in_proj_b.weight", "conv1d.weight": "conv.conv1d.weight", "o_norm.weight": "norm.weight",
             "o_proj.weight": "out_proj.weight", "A_log": "A_log", "dt_bias": "dt_bias"}
    qkv = torch.cat([weights[f"{p}_proj.weight"] for p in "qkv"])
    mixer.load_state_dict({"in_proj_qkv.weight": qkv, **{names[n]: w for n, w in weights.items() if n in names}})
    return reference, mixer, olmo_config, memlm_config, names


def test_gated_deltanet_with_negative_eigenvalues_matches_olmo_hybrid():
    reference, mixer, _, _, names = olmo_hybrid_gdn_pair()
    x = torch.randn(2, SEQ_LEN, HIDDEN)
    x_reference, x_memlm = x.clone().requires_grad_(), x.clone().requires_grad_()
    expected = reference(x_reference)
    out = run_memlm_mixer(mixer, x_memlm)
    assert_matches(out, expected)
    upstream = torch.randn_like(expected)
    (expected * upstream).sum().backward()
    (out * upstream).sum().backward()
    assert_matches(x_memlm.grad, x_reference.grad)
    memlm_params = dict(mixer.named_parameters())
    for name, param in reference.named_parameters():
        if name in names:
            assert_matches(memlm_params[names[name]].grad, param.grad, msg=name)
    q, k, v = memlm_params["in_proj_qkv.weight"].grad.split([16, 16, 32])
    for grad, name in ((q, "q_proj"), (k, "k_proj"), (v, "v_proj")):
        assert_matches(grad, dict(reference.named_parameters())[f"{name}.weight"].grad, msg=name)
    # beta in [0, 2] matters: the same weights with beta = sigmoid(b) give other outputs
    plain = olmo_hybrid_gdn_pair(allow_neg_eigval=False)[1]
    plain.load_state_dict(mixer.state_dict())
    with torch.no_grad():
        assert not torch.allclose(run_memlm_mixer(plain, x), out, atol=1e-3)


def test_gated_deltanet_with_negative_eigenvalues_decodes_as_olmo_hybrid():
    reference, mixer, olmo_config, memlm_config, _ = olmo_hybrid_gdn_pair()
    x = torch.randn(2, SEQ_LEN + 3, HIDDEN)
    olmo_cache, memlm_cache = DynamicCache(config=olmo_config), DynamicCache(config=memlm_config)
    with torch.no_grad():
        for step in [slice(0, SEQ_LEN)] + [slice(t, t + 1) for t in range(SEQ_LEN, SEQ_LEN + 3)]:
            assert_matches(run_memlm_mixer(mixer, x[:, step], cache=memlm_cache), reference(x[:, step], olmo_cache))


# ------------------------------------------------------------------------------------------- config: the fields


def test_configs_written_before_the_options_load_with_them_off():
    written = memlm.MemLMConfig(num_hidden_layers=4).to_dict()
    for name in NEW_FIELDS:
        written.pop(name)
    loaded = memlm.MemLMConfig.from_dict(written)
    assert {name: getattr(loaded, name) for name in NEW_FIELDS} == {
        "attention_output_gate": False, "attention_qk_norm": None, "position_embedding_type": "rope",
        "norm_placement": None, "linear_allow_neg_eigval": False, "linear_norm_eps": None}
    assert memlm.MemLMConfig(num_hidden_layers=4, norm_placement=["pre"] * 4).norm_placement is None  # stored so


def test_option_fields_survive_save_and_load(tmp_path):
    options = dict(attention_output_gate=True, attention_qk_norm="all", position_embedding_type="nope",
                   norm_placement=["pre", "post", "pre", "post"], linear_allow_neg_eigval=True, linear_norm_eps=1e-5)
    memlm.MemLMConfig(num_hidden_layers=4, **options).save_pretrained(tmp_path)
    loaded = memlm.MemLMConfig.from_pretrained(tmp_path)
    assert {name: getattr(loaded, name) for name in options} == options
    rope = memlm.MemLMConfig(num_hidden_layers=4, partial_rotary_factor=0.25, head_dim=16)  # moved by transformers
    assert rope.rope_parameters["partial_rotary_factor"] == 0.25


@pytest.mark.parametrize(("kwargs", "message"), [
    (dict(attention_output_gate="yes"), r"attention_output_gate='yes' is not allowed: true or false"),
    (dict(linear_allow_neg_eigval=1), r"linear_allow_neg_eigval=1 is not allowed: true or false"),
    (dict(attention_qk_norm="layer"), r"attention_qk_norm='layer' is not allowed: one of \[None, 'head', 'all'\]"),
    (dict(position_embedding_type="alibi"),
     r"position_embedding_type='alibi' is not allowed: one of \['rope', 'nope'\]"),
    (dict(linear_norm_eps=0.0), r"linear_norm_eps=0.0 is not allowed: None \(rms_norm_eps\) or a finite number > 0"),
    (dict(norm_placement=["pre", "post"]), r"norm_placement=\['pre', 'post'\] is not allowed: .* num_hidden_layers=4"),
    (dict(norm_placement=["pre", "post", "sandwich", "pre"]),
     r"norm_placement\[2\]='sandwich' is not allowed: one of \('pre', 'post'\)"),
    (dict(partial_rotary_factor=1.5), r"partial_rotary_factor=1.5 \(in rope_parameters\) is not allowed: .*\(0, 1\]"),
    (dict(partial_rotary_factor=0.0), r"partial_rotary_factor=0.0"),
    (dict(head_dim=12, partial_rotary_factor=0.25), r"head_dim=12 is not allowed: .* \(= 3 with partial_rotary_fac"),
    (dict(layer_types=["memory_as_context", "full_attention"] * 2, attention_qk_norm="head"),
     r"attention_qk_norm='head' is not allowed with the memory layers \['memory_as_context'\]"),
])
def test_bad_option_values_are_refused_naming_field_and_value(kwargs, message):
    with pytest.raises(ValueError, match=message):
        memlm.MemLMConfig(**{"num_hidden_layers": 4, **kwargs})


def test_nope_needs_no_rope_theta():
    config = memlm.MemLMConfig(num_hidden_layers=4, position_embedding_type="nope", rope_theta=None, head_dim=7)
    assert config.position_embedding_type == "nope"
