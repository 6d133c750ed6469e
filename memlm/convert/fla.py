"""fla-format checkpoints (flash-linear-attention's ``gated_deltanet``, ``hgrn2``, ``gla`` and ``delta_net`` model
types) as memlm models.

fla's models are pre-norm stacks (fla-core 0.6: ``fla/models/{gated_deltanet,hgrn2,gla,delta_net}/``)::

    h = x + mixer(attn_norm(x)),   y = h + GatedMLP(mlp_norm(h)),   logits = lm_head(norm(y_L))

``GatedMLP(x) = down(SiLU(gate(x)) * up(x))``, every norm an RMSNorm with ``norm_eps``. A config's ``attn`` (a dict,
or in fla 0.6 a list of dicts) names the layers that are softmax attention instead (``fla/layers/attn.py``):
``head_dim = hidden_size // num_heads``, ``num_kv_heads`` grouped heads, q/k/v biases when ``qkv_bias`` (none on
``o_proj``), non-interleaved RoPE with base ``rope_theta`` on all channels, and with ``window_size = W`` each token
sees itself and the ``W - 1`` tokens before it (flash-attn's ``window_size=(W - 1, 0)``), which is memlm's
``sliding_attention`` with ``sliding_window = W``.

Name map (``model.layers.N.`` on both sides; memlm's mixer is ``mixer``)::

    model.embeddings             -> model.embed_tokens        attn_norm -> input_layernorm
    model.norm, lm_head          -> model.norm, lm_head       mlp_norm  -> post_attention_layernorm
    attn.{q,k,v,o}_proj (attention layers)   -> mixer.{q,k,v,o}_proj (o_proj's bias zero with qkv_bias)
    GatedDeltaNet: attn.{q,k,v}_proj -> mixer.in_proj_qkv (rows q|k|v), attn.{q,k,v}_conv1d -> mixer.conv.conv1d,
        g_proj -> in_proj_z, a_proj -> in_proj_a, b_proj -> in_proj_b, A_log, dt_bias, o_norm -> norm,
        o_proj -> out_proj
    HGRN-2: attn.{q,f,i}_proj, g_norm, o_proj -> mixer.{same}; model.lower_bounds -> model.forget_lower_bounds
        (re-parametrized: :func:`hgrn2_lower_bounds`)
    GLA: attn.{q,k,v,g,o}_proj, gk_proj.{0,1}, g_norm_swish_gate (or g_norm, fuse_norm=false) -> mixer.{same}
        (the norm as mixer.g_norm_swish_gate)
    DeltaNet: attn.{q,k,v,b,g,o}_proj, o_norm -> mixer.{same}; attn.{q,k,v}_conv1d -> mixer.conv.conv1d (q|k|v)

What memlm cannot represent raises :class:`ConversionError` naming the field: an ungated or conv-less
GatedDeltaNet (``use_gate``, ``use_short_conv``), a sigmoid output gate, attention residuals
(``attnres_block_size``), ``powlu`` MLPs, q/k norms in the attention (``attn.qk_norm``), HGRN-2's short convs or
missing lower bounds, an attention layer 0 before HGRN-2 layers, GLA's grouped k/v heads, feature map, short convs,
clamp or missing output gate, DeltaNet without short convs or beta or with another q/k activation or norm, and any
config key this importer does not know.
"""

from __future__ import annotations

import math

import torch

from memlm.convert.checkpoint import Checkpoint
from memlm.convert.common import build_config, check_keys, embeddings_and_head, refuse, take
from memlm.convert.registry import ConversionError, Importer, register_importer
from memlm.models.configuration_memlm import MemLMConfig

# Keys of fla's model configs that change nothing in a forward pass (kernel choices, fusions, training losses,
# initialization, the cache switch).
INERT_KEYS = frozenset({
    "attn_mode", "fuse_norm", "fuse_swiglu", "fuse_cross_entropy", "fuse_linear_cross_entropy", "use_l2warp",
    "initializer_range", "use_cache",
})
COMMON_KEYS = frozenset({
    "vocab_size", "hidden_size", "num_hidden_layers", "hidden_ratio", "intermediate_size", "hidden_act", "norm_eps",
    "max_position_embeddings", "tie_word_embeddings", "attn", "attnres_block_size", "pad_token_id", "bos_token_id",
    "eos_token_id",
})
ATTENTION_KEYS = frozenset({"layers", "num_heads", "num_kv_heads", "qkv_bias", "qk_norm", "window_size", "rope_theta"})


def gated_deltanet_weights(tensors: dict[str, torch.Tensor], src: str, dst: str) -> dict[str, torch.Tensor]:
    """fla's GatedDeltaNet tensors under ``src`` (``"model.layers.3.attn."``) as memlm's under ``dst``
    (``"model.layers.3.mixer."``). The convolution is fla's three ``{q,k,v}_conv1d`` (``[C, 1, K]`` each)
    concatenated in q|k|v order, or one ``conv1d`` already over q|k|v (transformers' OLMo Hybrid class)."""
    state = {
        dst + "in_proj_qkv.weight": torch.cat([take(tensors, f"{src}{p}_proj.weight") for p in "qkv"]),
        dst + "in_proj_z.weight": take(tensors, src + "g_proj.weight"),
        dst + "in_proj_a.weight": take(tensors, src + "a_proj.weight"),
        dst + "in_proj_b.weight": take(tensors, src + "b_proj.weight"),
        dst + "A_log": take(tensors, src + "A_log"),
        dst + "dt_bias": take(tensors, src + "dt_bias"),
        dst + "norm.weight": take(tensors, src + "o_norm.weight"),
        dst + "out_proj.weight": take(tensors, src + "o_proj.weight"),
    }
    if src + "conv1d.weight" in tensors:
        state[dst + "conv.conv1d.weight"] = take(tensors, src + "conv1d.weight")
    else:
        state[dst + "conv.conv1d.weight"] = torch.cat([take(tensors, f"{src}{p}_conv1d.weight") for p in "qkv"])
    return state


def hgrn2_lower_bounds(lower_bounds: torch.Tensor, hgrn2_layers: list[int]) -> torch.Tensor:
    """fla's ``lower_bounds [L, D]`` (one row per layer of the model) as memlm's ``[M, D]`` (one per HGRN-2 layer).

    fla: ``p = softmax(lower_bounds, 0)``, ``P = cumsum(p)``, layer ``i``'s bound ``P_i - p_0``. memlm:
    ``q = softmax(w, 0)``, its ``m``-th HGRN-2 layer's bound ``q_1 + ... + q_m``. With the HGRN-2 layers at
    ``a_0 = 0 < a_1 < ... < a_{M-1}``, equal bounds need ``q_m = p_{a_{m-1}+1} + ... + p_{a_m}`` (m >= 1) and
    ``q_0 = 1 - (q_1 + ... + q_{M-1})``; ``w = log q`` (``softmax(log q) = q``, as q sums to 1). Computed in fp64.
    """
    p = lower_bounds.double().softmax(0)
    segments = [p[a + 1: b + 1].sum(0) for a, b in zip(hgrn2_layers, hgrn2_layers[1:], strict=False)]
    first = p[0] + p[hgrn2_layers[-1] + 1:].sum(0)
    return torch.stack([first, *segments]).log().float()


class FlaImporter(Importer):
    """What fla's GatedDeltaNet and HGRN-2 models share: the config fields, the attention layers, the block."""

    mixer: str  # memlm's mixer of the model's own (non-attention) layers
    mixer_keys: frozenset[str]  # the config keys of that mixer

    def config(self, checkpoint: Checkpoint, drop: frozenset[str]) -> MemLMConfig:
        source, where = checkpoint.config, str(checkpoint.directory / "config.json")
        check_keys(source, COMMON_KEYS | INERT_KEYS | self.mixer_keys, where)
        hidden = source.get("hidden_size")
        if source.get("attnres_block_size") is not None:
            raise refuse(where, "attnres_block_size", source["attnres_block_size"], "null (plain residuals)")
        act = source.get("hidden_act", "swish")
        if act not in ("swish", "silu"):
            raise refuse(where, "hidden_act", act, "'swish' (fla's GatedMLP is SwiGLU)")
        intermediate = source.get("intermediate_size")
        if intermediate is None and isinstance(hidden, int):  # fla's GatedMLP: 2/3 * hidden_ratio * hidden, to 256
            intermediate = 256 * math.ceil(int(hidden * (source.get("hidden_ratio") or 4) * 2 / 3) / 256)
        num_layers = source.get("num_hidden_layers")
        if not isinstance(num_layers, int) or isinstance(num_layers, bool) or num_layers <= 0:
            raise refuse(where, "num_hidden_layers", num_layers, "a positive integer")
        attention_layers, attention = self.attention(source, where)
        mixers = [attention_layers.get(i, self.mixer) for i in range(num_layers)]
        return build_config(
            where, vocab_size=source.get("vocab_size"), hidden_size=hidden, num_hidden_layers=num_layers,
            intermediate_size=intermediate, hidden_act="silu", rms_norm_eps=source.get("norm_eps", 1e-6),
            max_position_embeddings=source.get("max_position_embeddings", 2048),
            tie_word_embeddings=source.get("tie_word_embeddings", False), mixer_types=mixers,
            pad_token_id=source.get("pad_token_id"), bos_token_id=source.get("bos_token_id"),
            eos_token_id=source.get("eos_token_id"), **attention, **self.mixer_fields(source, where),
        )

    def attention(self, source: dict, where: str) -> tuple[dict[int, str], dict]:
        """``({layer: "full_attention" | "sliding_attention"}, memlm attention fields)`` from the ``attn`` spec(s);
        several specs must agree on everything but the layers (memlm's attention layers share one shape)."""
        specs = source.get("attn")
        if specs is None:
            return {}, {}
        specs = [specs] if isinstance(specs, dict) else specs
        if not isinstance(specs, list) or not specs or not all(isinstance(s, dict) for s in specs):
            raise refuse(where, "attn", source.get("attn"), "null, a dict or a list of dicts")
        shapes, windows, layers = set(), set(), {}
        for spec in specs:
            unknown = sorted(set(spec) - ATTENTION_KEYS)
            if unknown:
                raise ConversionError(f"{where}: attn keys {unknown} are unknown; memlm reads {sorted(ATTENTION_KEYS)}")
            if spec.get("qk_norm"):
                raise refuse(where, "attn.qk_norm", spec["qk_norm"], "false (fla 0.6 builds no q/k norm)")
            heads = spec.get("num_heads")
            shapes.add((heads, spec.get("num_kv_heads") or heads, bool(spec.get("qkv_bias", False)),
                        spec.get("rope_theta", 10000.0)))
            window = spec.get("window_size")
            windows.add(window)
            for layer in spec.get("layers", []):
                if not isinstance(layer, int) or not 0 <= layer < source["num_hidden_layers"] or layer in layers:
                    raise refuse(where, "attn.layers", spec.get("layers"), "distinct layer indices in [0, "
                                 f"num_hidden_layers={source['num_hidden_layers']})")
                layers[layer] = "full_attention" if window is None else "sliding_attention"
        if len(shapes) > 1:
            raise refuse(where, "attn", specs, "specs that differ only in layers (and window_size: null or one value)")
        if len(windows - {None}) > 1:
            raise refuse(where, "attn.window_size", sorted(windows - {None}), "one window for all sliding layers")
        heads, kv_heads, bias, theta = shapes.pop()
        hidden = source.get("hidden_size")
        if not isinstance(heads, int) or heads <= 0 or not isinstance(hidden, int) or hidden % heads:
            raise refuse(where, "attn.num_heads", heads, f"a positive divisor of hidden_size={hidden}")
        window = next(iter(windows - {None}), None)
        return layers, {
            "num_attention_heads": heads, "num_key_value_heads": kv_heads, "head_dim": hidden // heads,
            "attention_bias": bias, "sliding_window": window,
            "rope_parameters": {"rope_type": "default", "rope_theta": theta},
        }

    def mixer_fields(self, source: dict, where: str) -> dict:
        raise NotImplementedError

    def weights(self, checkpoint: Checkpoint, config: MemLMConfig, tensors: dict) -> dict[str, torch.Tensor]:
        state = embeddings_and_head(tensors, config, "model.embeddings.weight")
        for i, mixer in enumerate(config.mixer_types):
            src, dst = f"model.layers.{i}.", f"model.layers.{i}."
            state[dst + "input_layernorm.weight"] = take(tensors, src + "attn_norm.weight")
            state[dst + "post_attention_layernorm.weight"] = take(tensors, src + "mlp_norm.weight")
            for proj in ("gate_proj", "up_proj", "down_proj"):
                state[f"{dst}mlp.{proj}.weight"] = take(tensors, f"{src}mlp.{proj}.weight")
            if mixer == self.mixer:
                state.update(self.mixer_weights(tensors, config, i))
            else:
                state.update(attention_weights(tensors, config, src + "attn.", dst + "mixer."))
        return state

    def mixer_weights(self, tensors: dict, config: MemLMConfig, layer: int) -> dict[str, torch.Tensor]:
        raise NotImplementedError


def attention_weights(tensors: dict, config: MemLMConfig, src: str, dst: str) -> dict[str, torch.Tensor]:
    """fla's attention: ``{q,k,v,o}_proj`` (q/k/v biases with ``qkv_bias``; memlm's ``attention_bias`` also gives
    ``o_proj`` one, which fla has not: zero)."""
    state = {f"{dst}{p}_proj.weight": take(tensors, f"{src}{p}_proj.weight") for p in "qkvo"}
    if config.attention_bias:
        state.update({f"{dst}{p}_proj.bias": take(tensors, f"{src}{p}_proj.bias") for p in "qkv"})
        state[dst + "o_proj.bias"] = torch.zeros(config.hidden_size, dtype=state[dst + "o_proj.weight"].dtype)
    return state


@register_importer("gated_deltanet")
class FlaGatedDeltaNetImporter(FlaImporter):
    """fla's ``GatedDeltaNetForCausalLM`` (``fla/layers/gated_deltanet.py``): ``num_heads`` q/k heads of
    ``head_dim``, ``num_v_heads`` (default ``num_heads``) value heads of ``head_dim * expand_v``, beta
    ``sigmoid(b)`` (``2 sigmoid(b)`` with ``allow_neg_eigval``), gated output norm with ``norm_eps``."""

    mixer = "gated_deltanet"
    mixer_keys = frozenset({
        "expand_v", "use_gate", "use_short_conv", "allow_neg_eigval", "conv_size", "head_dim", "num_heads",
        "num_v_heads", "output_gate_activation",
    })

    def mixer_fields(self, source: dict, where: str) -> dict:
        for field, default in (("use_gate", True), ("use_short_conv", True)):
            if source.get(field, default) is not True:
                raise refuse(where, field, source[field], "true (memlm's GatedDeltaNet has both)")
        activation = source.get("output_gate_activation", "swish")
        if activation not in ("swish", "silu"):
            raise refuse(where, "output_gate_activation", activation, "'swish' or 'silu'")
        head_dim, heads = source.get("head_dim", 256), source.get("num_heads", 6)
        value_dim = head_dim * source.get("expand_v", 2.0) if isinstance(head_dim, int) else None
        if value_dim is None or value_dim != int(value_dim):
            raise refuse(where, "expand_v", source.get("expand_v"), f"a ratio making head_dim={head_dim} * expand_v "
                         "an integer")
        fields = {
            "linear_num_key_heads": heads, "linear_num_value_heads": source.get("num_v_heads") or heads,
            "linear_key_head_dim": head_dim, "linear_value_head_dim": int(value_dim),
            "linear_conv_kernel_dim": source.get("conv_size", 4),
            "linear_allow_neg_eigval": source.get("allow_neg_eigval", False),
            "linear_norm_eps": source.get("norm_eps", 1e-6),
        }
        if source.get("attn") is None:  # no attention layer: the attention fields only need to be valid
            fields.update(num_attention_heads=heads, head_dim=head_dim)
        return fields

    def mixer_weights(self, tensors: dict, config: MemLMConfig, layer: int) -> dict[str, torch.Tensor]:
        return gated_deltanet_weights(tensors, f"model.layers.{layer}.attn.", f"model.layers.{layer}.mixer.")


@register_importer("hgrn2")
class FlaHGRN2Importer(FlaImporter):
    """fla's ``HGRN2ForCausalLM`` (``fla/layers/hgrn2.py``): ``hidden_size // expand_ratio`` heads (``expand_ratio``
    wins over ``num_heads`` when both are set, as in fla's layer), forget/query/key width ``expand_ratio`` per
    head, input width ``hidden_size // num_heads``; RMSNorm (``norm_eps``) over the whole output, then ``o_proj``."""

    mixer = "hgrn2"
    mixer_keys = frozenset({
        "num_heads", "expand_ratio", "use_short_conv", "conv_size", "use_lower_bound", "elementwise_affine",
    })

    def mixer_fields(self, source: dict, where: str) -> dict:
        if source.get("use_short_conv", False):
            raise refuse(where, "use_short_conv", source["use_short_conv"], "false (memlm's HGRN-2 has no conv)")
        if source.get("use_lower_bound", True) is not True:
            raise refuse(where, "use_lower_bound", source["use_lower_bound"], "true (memlm's HGRN-2 always has the "
                         "depth-increasing lower bounds)")
        hidden, ratio, heads = source.get("hidden_size"), source.get("expand_ratio", 128), source.get("num_heads")
        if ratio is None and isinstance(heads, int) and heads > 0 and isinstance(hidden, int):
            ratio = hidden // heads
        if not (isinstance(ratio, int) and ratio > 0 and isinstance(hidden, int) and hidden % ratio == 0):
            raise refuse(where, "expand_ratio", ratio, f"a positive divisor of hidden_size={hidden}")
        heads = hidden // ratio
        attention_layers = self.attention(source, where)[0]
        if 0 in attention_layers:
            raise refuse(where, "attn.layers", sorted(attention_layers), "lists without layer 0: fla gives the first "
                         "HGRN-2 layer after an attention layer 0 a lower bound > 0, which memlm's first HGRN-2 "
                         "layer has not")
        fields = {
            "linear_num_key_heads": heads, "linear_num_value_heads": heads, "linear_key_head_dim": ratio,
            "linear_value_head_dim": hidden // heads,
        }
        if source.get("attn") is None:
            fields.update(num_attention_heads=heads, head_dim=hidden // heads)
        return fields

    def weights(self, checkpoint: Checkpoint, config: MemLMConfig, tensors: dict) -> dict[str, torch.Tensor]:
        state = super().weights(checkpoint, config, tensors)
        state["model.forget_lower_bounds.lower_bounds"] = hgrn2_lower_bounds(
            take(tensors, "model.lower_bounds"), config.layers_of_mixer("hgrn2")
        )
        return state

    def mixer_weights(self, tensors: dict, config: MemLMConfig, layer: int) -> dict[str, torch.Tensor]:
        src, dst = f"model.layers.{layer}.attn.", f"model.layers.{layer}.mixer."
        state = {f"{dst}{p}.weight": take(tensors, f"{src}{p}.weight") for p in ("q_proj", "f_proj", "i_proj",
                                                                                  "o_proj")}
        # fla's elementwise_affine=false leaves g_norm without a weight: memlm's weight of ones is the same norm
        norm = src + "g_norm.weight"
        state[dst + "g_norm.weight"] = take(tensors, norm) if norm in tensors else torch.ones(config.hidden_size)
        return state


def expanded_dim(source: dict, where: str, field: str, default: float, heads) -> int:
    """fla's ``round(hidden_size * expand)`` (``expand_k`` / ``expand_v``), refused unless it is an integer that
    ``heads`` divides (fla asserts both)."""
    hidden, ratio = source.get("hidden_size"), source.get(field, default)
    dim = hidden * ratio if isinstance(hidden, int) and isinstance(ratio, int | float) else None
    if dim is None or dim != int(dim) or not isinstance(heads, int) or heads <= 0 or int(dim) % heads:
        raise refuse(where, field, ratio, f"a ratio making hidden_size={hidden} * {field} an integer divisible by "
                     f"num_heads={heads}")
    return int(dim)


def heads_fields(source: dict, where: str, heads: int, expand_k: float, expand_v: float) -> dict:
    """The ``linear_*`` head fields of fla's GLA / DeltaNet (``num_heads`` heads of ``hidden * expand / heads``)."""
    key_dim = expanded_dim(source, where, "expand_k", expand_k, heads)
    value_dim = expanded_dim(source, where, "expand_v", expand_v, heads)
    fields = {
        "linear_num_key_heads": heads, "linear_num_value_heads": heads, "linear_key_head_dim": key_dim // heads,
        "linear_value_head_dim": value_dim // heads, "linear_norm_eps": source.get("norm_eps", 1e-6),
    }
    if source.get("attn") is None:  # no attention layer: the attention fields only need to be valid
        fields.update(num_attention_heads=heads, head_dim=source["hidden_size"] // heads)
    return fields


def refuse_unless(source: dict, where: str, expected: dict[str, object], why: str) -> None:
    """Refuse each field of ``expected`` (field -> fla's default) whose value differs: memlm builds only ``why``."""
    for field, default in expected.items():
        if source.get(field, default) != default:
            raise refuse(where, field, source[field], f"{default!r} ({why})")


@register_importer("gla")
class FlaGLAImporter(FlaImporter):
    """fla's ``GLAForCausalLM`` (``fla/layers/gla.py``): ``num_heads`` heads of key width ``hidden * expand_k /
    num_heads`` and value width ``hidden * expand_v / num_heads``, decay ``logsigmoid(gk_proj(x)) / 16`` through a
    rank-16 ``gk_proj`` (both constants of fla's model), swish output gate on the per-head RMSNorm (``norm_eps``;
    ``g_norm_swish_gate`` when ``fuse_norm``, else ``g_norm``: the same function). Refused: grouped k/v heads
    (``num_kv_heads``), a feature map, short convs, no output gate, ``clamp_min``, and the pre-0.6 gate switches
    ``use_gk=false`` / ``use_gv=true`` (fla 0.6 reads neither; older fla's ``share_conv_kernel`` is accepted, inert
    without short convs)."""

    mixer = "gla"
    mixer_keys = frozenset({
        "expand_k", "expand_v", "num_heads", "num_kv_heads", "feature_map", "use_short_conv", "conv_size",
        "use_output_gate", "clamp_min", "elementwise_affine", "use_gk", "use_gv",
        "share_conv_kernel",  # older fla's conv layout switch: inert without short convs, which GLA must not have
    })

    def mixer_fields(self, source: dict, where: str) -> dict:
        heads = source.get("num_heads", 4)
        refuse_unless(source, where, {"feature_map": None, "use_short_conv": False, "use_output_gate": True,
                                      "clamp_min": None, "use_gk": True, "use_gv": False}, "memlm's GLA")
        if source.get("num_kv_heads") not in (None, heads):
            raise refuse(where, "num_kv_heads", source["num_kv_heads"], f"null or num_heads={heads}")
        return {**heads_fields(source, where, heads, 0.5, 1.0), "gla_gate_low_rank_dim": 16,
                "gla_gate_logit_normalizer": 16.0}

    def mixer_weights(self, tensors: dict, config: MemLMConfig, layer: int) -> dict[str, torch.Tensor]:
        src, dst = f"model.layers.{layer}.attn.", f"model.layers.{layer}.mixer."
        names = ("q_proj.weight", "k_proj.weight", "v_proj.weight", "g_proj.weight", "o_proj.weight",
                 "gk_proj.0.weight", "gk_proj.1.weight", "gk_proj.1.bias")
        state = {dst + name: take(tensors, src + name) for name in names}
        # fla's elementwise_affine=false leaves the norm without a weight: memlm's weight of ones is the same norm
        norm = next((src + n for n in ("g_norm_swish_gate.weight", "g_norm.weight") if src + n in tensors), None)
        state[dst + "g_norm_swish_gate.weight"] = (
            take(tensors, norm) if norm else torch.ones(config.linear_value_head_dim)
        )
        return state


@register_importer("delta_net")
class FlaDeltaNetImporter(FlaImporter):
    """fla's ``DeltaNetForCausalLM`` (``fla/layers/delta_net.py``): ``num_heads`` heads of key width ``hidden *
    expand_k / num_heads`` and value width ``hidden * expand_v / num_heads``, SiLU short convs on q, k, v, L2-normed
    q/k, beta ``sigmoid(b_proj(x))`` (``2 sigmoid`` with ``allow_neg_eigval``), per-head output RMSNorm (``norm_eps``),
    gated by ``SiLU(g_proj(x))`` with ``use_gate``. ``use_output_norm`` is read by no layer of fla 0.6 (``o_norm`` is
    always there) and is ignored. Refused: no short conv, no beta, ``qk_activation`` other than ``silu``,
    ``qk_norm`` other than ``l2``, older fla's ``share_conv_kernel=true`` (one conv over the hidden states)."""

    mixer = "deltanet"
    mixer_keys = frozenset({
        "expand_k", "expand_v", "use_gate", "use_short_conv", "allow_neg_eigval", "conv_size", "use_beta",
        "use_output_norm", "num_heads", "qk_norm", "qk_activation", "share_conv_kernel",
    })

    def mixer_fields(self, source: dict, where: str) -> dict:
        # older fla's share_conv_kernel=true is one conv over the hidden states (h_conv1d), not fla 0.6's three
        refuse_unless(source, where, {"use_short_conv": True, "use_beta": True, "qk_activation": "silu",
                                      "qk_norm": "l2", "share_conv_kernel": False}, "memlm's DeltaNet")
        for field in ("use_gate", "allow_neg_eigval"):
            if not isinstance(source.get(field, False), bool):
                raise refuse(where, field, source[field], "true or false")
        return {
            **heads_fields(source, where, source.get("num_heads", 16), 1.0, 1.0),
            "linear_conv_kernel_dim": source.get("conv_size", 4),
            "linear_allow_neg_eigval": source.get("allow_neg_eigval", False),
            "deltanet_use_gate": source.get("use_gate", False),
        }

    def mixer_weights(self, tensors: dict, config: MemLMConfig, layer: int) -> dict[str, torch.Tensor]:
        src, dst = f"model.layers.{layer}.attn.", f"model.layers.{layer}.mixer."
        names = ["q_proj", "k_proj", "v_proj", "b_proj", "o_proj", "o_norm"] + (
            ["g_proj"] if config.deltanet_use_gate else [])
        state = {f"{dst}{n}.weight": take(tensors, f"{src}{n}.weight") for n in names}
        state[dst + "conv.conv1d.weight"] = torch.cat([take(tensors, f"{src}{p}_conv1d.weight") for p in "qkv"])
        return state
