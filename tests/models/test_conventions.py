"""transformers' model conventions: input checks, config output flags, attention weights, gradient checkpointing
in both modes, the old cache argument name."""

import logging

import pytest
import torch

from memlm import MemLMForCausalLM
from memlm.layers.rotary import apply_rotary
from memlm.models.compat import CACHE_FIELD
from tests.models.test_modeling import VARIANTS, tiny_config, tiny_model


@pytest.fixture(scope="module")
def hybrid():
    torch.manual_seed(0)
    return tiny_model(hybrid_ratio="3:1")


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        (dict(input_ids=torch.tensor([[1, 61, 2]])), "token id 61, outside the model's vocabulary"),
        (dict(input_ids=torch.tensor([[1, -1, 2]])), "token id -1, outside"),
        (dict(input_ids=torch.ones(0, 5, dtype=torch.long)), "input_ids is empty"),
        (dict(input_ids=torch.ones(2, 0, dtype=torch.long)), "input_ids is empty"),
        (dict(input_ids=torch.ones(5, dtype=torch.long)), "input_ids must be"),
        (dict(input_ids=torch.ones(2, 5)), "integer token ids"),
        (dict(inputs_embeds=torch.ones(2, 5, 7)), "inputs_embeds must be"),
        (dict(input_ids=torch.ones(2, 5, dtype=torch.long), attention_mask=torch.ones(2, 4)), "attention_mask must"),
        (dict(input_ids=torch.ones(2, 5, dtype=torch.long), attention_mask=torch.ones(2, 6)), "attention_mask must"),
        (dict(input_ids=torch.ones(2, 5, dtype=torch.long), attention_mask=torch.ones(1, 5)), "attention_mask must"),
        (dict(input_ids=torch.ones(2, 5, dtype=torch.long), attention_mask=torch.ones(2, 1, 5, 5)),
         "attention_mask must"),
        (dict(), "exactly one of input_ids or inputs_embeds"),
    ],
)
def test_bad_inputs_name_the_argument(hybrid, inputs, message):
    with pytest.raises(ValueError, match=message):
        hybrid(**inputs)


def test_a_mask_over_cached_and_new_tokens_is_accepted(hybrid):
    ids = torch.randint(1, 61, (2, 6))
    with torch.no_grad():
        out = hybrid(ids[:, :5], attention_mask=torch.ones(2, 5), use_cache=True)
        step = hybrid(ids[:, 5:], attention_mask=torch.ones(2, 6), cache=getattr(out, CACHE_FIELD), use_cache=True)
        full = hybrid(ids, use_cache=False)
    torch.testing.assert_close(step.logits[:, -1], full.logits[:, -1], atol=1e-5, rtol=1e-5)


def test_config_output_hidden_states_and_return_dict_are_honoured():
    torch.manual_seed(0)
    model = MemLMForCausalLM(tiny_config(hybrid_ratio="3:1", output_hidden_states=True, return_dict=False)).eval()
    ids = torch.randint(1, 61, (2, 7))
    with torch.no_grad():
        out = model(ids, labels=ids, use_cache=False)
        reference = model(ids, labels=ids, use_cache=False, return_dict=True, output_hidden_states=False)
    assert isinstance(out, tuple)
    loss, logits, hidden_states = out  # fields that are not None, in the output's order
    torch.testing.assert_close(loss, reference.loss)
    torch.testing.assert_close(logits, reference.logits)
    assert reference.hidden_states is None
    assert len(hidden_states) == model.config.num_hidden_layers + 1
    torch.testing.assert_close(hidden_states[0], model.model.embed_tokens(ids))
    torch.testing.assert_close(model.lm_head(hidden_states[-1]), reference.logits)
    base = model.model(ids, use_cache=False)
    assert isinstance(base, tuple) and len(base) == 2  # last hidden state, hidden states


def test_output_attentions_gives_eager_weights_of_attention_layers():
    torch.manual_seed(0)
    config = tiny_config(layer_types=["linear_attention", "sliding_attention", "linear_attention", "full_attention"],
                         sliding_window=3)
    model = MemLMForCausalLM(config).eval()
    ids = torch.randint(1, 61, (2, 8))
    with pytest.raises(ValueError, match="attn_implementation='eager'"):
        model(ids, output_attentions=True)
    model.set_attn_implementation("eager")
    with torch.no_grad():
        out = model(ids, output_attentions=True, use_cache=False)
    linear0, sliding, linear2, full = out.attentions
    assert linear0 is None and linear2 is None
    for weights in (sliding, full):
        assert weights.shape == (2, 4, 8, 8)
        torch.testing.assert_close(weights.sum(-1), torch.ones(2, 4, 8))
    query, key = torch.arange(8)[:, None], torch.arange(8)[None, :]
    assert (full[..., key > query] == 0).all() and (full[..., key <= query] > 0).all()
    in_window = (key <= query) & (key > query - 3)
    assert (sliding[..., ~in_window] == 0).all() and (sliding[..., in_window] > 0).all()
    # the full-attention weights are the softmax of that layer's scaled query-key products
    layer = model.model.layers[3]
    captured = {}
    handle = layer.register_forward_pre_hook(lambda mod, args: captured.update(x=args[0]))
    with torch.no_grad():
        model(ids, use_cache=False)
    handle.remove()
    attention = layer.mixer
    x = layer.input_layernorm(captured["x"])
    cos, sin = model.model.rotary_emb(x, torch.arange(8)[None])
    q = apply_rotary(attention.q_proj(x).view(2, 8, 4, -1).transpose(1, 2), cos, sin)
    k = apply_rotary(attention.k_proj(x).view(2, 8, 4, -1).transpose(1, 2), cos, sin)
    scores = (q @ k.transpose(2, 3)) * attention.scaling
    expected = scores.masked_fill(key > query, float("-inf")).softmax(-1)
    torch.testing.assert_close(full, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("use_reentrant", [False, True])
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_gradient_checkpointing_gives_the_same_gradients(variant, use_reentrant):
    torch.manual_seed(0)
    model = tiny_model(**VARIANTS[variant]).train()
    if model.model.forget_lower_bounds is not None:
        with torch.no_grad():  # lower bounds that differ per layer, so their gradients are not trivial
            model.model.forget_lower_bounds.lower_bounds.normal_()
    ids = torch.randint(1, 61, (2, 21))

    def gradients():
        model.zero_grad()
        model(ids, labels=ids, use_cache=False).loss.backward()
        return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}

    reference = gradients()
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": use_reentrant})
    checkpointed = gradients()
    model.gradient_checkpointing_disable()
    assert checkpointed.keys() == reference.keys()
    for name, grad in reference.items():
        torch.testing.assert_close(checkpointed[name], grad, atol=1e-5, rtol=1e-4, msg=name)


def test_the_old_cache_name_warns_where_transformers_moved_to_cache(hybrid, caplog):
    ids = torch.randint(1, 61, (1, 6))
    with torch.no_grad():
        cache = getattr(hybrid(ids[:, :5], use_cache=True), CACHE_FIELD)
        with caplog.at_level(logging.WARNING):
            old = hybrid(ids[:, 5:], past_key_values=cache, use_cache=True)
            hybrid.generate(ids, max_new_tokens=2, do_sample=False)
        full = hybrid(ids, use_cache=False)
    torch.testing.assert_close(old.logits[:, -1], full.logits[:, -1], atol=1e-5, rtol=1e-5)
    warnings = [r.getMessage() for r in caplog.records if "past_key_values" in r.getMessage()]
    assert warnings == (["`past_key_values` is deprecated. Use `cache` instead."] if CACHE_FIELD == "cache" else [])
    with pytest.raises(ValueError, match="not both"):
        hybrid(ids, past_key_values=cache, cache=cache)


SLIDING_FIRST = {
    "linear-sliding-linear-full": ["linear_attention", "sliding_attention", "linear_attention", "full_attention"],
    "sliding-linear-full-linear": ["sliding_attention", "linear_attention", "full_attention", "linear_attention"],
    "sliding-memory-sliding-full": ["sliding_attention", "memory", "sliding_attention", "full_attention"],
}


@pytest.mark.parametrize("attn_implementation", ["sdpa", "eager"])
@pytest.mark.parametrize("pattern", list(SLIDING_FIRST))
def test_a_sliding_layer_before_the_full_one_generates_exactly(pattern, attn_implementation):
    """Each attention mask is sized against the cache of its own layer type (transformers 5.16 sized the
    full-attention mask at the sliding window, or asked a linear layer for its length, when a sliding layer came
    first)."""
    torch.manual_seed(0)
    model = tiny_model(layer_types=SLIDING_FIRST[pattern], sliding_window=3, memory_chunk_size=16)
    model.set_attn_implementation(attn_implementation)
    ids = torch.randint(1, 61, (2, 5))
    with torch.no_grad():
        generated = model.generate(ids, max_new_tokens=8, do_sample=False)
        expected = ids
        for _ in range(8):  # greedy decoding by full recomputation
            expected = torch.cat([expected, model(expected, use_cache=False).logits[:, -1:].argmax(-1)], 1)
    assert torch.equal(generated, expected)
