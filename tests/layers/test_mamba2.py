"""The Mamba-2 layer against transformers' ``Mamba2Mixer`` (its torch path on CPU) with the same weights:
a whole sequence, a left-padded batch, and prefill + token-by-token decoding through each one's cache."""

import pytest
import torch
from transformers import DynamicCache, Mamba2Config
from transformers.models.mamba2.modeling_mamba2 import Mamba2Mixer

from memlm import MemLMConfig
from memlm.layers import Mamba2
from memlm.layers.inputs import MixerInputs

LIMITS = [None, (0.0, 0.3)]
# transformers 5.16's Mamba2Mixer normalizes the gated output over all groups at once (mamba_ssm, memlm and
# transformers >= 5.2x over each group): with one group every version agrees
GROUPS = 2 if hasattr(Mamba2Mixer(Mamba2Config(hidden_size=8, num_heads=2, head_dim=8, n_groups=2), 0).norm,
                      "group_size") else 1


def make_pair(time_step_limit, chunk_size=16, bias=True):
    reference_config = Mamba2Config(
        hidden_size=32, num_heads=8, head_dim=8, state_size=6, n_groups=GROUPS, expand=2, conv_kernel=4,
        chunk_size=chunk_size, use_conv_bias=True, use_bias=bias, layer_norm_epsilon=1e-5, num_hidden_layers=1,
        vocab_size=50, time_step_limit=time_step_limit or (0.0, float("inf")),
    )
    reference = Mamba2Mixer(reference_config, layer_idx=0).eval()
    config = MemLMConfig(
        vocab_size=50, hidden_size=32, num_attention_heads=4, num_hidden_layers=1, linear_attn_type="mamba2",
        hybrid_ratio="1:0", mamba_num_heads=8, mamba_head_dim=8, mamba_d_state=6, mamba_n_groups=GROUPS,
        mamba_time_step_limit=list(time_step_limit) if time_step_limit else None, mamba_proj_bias=bias,
        mamba_norm_eps=1e-5, mamba_chunk_size=64,
    )
    layer = Mamba2(config, layer_idx=0).eval()
    with torch.no_grad():
        for p in reference.parameters():
            p.copy_(torch.randn_like(p) * 0.5)
        reference.A_log.copy_(torch.randn(8))  # A between about -0.1 and -20
        weights = {("conv." + k if k.startswith("conv1d") else k): v for k, v in reference.state_dict().items()}
        layer.load_state_dict(weights, strict=True)
    return reference, layer, reference_config, config


def run_layer(layer, x, mask=None, cache=None):
    inputs = MixerInputs(attention_mask=mask, attention_masks={}, position_ids=None, position_embeddings=None,
                         cache=cache)
    return layer(x, inputs)


def assert_relative(actual, expected, tol=1e-5):
    error = (actual - expected).norm() / expected.norm()
    assert error < tol, f"relative error {error:.2e}"


@pytest.mark.parametrize("time_step_limit", LIMITS)
def test_matches_transformers_on_a_sequence(time_step_limit):
    torch.manual_seed(0)
    reference, layer, _, _ = make_pair(time_step_limit)
    x = torch.randn(2, 75, 32)
    with torch.no_grad():
        assert_relative(run_layer(layer, x), reference(x))


def test_matches_transformers_on_a_left_padded_batch():
    torch.manual_seed(1)
    # transformers lets in_proj's bias of the pads into the conv window; memlm zeroes the pads (left-padded ==
    # alone, with or without bias), so the two agree without projection biases
    reference, layer, _, _ = make_pair(None, bias=False)
    x = torch.randn(2, 40, 32)
    mask = torch.ones(2, 40, dtype=torch.long)
    mask[1, :9] = 0
    with torch.no_grad():
        ours = run_layer(layer, x, mask)
        theirs = reference(x, attention_mask=mask)
        assert_relative(ours * mask[..., None], theirs * mask[..., None])
    _, biased, _, _ = make_pair(None)
    with torch.no_grad():
        assert_relative(run_layer(biased, x, mask)[1:, 9:], run_layer(biased, x[1:, 9:]))


def test_decoding_matches_transformers_cache():
    torch.manual_seed(2)
    reference, layer, reference_config, config = make_pair(None)
    x = torch.randn(2, 30, 32)
    ours_cache, theirs_cache = DynamicCache(config=config), DynamicCache(config=reference_config)
    with torch.no_grad():
        ours = [run_layer(layer, x[:, :21], cache=ours_cache)]
        theirs = [reference(x[:, :21], theirs_cache)]
        for t in range(21, 30):
            ours.append(run_layer(layer, x[:, t:t + 1], cache=ours_cache))
            theirs.append(reference(x[:, t:t + 1], theirs_cache))
        assert_relative(torch.cat(ours, 1), torch.cat(theirs, 1))
        assert_relative(torch.cat(ours, 1), run_layer(layer, x))
