"""One decoding token through each linear mixer: the recurrent state is updated in place in the cache (no tensor of
the state's shape is allocated), and with gradients enabled the step runs out of place and gives the same output."""

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from transformers import DynamicCache

from memlm import MemLMConfig, MemLMForCausalLM

MIXERS = ["gated_deltanet", "kda", "gla", "deltanet", "hgrn2", "mamba2", "based"]


class NewTensors(TorchDispatchMode):
    """Records the shape of every tensor an op returns that is not a view of one of its inputs."""

    def __init__(self):
        super().__init__()
        self.shapes = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {a.untyped_storage().data_ptr() for a in args if isinstance(a, torch.Tensor)}
        for tensor in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(tensor, torch.Tensor) and tensor.untyped_storage().data_ptr() not in inputs:
                self.shapes.append(tuple(tensor.shape))
        return out


def model_with(mixer: str) -> MemLMForCausalLM:
    # 2 heads of 16 (d 4 for Based: a state of 1 + 4 + 16 features): no other tensor of a step has the state's shape
    config = MemLMConfig(
        vocab_size=61, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=2,
        mixer_types=[mixer, "full_attention"], linear_key_head_dim=4 if mixer == "based" else 16,
        mamba_head_dim=16, mamba_d_state=12,
    )
    return MemLMForCausalLM(config).eval()


@pytest.mark.parametrize("mixer", MIXERS)
def test_decoding_writes_the_cached_state_in_place(mixer):
    model = model_with(mixer)
    ids = torch.randint(1, 61, (3, 24))
    cache = DynamicCache(config=model.config)
    with torch.no_grad():
        model(ids[:, :20], cache=cache, use_cache=True)
        state = cache.layers[0].recurrent_states[0]
        cached = state.clone()
        with NewTensors() as recorded:
            model(ids[:, 20:21], cache=cache, use_cache=True)
    assert cache.layers[0].recurrent_states[0] is state
    assert not torch.equal(state, cached)  # the step changed the state, through no new tensor of its shape
    assert tuple(state.shape) not in recorded.shapes, f"a new {tuple(state.shape)} tensor: the state was reallocated"


@pytest.mark.parametrize("mixer", MIXERS)
def test_decoding_with_gradients_enabled_gives_the_same_step(mixer):
    model = model_with(mixer)
    ids = torch.randint(1, 61, (3, 21))
    steps = []
    for grad in (False, True):
        cache = DynamicCache(config=model.config)
        with torch.set_grad_enabled(grad):
            model(ids[:, :20], cache=cache, use_cache=True)
            steps.append(model(ids[:, 20:], cache=cache, use_cache=True).logits)
    assert steps[1].requires_grad  # the step ran out of place, recorded by autograd
    torch.testing.assert_close(steps[1].detach(), steps[0], atol=1e-5, rtol=1e-5)
