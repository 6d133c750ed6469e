"""Qwen3-Next (transformers ``qwen3_next``) into memlm: its dense layers only.

The decoder is Qwen3.5's (:mod:`memlm.convert.qwen3_5`: zero-centred norms, gated attention with per-head q/k
norms, partial RoPE), except that each GatedDeltaNet layer stores its input projections fused per key-head group
(transformers' ``fix_query_key_value_ordering``). For key heads ``g = 0..nk-1``, each serving ``r = nv / nk`` value
heads::

    in_proj_qkvz rows = [q_g (dk) | k_g (dk) | v_g (r dv) | z_g (r dv)]  for g = 0..nk-1
    in_proj_ba   rows = [b_g (r)  | a_g (r)]                              for g = 0..nk-1

memlm's projections hold each part for all groups in order (``in_proj_qkv = [q_0..q_nk | k_0.. | v_0..]``,
``in_proj_z``, ``in_proj_b``, ``in_proj_a``), which is the order Qwen3-Next's convolution reads (its ``conv1d``
channels are q | k | v after reordering): the convolution weight is taken as it is.

A layer's MLP is a mixture of experts when ``num_experts > 0``, ``(i + 1) % decoder_sparse_step == 0`` and ``i`` is
not in ``mlp_only_layers``; memlm has no MoE MLP, so a source with any such layer is refused.
"""

from __future__ import annotations

import torch
from transformers import Qwen3NextConfig

from memlm.convert.common import split_groups, take
from memlm.convert.qwen3_5 import QwenHybridImporter
from memlm.convert.registry import ConversionError, register_importer

MOE_FIELDS = (
    "num_experts", "decoder_sparse_step", "mlp_only_layers", "moe_intermediate_size",
    "shared_expert_intermediate_size", "num_experts_per_tok", "norm_topk_prob", "output_router_logits",
    "router_aux_loss_coef",
)


@register_importer("qwen3_next")
class Qwen3NextImporter(QwenHybridImporter):
    config_class = Qwen3NextConfig
    extra_fields = MOE_FIELDS
    droppable = {"mtp": ("mtp.",)}

    def check_extra(self, text, where):
        defaults = Qwen3NextConfig()
        experts = text.get("num_experts", defaults.num_experts)
        step = text.get("decoder_sparse_step", defaults.decoder_sparse_step)
        dense = set(text.get("mlp_only_layers") or ())
        layers = text.get("num_hidden_layers", defaults.num_hidden_layers)
        moe = [i for i in range(layers) if experts > 0 and (i + 1) % step == 0 and i not in dense]
        if moe:
            raise ConversionError(f"{where}: num_experts={experts}, decoder_sparse_step={step}, mlp_only_layers="
                                  f"{sorted(dense)}: layers {moe} have a mixture-of-experts MLP, which memlm has no "
                                  "module for; memlm converts Qwen3-Next models whose every layer is dense (in "
                                  "mlp_only_layers, or num_experts=0)")

    def linear_projections(self, tensors, linear, config) -> list[tuple[str, torch.Tensor]]:
        nk, dk, dv = config.linear_num_key_heads, config.linear_key_head_dim, config.linear_value_head_dim
        r = config.linear_num_value_heads // nk
        try:
            q, k, v, z = split_groups(take(tensors, f"{linear}in_proj_qkvz.weight"), nk, [dk, dk, r * dv, r * dv])
            b, a = split_groups(take(tensors, f"{linear}in_proj_ba.weight"), nk, [r, r])
        except ConversionError as error:
            raise ConversionError(f"{linear}: {error}") from error
        return [("in_proj_qkv", torch.cat([q, k, v])), ("in_proj_z", z), ("in_proj_b", b), ("in_proj_a", a)]
