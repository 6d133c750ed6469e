"""The Titans memory layers: stability on long inputs, config errors, and what each architecture sees."""

import pytest
import torch

from memlm import MemLMConfig, MemLMForCausalLM
from memlm.layers.neural_memory import NeuralMemory, memory_rule

PRESETS = ["titans", "moneta", "yaad", "memora"]


def finite_forward_and_backward(preset: str, length: int, dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    memory = NeuralMemory(64, 2, chunk_size=16, rule=memory_rule(preset, {"depth": 4})).to(dtype)
    x = torch.randn(1, length, 64, dtype=dtype, requires_grad=True)
    y, state = memory(x)
    y.float().square().mean().backward()
    assert torch.isfinite(y).all()
    assert torch.isfinite(x.grad).all()
    for name, param in memory.named_parameters():
        assert param.grad is not None and torch.isfinite(param.grad).all(), name
    assert all(torch.isfinite(p).all() for p in state.memory.params)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("preset", PRESETS)
def test_depth4_memory_is_finite_at_2k_tokens(preset, dtype):
    finite_forward_and_backward(preset, 2048, dtype)


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("preset", PRESETS)
def test_depth4_memory_is_finite_at_16k_tokens(preset, dtype):
    """No NaN or overflow in the forward or backward pass (about 2.5 min for all eight on 2 CPU cores)."""
    finite_forward_and_backward(preset, 16384, dtype)


def tiny(layer_types, **overrides):
    base = dict(vocab_size=61, hidden_size=32, intermediate_size=64, num_hidden_layers=len(layer_types),
                num_attention_heads=4, layer_types=layer_types, memory_chunk_size=8, sliding_window=4)
    return MemLMForCausalLM(MemLMConfig(**{**base, **overrides})).eval()


def test_mag_attention_sees_only_its_window():
    """A token outside MAG's sliding window reaches later tokens only through the memory."""
    model = tiny(["memory_as_gate"])
    ids = torch.randint(1, 61, (1, 12))
    changed = ids.clone()
    changed[0, 0] = (ids[0, 0] % 60) + 1
    attention = model.model.layers[0].mixer.attention
    with torch.no_grad():
        x = model.model.embed_tokens(ids)
        x2 = model.model.embed_tokens(changed)
        positions = model.model.rotary_emb(x, torch.arange(12)[None])
        a, _ = attention(x, positions)
        b, _ = attention(x2, positions)
    assert torch.allclose(a[0, 4:], b[0, 4:]) and not torch.allclose(a[0, :4], b[0, :4])
    with torch.no_grad():
        assert not torch.allclose(model(ids).logits[0, -1], model(changed).logits[0, -1])


def test_mac_never_sees_a_later_token():
    model = tiny(["memory_as_context", "full_attention"], num_persistent_memory_tokens=2)
    ids = torch.randint(1, 61, (1, 20))
    changed = ids.clone()
    changed[0, 13] = (ids[0, 13] % 60) + 1
    with torch.no_grad():
        before, after = model(ids).logits, model(changed).logits
    torch.testing.assert_close(before[0, :13], after[0, :13])
    assert not torch.allclose(before[0, 13:], after[0, 13:])


def test_memory_state_lives_in_the_cache():
    from transformers import DynamicCache

    from memlm.layers.memory_cache import MemoryCacheLayer

    model = tiny(["memory", "sliding_attention"])
    assert model.config.layer_types == ["linear_attention", "sliding_attention"]  # transformers' vocabulary
    cache = DynamicCache(config=model.config)
    with torch.no_grad():
        model(torch.randint(1, 61, (2, 11)), cache=cache, use_cache=True)
    layer = cache.layers[0]  # the memory mixer's own layer, in place of the empty linear layer transformers built
    assert isinstance(layer, MemoryCacheLayer)
    assert layer.get_seq_length() == 11 and layer.state.memory.seen.tolist() == [11, 11]
    with pytest.raises(ValueError, match="cannot be rolled back"):
        cache.crop(3)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(memory_preset="mamba"), "memory preset 'mamba' is unknown"),
        (dict(memory_rule={"depth": 9}), "memory_rule=.*depth=9"),
        (dict(memory_rule={"lr": 1}), r"memory rule fields \['lr'\] are unknown"),
        (dict(memory_rule={"retention": "kl", "attentional_bias": "dot"}), "kl retention"),
        (dict(memory_chunk_size=0), "memory_chunk_size must be a positive integer"),
        (dict(memory_max_lr=-1.0), "memory_max_lr must be a positive number"),
        (dict(num_persistent_memory_tokens=-2), "num_persistent_memory_tokens"),
        (dict(layer_types=["memory_as_gate", "full_attention"], sliding_window=None), "memory_as_gate"),
    ],
)
def test_config_errors_name_the_field(overrides, message):
    base = dict(vocab_size=61, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                layer_types=["memory", "full_attention"])
    with pytest.raises(ValueError, match=message):
        MemLMConfig(**{**base, **overrides})


@pytest.mark.parametrize("layer_types", [["memory", "sliding_attention"], ["memory_as_gate", "full_attention"],
                                         ["memory_as_context", "full_attention"]])
def test_packed_documents_match_separate_forwards(layer_types):
    """Packed training rows (cu_seq_lens_q): no memory, conv or attention crosses a document boundary."""
    model = tiny(layer_types, num_persistent_memory_tokens=2)
    docs = [torch.randint(1, 61, (1, n)) for n in (13, 21, 5)]
    packed = torch.cat(docs, dim=1)
    position_ids = torch.cat([torch.arange(d.shape[1]) for d in docs])[None]
    with torch.no_grad():
        logits = model(packed, position_ids=position_ids, cu_seq_lens_q=torch.tensor([0, 13, 34, 39])).logits
        start = 0
        for doc in docs:
            torch.testing.assert_close(logits[:, start : start + doc.shape[1]], model(doc).logits,
                                       atol=1e-4, rtol=1e-4)
            start += doc.shape[1]
