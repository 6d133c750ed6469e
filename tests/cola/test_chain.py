"""Chains of layers on stock transformers decoders and memlm: exact identity, exact caching, restoration."""

import pytest
import torch

from memlm.cola import chain

MODELS = ["llama", "qwen2-sliding", "qwen3", "mistral", "memlm-gdn", "memlm-titans"]
PATHS = {"skip": [0, 2, 3], "repeat": [0, 1, 1, 2, 3, 3], "reorder": [3, 0, 2, 1], "mixed": [1, 1, 0, 3, 2, 2, 0]}


@pytest.fixture(scope="module", params=MODELS)
def model(request, build):
    return build(request.param)


def test_identity_path_reproduces_the_stock_model_exactly(model):
    ids = torch.randint(1, 61, (2, 13))
    with torch.no_grad():
        logits = model(ids).logits
        generated = model.generate(ids, max_new_tokens=8, do_sample=False)
        with chain(model, [0, 1, 2, 3]):
            assert torch.equal(model(ids).logits, logits)
            assert torch.equal(model.generate(ids, max_new_tokens=8, do_sample=False), generated)


@pytest.mark.parametrize("kind", list(PATHS))
def test_cached_generation_equals_recomputation_on_any_path(model, kind):
    ids = torch.randint(1, 61, (2, 11))
    with chain(model, PATHS[kind]):
        cached = model.generate(ids, max_new_tokens=10, do_sample=False, use_cache=True)
        recomputed = model.generate(ids, max_new_tokens=10, do_sample=False, use_cache=False)
    assert torch.equal(cached, recomputed)


def test_a_path_changes_the_computation_and_the_model_is_restored(model):
    ids = torch.randint(1, 61, (1, 9))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    layers, num_layers = list(model.model.layers), model.config.num_hidden_layers
    layer_types = list(getattr(model.config, "layer_types", None) or [])
    with torch.no_grad():
        before = model(ids).logits
        with chain(model, [0, 0, 3]):
            assert len(model.model.layers) == 3 and model.config.num_hidden_layers == 3
            assert not torch.allclose(model(ids).logits, before)
        with pytest.raises(RuntimeError, match="inside"), chain(model, [3, 2, 1, 0]):
            raise RuntimeError("an error inside the block")
        assert torch.equal(model(ids).logits, before)
    assert list(model.model.layers) == layers and model.config.num_hidden_layers == num_layers
    assert list(getattr(model.config, "layer_types", None) or []) == layer_types
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    idx = [m.layer_idx for m in model.modules() if isinstance(getattr(m, "layer_idx", None), int)]
    assert sorted(set(idx)) == [0, 1, 2, 3]  # no copy's position leaked into the original layers


def test_repeated_layer_shares_weights_but_not_its_cache_slot(build):
    model = build("llama")
    with chain(model, [1, 1]):
        first, second = model.model.layers
        assert first is not second and first.self_attn is not second.self_attn
        assert first.self_attn.q_proj is second.self_attn.q_proj  # the weights are one
        assert (first.self_attn.layer_idx, second.self_attn.layer_idx) == (0, 1)
    assert model.model.layers[1].self_attn.layer_idx == 1


@pytest.mark.parametrize(
    "path, message",
    [([], "path is empty"), ([0, 4], r"path\[1\]=4 is not a layer index: the model has layers 0..3"),
     ([0, -1], r"path\[1\]=-1"), ([0, 1.0], r"path\[1\]=1.0"), ("0123", "sequence of layer indices"),
     ([0] * 17, "more than max_length=16")],
)
def test_bad_paths_raise_clear_errors(path, message, build):
    model = build("llama")
    with pytest.raises(ValueError, match=message), chain(model, path):
        pass
    assert len(model.model.layers) == 4
