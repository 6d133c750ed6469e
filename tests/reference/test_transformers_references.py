"""memlm's mixers against transformers' own layers with the same weights (outside references).

- :class:`memlm.layers.GatedDeltaNet` against transformers' Qwen3.5 ``Qwen3_5GatedDeltaNet`` (its torch path),
  with grouped value heads and a length that is not a multiple of the 64-token chunk: outputs, the gradients
  of the input and of every weight, a left-padded batch, and a prefill followed by cached decoding steps.
- :class:`memlm.layers.Attention` against transformers' ``LlamaAttention`` (GQA, RoPE), with eager and sdpa
  attention: outputs and gradients; and memlm's ``RotaryEmbedding`` against ``LlamaRotaryEmbedding`` (plain
  and llama3-scaled RoPE).

Both sides are built from their own config with the same sizes; transformers' weights are randomized (gates,
norm weights included) and copied into memlm's layer by name, so a wrong name, shape or formula shows.
"""

import inspect

import pytest
import torch
from transformers import DynamicCache, LlamaConfig
from transformers.models.llama.modeling_llama import LlamaAttention, LlamaRotaryEmbedding

import memlm
from memlm.layers import Attention, GatedDeltaNet
from memlm.layers.inputs import MixerInputs
from memlm.layers.rotary import RotaryEmbedding

qwen3_5 = pytest.importorskip("transformers.models.qwen3_5.modeling_qwen3_5", reason="transformers without Qwen3.5")
Qwen3_5GatedDeltaNet = qwen3_5.Qwen3_5GatedDeltaNet
Qwen3_5TextConfig = pytest.importorskip("transformers.models.qwen3_5.configuration_qwen3_5").Qwen3_5TextConfig

HIDDEN = 32
SEQ_LEN = 70  # not a multiple of the 64-token chunk of both delta-rule implementations
GDN_NAMES = {"conv1d.weight": "conv.conv1d.weight"}  # Qwen3.5 name -> memlm name, where they differ


def run_memlm_mixer(mixer, hidden_states, position_embeddings=None, attention_mask=None, cache=None,
                    layer_type=None):
    """One call of a memlm mixer (or decoder layer), the only place the reference tests depend on the mixers'
    forward signature.

    ``attention_mask``: a ``[B, T]`` padding mask (recurrent mixers), or the ``[B, 1, T, S]`` additive mask an
    attention layer gets from transformers' mask builders, for ``layer_type`` (default: the mixer's)."""
    built_mask = attention_mask is not None and attention_mask.dim() == 4
    layer_type = layer_type or getattr(mixer, "layer_type", None)
    inputs = MixerInputs(
        attention_mask=None if built_mask else attention_mask,
        attention_masks={layer_type: attention_mask if built_mask else None},
        position_ids=torch.arange(hidden_states.shape[1])[None],
        position_embeddings=position_embeddings,
        cache=cache,
    )
    return mixer(hidden_states, inputs)


def assert_matches(actual: torch.Tensor, expected: torch.Tensor, msg: str | None = None) -> None:
    """Equal up to fp32 rounding: both sides run in fp32 but order their sums differently (chunked solvers,
    batched matmuls), so the absolute tolerance scales with the largest expected value (gradients reach 1e3)."""
    atol = 2e-6 * max(1.0, float(expected.detach().abs().max()))
    torch.testing.assert_close(actual, expected, atol=atol, rtol=1e-4, msg=msg)


def randomize_(module: torch.nn.Module, seed: int) -> None:
    """Every parameter drawn afresh (so that norm weights of 1 or zero biases cannot hide a missing term)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in module.named_parameters():
            scale = 0.5 if name in ("A_log", "dt_bias") else 0.3
            param.copy_(torch.randn(param.shape, generator=generator) * scale + (1.0 if "norm" in name else 0.0))


def copy_weights(reference: torch.nn.Module, mixer: torch.nn.Module, names: dict[str, str]) -> None:
    """Load ``reference``'s state dict into ``mixer`` under memlm's names; strict: every weight maps."""
    mixer.load_state_dict({names.get(name, name): value for name, value in reference.state_dict().items()})


def assert_same_gradients(reference, mixer, names, x_reference, x_memlm) -> None:
    assert_matches(x_memlm.grad, x_reference.grad)
    memlm_params = dict(mixer.named_parameters())
    for name, param in reference.named_parameters():
        assert_matches(memlm_params[names.get(name, name)].grad, param.grad, msg=name)


# ---------------------------------------------------------------------------------------------- GatedDeltaNet


def gdn_pair(num_k_heads=2, num_v_heads=4, head_dim=8):
    """transformers' Qwen3.5 GDN layer (randomized) and memlm's GatedDeltaNet with the same weights."""
    sizes = dict(hidden_size=HIDDEN, num_hidden_layers=1, layer_types=["linear_attention"], rms_norm_eps=1e-6,
                 linear_num_key_heads=num_k_heads, linear_num_value_heads=num_v_heads, linear_key_head_dim=head_dim,
                 linear_value_head_dim=head_dim, linear_conv_kernel_dim=4, num_attention_heads=4)
    qwen_config = Qwen3_5TextConfig(vocab_size=64, num_key_value_heads=2, head_dim=8, **sizes)
    memlm_config = memlm.MemLMConfig(vocab_size=64, **sizes)
    reference = Qwen3_5GatedDeltaNet(qwen_config, layer_idx=0)
    randomize_(reference, seed=1)
    mixer = GatedDeltaNet(memlm_config, layer_idx=0)
    copy_weights(reference, mixer, GDN_NAMES)
    return reference, mixer, qwen_config, memlm_config


@pytest.mark.parametrize("num_k_heads, num_v_heads", [(2, 4), (4, 4)])
def test_gated_deltanet_matches_qwen3_5_outputs_and_gradients(num_k_heads, num_v_heads):
    reference, mixer, _, _ = gdn_pair(num_k_heads, num_v_heads)
    x = torch.randn(2, SEQ_LEN, HIDDEN)
    x_reference, x_memlm = x.clone().requires_grad_(), x.clone().requires_grad_()
    expected = reference(x_reference)
    out = run_memlm_mixer(mixer, x_memlm)
    assert_matches(out, expected)
    upstream = torch.randn_like(expected)  # a random cotangent: every output element weighs differently
    (expected * upstream).sum().backward()
    (out * upstream).sum().backward()
    assert_same_gradients(reference, mixer, GDN_NAMES, x_reference, x_memlm)


def test_gated_deltanet_matches_qwen3_5_on_a_left_padded_batch():
    reference, mixer, _, _ = gdn_pair()
    x = torch.randn(2, SEQ_LEN, HIDDEN)
    mask = torch.ones(2, SEQ_LEN, dtype=torch.long)
    mask[1, :9] = 0  # row 1: nine left pads
    with torch.no_grad():
        expected = reference(x, attention_mask=mask)
        out = run_memlm_mixer(mixer, x, attention_mask=mask)
        alone = run_memlm_mixer(mixer, x[1:, 9:])  # row 1 without its pads
    assert_matches(out, expected)
    assert_matches(out[1:, 9:], alone)


def test_gated_deltanet_matches_qwen3_5_when_decoding_with_a_cache():
    if "cache" not in inspect.signature(Qwen3_5GatedDeltaNet.forward).parameters:
        pytest.skip("this transformers' Qwen3.5 GDN layer names its cache argument otherwise")
    reference, mixer, qwen_config, memlm_config = gdn_pair()
    x = torch.randn(2, SEQ_LEN + 3, HIDDEN)
    qwen_cache, memlm_cache = DynamicCache(config=qwen_config), DynamicCache(config=memlm_config)
    with torch.no_grad():
        steps = [slice(0, SEQ_LEN)] + [slice(t, t + 1) for t in range(SEQ_LEN, SEQ_LEN + 3)]  # prefill, 3 steps
        for step in steps:
            expected = reference(x[:, step], cache=qwen_cache)
            out = run_memlm_mixer(mixer, x[:, step], cache=memlm_cache)
            assert_matches(out, expected)
        for state in ("get_conv_state", "get_recurrent_state"):
            assert_matches(getattr(memlm_cache, state)(0), getattr(qwen_cache, state)(0), msg=state)


# ----------------------------------------------------------------------------------------------------- Attention

ROPE = {
    "default": {"rope_type": "default", "rope_theta": 10000.0},
    "llama3": {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 32},
}


def attention_pair(attn_implementation="sdpa", rope="default"):
    """transformers' LlamaAttention (randomized, with biases) and memlm's Attention with the same weights, and
    each library's rotary embedding for the same config."""
    sizes = dict(hidden_size=HIDDEN, num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2, head_dim=8,
                 attention_bias=True, max_position_embeddings=256, rope_parameters=dict(ROPE[rope]),
                 attn_implementation=attn_implementation)
    llama_config = LlamaConfig(vocab_size=64, **sizes)
    memlm_config = memlm.MemLMConfig(vocab_size=64, layer_types=["full_attention"], **sizes)
    reference = LlamaAttention(llama_config, layer_idx=0)
    randomize_(reference, seed=2)
    mixer = Attention(memlm_config, layer_idx=0)
    copy_weights(reference, mixer, {})
    return reference, mixer, LlamaRotaryEmbedding(llama_config), RotaryEmbedding(memlm_config)


@pytest.mark.parametrize("rope", list(ROPE))
def test_rotary_embedding_matches_llama(rope):
    _, _, llama_rotary, memlm_rotary = attention_pair(rope=rope)
    x = torch.randn(2, 5, HIDDEN)
    position_ids = torch.stack([torch.arange(5, 5 + SEQ_LEN), torch.arange(100, 100 + SEQ_LEN)])
    for expected, got in zip(llama_rotary(x, position_ids), memlm_rotary(x, position_ids), strict=True):
        assert got.shape == (2, SEQ_LEN, 8)
        torch.testing.assert_close(got, expected)


def causal_mask(batch: int, seq_len: int) -> torch.Tensor:
    """The additive ``[B, 1, T, T]`` causal mask that transformers' attention functions take."""
    blocked = torch.ones(seq_len, seq_len, dtype=torch.bool).triu(1)
    return torch.zeros(seq_len, seq_len).masked_fill(blocked, torch.finfo(torch.float32).min).expand(batch, 1, -1, -1)


@pytest.mark.parametrize("attn_implementation, mask", [("eager", "explicit"), ("sdpa", "explicit"), ("sdpa", None)])
@pytest.mark.parametrize("rope", list(ROPE))
def test_attention_matches_llama_outputs_and_gradients(attn_implementation, mask, rope):
    reference, mixer, llama_rotary, memlm_rotary = attention_pair(attn_implementation, rope)
    x = torch.randn(2, SEQ_LEN, HIDDEN)
    position_ids = torch.arange(SEQ_LEN).expand(2, -1)
    attention_mask = causal_mask(2, SEQ_LEN) if mask == "explicit" else None  # None: sdpa's is_causal
    x_reference, x_memlm = x.clone().requires_grad_(), x.clone().requires_grad_()
    expected, _ = reference(x_reference, llama_rotary(x, position_ids), attention_mask)
    out = run_memlm_mixer(mixer, x_memlm, memlm_rotary(x, position_ids), attention_mask=attention_mask)
    assert_matches(out, expected)
    upstream = torch.randn_like(expected)
    (expected * upstream).sum().backward()
    (out * upstream).sum().backward()
    assert_same_gradients(reference, mixer, {}, x_reference, x_memlm)
    # causal: changing the last token leaves every earlier output as it was
    changed = x.clone()
    changed[:, -1] += 1.0
    with torch.no_grad():
        again = run_memlm_mixer(mixer, changed, memlm_rotary(x, position_ids), attention_mask=attention_mask)
    torch.testing.assert_close(again[:, :-1], out[:, :-1].detach())
    assert not torch.allclose(again[:, -1], out[:, -1])
