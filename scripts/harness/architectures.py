"""Named architectures of one width and depth, for comparisons such as the reproduction scripts'.

``model_section(name, ...)`` returns a recipe's ``model`` section. Every architecture shares ``hidden_size``,
``num_hidden_layers``, ``num_attention_heads`` and MLP width ``2 x hidden_size``; they differ in their mixers:

- ``attention``: full attention everywhere (``hybrid_ratio "0:1"``);
- ``3:1 hybrid``: three GatedDeltaNet layers per full-attention layer;
- ``all-GDN``: GatedDeltaNet everywhere;
- ``3:1 GLA``, ``3:1 DeltaNet``, ``3:1 Mamba-2``, ``3:1 KDA``: the 3:1 hybrid with another linear mixer (one
  entry each in :data:`_PATTERNS`: any registered linear mixer, see ``memlm.layers.registry.linear_mixers``);
- ``Based``: JRT-RNN's layer pattern with causal Based linear attention in place of prefix linear attention
  (short gated convolutions, sliding-window attention, Based), the Based paper's recipe;
- ``JRT-RNN``: :func:`memlm.jrt_rnn_config` (prefix linear attention, trained with the prefix-LM objective);
- ``JRT-RNN (no MLM)``: the same model trained on next-token prediction only (``prefix_mlm_weight = 0``): the
  masked-token term corrupts synthetic key-value contexts (docs/guides/jrt_rnn.md).
"""

from __future__ import annotations

from memlm.models.jrt_rnn import jrt_rnn_mixer_types

# name -> (hybrid_ratio, linear_attn_type): the architectures that differ only in their layer ratio and linear mixer
_PATTERNS = {
    "attention": ("0:1", "gated_deltanet"),
    "3:1 hybrid": ("3:1", "gated_deltanet"),
    "all-GDN": ("1:0", "gated_deltanet"),
    "3:1 GLA": ("3:1", "gla"),
    "3:1 DeltaNet": ("3:1", "deltanet"),
    "3:1 Mamba-2": ("3:1", "mamba2"),
    "3:1 KDA": ("3:1", "kda"),
}
ARCHITECTURES = (*_PATTERNS, "Based", "JRT-RNN", "JRT-RNN (no MLM)")


def parse_architectures(text: str) -> list[str]:
    """``"attention, JRT-RNN"`` -> ``["attention", "JRT-RNN"]``; ValueError naming any unknown name."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in ARCHITECTURES]
    if unknown or not names:
        raise ValueError(f"architectures {unknown or text!r} unknown; choose from {list(ARCHITECTURES)}")
    return names


def directory_name(name: str) -> str:
    """A file-system name for architecture ``name`` (``"3:1 hybrid"`` -> ``"3to1_hybrid"``)."""
    return name.replace(" ", "_").replace(":", "to").replace("(", "").replace(")", "")


def model_section(name: str, hidden_size: int, num_layers: int, num_heads: int, max_positions: int,
                  sliding_window: int = 128, feature_dim: int = 16) -> dict:
    """The recipe ``model`` section of architecture ``name`` (one of :data:`ARCHITECTURES`).

    ``sliding_window`` and ``feature_dim`` (the Based feature dimension) apply to ``Based`` and ``JRT-RNN``.
    """
    common = {"hidden_size": hidden_size, "intermediate_size": 2 * hidden_size, "num_hidden_layers": num_layers,
              "num_attention_heads": num_heads, "max_position_embeddings": max_positions}
    if name in _PATTERNS:
        ratio, mixer = _PATTERNS[name]
        return {"config": {**common, "hybrid_ratio": ratio, "linear_attn_type": mixer}}
    based = {"sliding_window": sliding_window, "linear_key_head_dim": feature_dim}
    if name == "Based":
        mixer_types = ["based" if m == "prefix_linear_attention" else m for m in jrt_rnn_mixer_types(num_layers)]
        return {"config": {**common, **based, "mixer_types": mixer_types,
                           "gated_conv_expand": 4, "gated_conv_kernel_dim": 3}}
    if name in ("JRT-RNN", "JRT-RNN (no MLM)"):
        no_mlm = {"prefix_mlm_weight": 0.0} if name == "JRT-RNN (no MLM)" else {}
        return {"config": {**common, "sliding_window": sliding_window, "feature_dim": feature_dim, **no_mlm},
                "preset": "jrt_rnn"}
    raise ValueError(f"architecture {name!r} is unknown; choose from {list(ARCHITECTURES)}")
