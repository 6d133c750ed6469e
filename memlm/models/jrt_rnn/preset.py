"""JRT-RNN (Arora et al., arXiv 2407.05483) as a :class:`~memlm.MemLMConfig` preset.

The 360M model has 26 layers of width 1024: prefix linear attention at layers 1, 6, 11, 16, 21,
sliding-window attention at 2, 7, 12, 17, 22 and short gated convolutions elsewhere (one block of five
layers, repeated), a Based feature dimension of 16, MLPs of twice the width, and the objective next-token
loss on the suffix + 0.25 x masked-token loss on the prefix (15% masked).
"""

from __future__ import annotations

from memlm.models.configuration_memlm import MemLMConfig

_BLOCK = ("conv", "prefix_linear_attention", "sliding_attention", "conv", "conv")  # mixers (config.mixer_types)


def jrt_rnn_mixer_types(num_layers: int) -> list[str]:
    """The paper's pattern for ``num_layers`` (at least 2, so that one prefix layer is present): the mixer of
    layer ``i`` is ``_BLOCK[i % 5]``, i.e. ``conv, prefix_linear_attention, sliding_attention, conv, conv, ...``
    (their layer types: ``conv, linear_attention, sliding_attention, conv, conv``)."""
    if isinstance(num_layers, bool) or not isinstance(num_layers, int) or num_layers < 2:
        raise ValueError(f"num_hidden_layers must be an integer >= 2 for a JRT-RNN (layer 1 is the first prefix "
                         f"layer), got {num_layers!r}")
    return [_BLOCK[i % len(_BLOCK)] for i in range(num_layers)]


def jrt_rnn_config(
    num_hidden_layers: int = 26,
    hidden_size: int = 1024,
    num_attention_heads: int = 16,
    vocab_size: int = 50277,
    sliding_window: int = 128,
    feature_dim: int = 16,
    mask_token_id: int | None = None,
    **kwargs,
) -> MemLMConfig:
    """A JRT-RNN :class:`~memlm.MemLMConfig` (defaults: the 360M model).

    Args:
        num_attention_heads: heads of the sliding-window attention and of the prefix linear attention (whose
            value width per head is ``hidden_size / num_attention_heads``).
        sliding_window: tokens seen by the sliding-window attention layers.
        feature_dim: the Based feature dimension of q and k (``linear_key_head_dim``).
        mask_token_id: the token that replaces the masked prefix tokens when training with the objective
            (``prefix_lm_objective=True``, ``prefix_mlm_weight > 0``); None (the default) builds a config for
            inference, and training it with the masked objective raises ``ValueError`` asking for the token
            (recipes fill it from the tokenizer).
        kwargs: any other :class:`~memlm.MemLMConfig` field, overriding the preset.
    """
    fields = {
        "num_hidden_layers": num_hidden_layers,
        "hidden_size": hidden_size,
        "num_attention_heads": num_attention_heads,
        "vocab_size": vocab_size,
        "mixer_types": jrt_rnn_mixer_types(num_hidden_layers),
        "sliding_window": sliding_window,
        "linear_key_head_dim": feature_dim,
        "intermediate_size": 2 * hidden_size,
        "gated_conv_expand": 4,
        "gated_conv_kernel_dim": 3,
        "prefix_lm_objective": True,
        "prefix_mlm_weight": 0.25,
        "prefix_mlm_probability": 0.15,
        "mask_token_id": mask_token_id,
    }
    return MemLMConfig(**{**fields, **kwargs})
