"""fla-format import (flash-linear-attention's ``gated_deltanet``, ``hgrn2``, ``gla`` and ``delta_net`` model types,
pure and hybrid).

fla cannot run here (its forward needs Triton on a GPU; its hybrid attention needs flash-attn), so the checkpoints
are written in fla's format from fla-core 0.6's source: ``config.json`` with fla's fields and ``model_type``, one
safetensors file with fla's tensor names and shapes (``fla/models/*/modeling_*.py``, ``fla/layers/*.py``). The
reference is a pure-torch forward of fla's model written here from that source: pre-norm blocks, fla's attention
(non-interleaved RoPE, GQA, flash-attn's causal window), SwiGLU ``GatedMLP``, RMSNorms; its GatedDeltaNet layers are
transformers' OLMo Hybrid GatedDeltaNet (fla's layer, same names and math) given the same weights, its HGRN-2
layers a step-by-step recurrence written from ``fla/layers/hgrn2.py``, its GLA and DeltaNet layers step-by-step
recurrences written from ``fla/layers/gla.py`` and ``fla/layers/delta_net.py``. memlm's own layers are not used in it.
"""

import json
import math

import pytest
import torch
import transformers
from safetensors.torch import save_file
from torch.nn import functional as F

from memlm.convert import ConversionError, convert, from_pretrained

TRANSFORMERS_VERSION = tuple(int(x) for x in transformers.__version__.split(".")[:2])
VOCAB, HIDDEN = 101, 64
# what fla's config classes write besides the model's own fields
FLA_COMMON = {
    "architectures": None, "attn_mode": "chunk", "fuse_norm": True, "fuse_swiglu": True, "fuse_cross_entropy": True,
    "fuse_linear_cross_entropy": False, "use_l2warp": False, "initializer_range": 0.02, "use_cache": True,
    "vocab_size": VOCAB, "hidden_size": HIDDEN, "max_position_embeddings": 2048, "hidden_act": "swish",
    "pad_token_id": None, "bos_token_id": 1, "eos_token_id": 2, "tie_word_embeddings": False,
    "attnres_block_size": None, "transformers_version": "4.57.1",
}


def gdn_config(num_layers=3, attn=None, **fields) -> dict:
    return {**FLA_COMMON, "model_type": "gated_deltanet", "architectures": ["GatedDeltaNetForCausalLM"],
            "num_hidden_layers": num_layers, "attn": attn, "expand_v": 2.0, "use_gate": True, "use_short_conv": True,
            "allow_neg_eigval": True, "conv_size": 4, "head_dim": 16, "num_heads": 2, "num_v_heads": None,
            "hidden_ratio": 2, "intermediate_size": None, "norm_eps": 1e-5, "output_gate_activation": "swish",
            **fields}


def hgrn2_config(num_layers=3, attn=None, **fields) -> dict:
    return {**FLA_COMMON, "model_type": "hgrn2", "architectures": ["HGRN2ForCausalLM"],
            "num_hidden_layers": num_layers, "attn": attn, "num_heads": None, "expand_ratio": 16,
            "use_short_conv": False, "conv_size": 4, "use_lower_bound": True, "hidden_ratio": 4,
            "intermediate_size": 96, "elementwise_affine": True, "norm_eps": 1e-6, **fields}


def gla_config(num_layers=3, attn=None, **fields) -> dict:
    return {**FLA_COMMON, "model_type": "gla", "architectures": ["GLAForCausalLM"], "num_hidden_layers": num_layers,
            "attn": attn, "expand_k": 0.5, "expand_v": 1.0, "hidden_ratio": 4, "intermediate_size": None,
            "num_heads": 4, "num_kv_heads": None, "feature_map": None, "use_short_conv": False, "conv_size": 4,
            "use_output_gate": True, "clamp_min": None, "elementwise_affine": True, "norm_eps": 1e-6,
            "use_gk": True, "use_gv": False, **fields}


def deltanet_config(num_layers=3, attn=None, **fields) -> dict:
    return {**FLA_COMMON, "model_type": "delta_net", "architectures": ["DeltaNetForCausalLM"],
            "num_hidden_layers": num_layers, "attn": attn, "expand_k": 1.0, "expand_v": 1.0, "use_gate": False,
            "use_short_conv": True, "allow_neg_eigval": False, "conv_size": 4, "use_beta": True,
            "use_output_norm": True, "num_heads": 4, "qk_norm": "l2", "qk_activation": "silu", "hidden_ratio": 4,
            "intermediate_size": None, "norm_eps": 1e-6, **fields}


def attention_layers(config: dict) -> dict[int, dict]:
    specs = config["attn"] or []
    return {layer: spec for spec in ([specs] if isinstance(specs, dict) else specs) for layer in spec["layers"]}


def intermediate_size(config: dict) -> int:
    if config["intermediate_size"] is not None:
        return config["intermediate_size"]
    return 256 * math.ceil(int(HIDDEN * config["hidden_ratio"] * 2 / 3) / 256)


def fla_tensors(config: dict) -> dict[str, torch.Tensor]:
    """Random tensors under fla's names and shapes; norms around 1, GatedDeltaNet gates as fla initializes them."""
    def linear(out_features, in_features):
        return torch.randn(out_features, in_features) / math.sqrt(in_features)

    def norm(dim):
        return 1 + 0.3 * torch.randn(dim)

    tensors = {"model.embeddings.weight": torch.randn(VOCAB, HIDDEN), "model.norm.weight": norm(HIDDEN),
               "lm_head.weight": linear(VOCAB, HIDDEN)}
    inner = intermediate_size(config)
    attention = attention_layers(config)
    for i in range(config["num_hidden_layers"]):
        p = f"model.layers.{i}."
        tensors.update({p + "attn_norm.weight": norm(HIDDEN), p + "mlp_norm.weight": norm(HIDDEN),
                        p + "mlp.gate_proj.weight": linear(inner, HIDDEN),
                        p + "mlp.up_proj.weight": linear(inner, HIDDEN),
                        p + "mlp.down_proj.weight": linear(HIDDEN, inner)})
        p += "attn."
        if i in attention:
            spec = attention[i]
            head_dim = HIDDEN // spec["num_heads"]
            kv = spec.get("num_kv_heads") or spec["num_heads"]
            for name, rows in (("q", HIDDEN), ("k", kv * head_dim), ("v", kv * head_dim), ("o", HIDDEN)):
                tensors[f"{p}{name}_proj.weight"] = linear(rows, HIDDEN)
                if spec.get("qkv_bias") and name != "o":
                    tensors[f"{p}{name}_proj.bias"] = 0.1 * torch.randn(rows)
        elif config["model_type"] == "gated_deltanet":
            heads, v_heads = config["num_heads"], config["num_v_heads"] or config["num_heads"]
            key_dim, head_v = heads * config["head_dim"], int(config["head_dim"] * config["expand_v"])
            value_dim = v_heads * head_v
            tensors.update({
                p + "q_proj.weight": linear(key_dim, HIDDEN), p + "k_proj.weight": linear(key_dim, HIDDEN),
                p + "v_proj.weight": linear(value_dim, HIDDEN), p + "g_proj.weight": linear(value_dim, HIDDEN),
                p + "a_proj.weight": linear(v_heads, HIDDEN), p + "b_proj.weight": linear(v_heads, HIDDEN),
                p + "o_proj.weight": linear(HIDDEN, value_dim), p + "o_norm.weight": norm(head_v),
                p + "A_log": torch.empty(v_heads).uniform_(1, 16).log(),
                p + "dt_bias": torch.empty(v_heads).uniform_(-4, 0),
                p + "q_conv1d.weight": 0.5 * torch.randn(key_dim, 1, config["conv_size"]),
                p + "k_conv1d.weight": 0.5 * torch.randn(key_dim, 1, config["conv_size"]),
                p + "v_conv1d.weight": 0.5 * torch.randn(value_dim, 1, config["conv_size"]),
            })
        elif config["model_type"] == "gla":
            key_dim, value_dim = int(HIDDEN * config["expand_k"]), int(HIDDEN * config["expand_v"])
            tensors.update({
                p + "q_proj.weight": linear(key_dim, HIDDEN), p + "k_proj.weight": linear(key_dim, HIDDEN),
                p + "v_proj.weight": linear(value_dim, HIDDEN), p + "g_proj.weight": linear(value_dim, HIDDEN),
                p + "gk_proj.0.weight": linear(16, HIDDEN), p + "gk_proj.1.weight": linear(key_dim, 16),
                p + "gk_proj.1.bias": 2 + torch.randn(key_dim),  # fla's decays are mostly near 1
                p + "o_proj.weight": linear(HIDDEN, value_dim),
            })
            if config["elementwise_affine"]:
                norm_name = "g_norm_swish_gate" if config["fuse_norm"] else "g_norm"
                tensors[f"{p}{norm_name}.weight"] = norm(value_dim // config["num_heads"])
        elif config["model_type"] == "delta_net":
            key_dim, value_dim = int(HIDDEN * config["expand_k"]), int(HIDDEN * config["expand_v"])
            tensors.update({
                p + "q_proj.weight": linear(key_dim, HIDDEN), p + "k_proj.weight": linear(key_dim, HIDDEN),
                p + "v_proj.weight": linear(value_dim, HIDDEN),
                p + "b_proj.weight": linear(config["num_heads"], HIDDEN),
                p + "o_proj.weight": linear(HIDDEN, value_dim),
                p + "o_norm.weight": norm(value_dim // config["num_heads"]),
                p + "q_conv1d.weight": 0.5 * torch.randn(key_dim, 1, config["conv_size"]),
                p + "k_conv1d.weight": 0.5 * torch.randn(key_dim, 1, config["conv_size"]),
                p + "v_conv1d.weight": 0.5 * torch.randn(value_dim, 1, config["conv_size"]),
            })
            if config["use_gate"]:
                tensors[p + "g_proj.weight"] = linear(value_dim, HIDDEN)
        else:
            forget_dim = HIDDEN // config["expand_ratio"] * config["expand_ratio"]
            tensors.update({p + "q_proj.weight": linear(forget_dim, HIDDEN),
                            p + "f_proj.weight": linear(forget_dim, HIDDEN),
                            p + "i_proj.weight": linear(HIDDEN, HIDDEN), p + "o_proj.weight": linear(HIDDEN, HIDDEN)})
            if config["elementwise_affine"]:
                tensors[p + "g_norm.weight"] = norm(HIDDEN)
    if config["model_type"] == "hgrn2":
        tensors["model.lower_bounds"] = torch.randn(config["num_hidden_layers"], HIDDEN)
    return tensors


def write_fla(directory, config: dict) -> dict[str, torch.Tensor]:
    directory.mkdir()
    (directory / "config.json").write_text(json.dumps(config, indent=2))
    tensors = fla_tensors(config)
    save_file(tensors, directory / "model.safetensors", metadata={"format": "pt"})
    return tensors


# ---- the reference: fla's model in plain torch ----

def rms_norm(x, weight, eps):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight


def fla_attention(x, w, p, spec):
    """fla/layers/attn.py on one sequence ``x [T, D]``: positions 0..T-1, NeoX-style RoPE (halves), causal, with a
    window each token sees itself and the ``window_size - 1`` tokens before it."""
    T, heads = x.shape[0], spec["num_heads"]
    kv_heads, head_dim = spec.get("num_kv_heads") or heads, HIDDEN // heads

    def project(name, n):
        y = x @ w[f"{p}{name}_proj.weight"].T
        if spec.get("qkv_bias"):
            y = y + w[f"{p}{name}_proj.bias"]
        return y.view(T, n, head_dim).transpose(0, 1)

    q, k, v = project("q", heads), project("k", kv_heads), project("v", kv_heads)
    inv_freq = 1.0 / spec.get("rope_theta", 10000.0) ** (torch.arange(0, head_dim, 2).float() / head_dim)
    angles = torch.arange(T).float()[:, None] * inv_freq
    cos, sin = angles.cos(), angles.sin()

    def rotate(t):
        a, b = t[..., : head_dim // 2], t[..., head_dim // 2:]
        return torch.cat([a * cos - b * sin, b * cos + a * sin], dim=-1)

    q, k = rotate(q), rotate(k)
    k, v = k.repeat_interleave(heads // kv_heads, 0), v.repeat_interleave(heads // kv_heads, 0)
    i, j = torch.arange(T)[:, None], torch.arange(T)[None]
    visible = j <= i
    if spec.get("window_size"):
        visible &= j > i - spec["window_size"]
    scores = (q @ k.transpose(1, 2)) * head_dim**-0.5
    out = scores.masked_fill(~visible, float("-inf")).softmax(-1) @ v
    return out.transpose(0, 1).reshape(T, HIDDEN) @ w[p + "o_proj.weight"].T


def olmo_gated_deltanet(config: dict, w: dict, p: str) -> torch.nn.Module:
    """transformers' OLMo Hybrid GatedDeltaNet (fla's layer) with the fla layer's weights; its output norm's eps is
    1e-5, the tests' ``norm_eps``. fla's grouped value heads (``num_v_heads = G * num_heads``: value head ``j`` reads
    q/k head ``j // G``, fla's kernels) become ``num_v_heads`` q/k heads, each q/k head's projection and conv rows
    repeated ``G`` times."""
    assert config["norm_eps"] == 1e-5
    v_heads = config["num_v_heads"] or config["num_heads"]
    group = v_heads // config["num_heads"]

    def repeat_heads(weight):
        return weight.reshape(config["num_heads"], -1, *weight.shape[1:]).repeat_interleave(group, 0).flatten(0, 1)

    olmo = transformers.OlmoHybridConfig(
        vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
        linear_num_key_heads=v_heads, linear_num_value_heads=v_heads,
        linear_key_head_dim=config["head_dim"], linear_value_head_dim=int(config["head_dim"] * config["expand_v"]),
        linear_conv_kernel_dim=config["conv_size"], linear_allow_neg_eigval=config["allow_neg_eigval"],
        layer_types=["linear_attention", "full_attention"], pad_token_id=0,
    )
    layer = transformers.OlmoHybridModel(olmo).layers[0].linear_attn
    names = ["q_proj", "k_proj", "v_proj", "a_proj", "b_proj", "g_proj", "o_proj", "o_norm"]
    state = {f"{n}.weight": w[f"{p}{n}.weight"] for n in names}
    state.update(A_log=w[p + "A_log"], dt_bias=w[p + "dt_bias"])
    state.update({f"{n}_proj.weight": repeat_heads(w[f"{p}{n}_proj.weight"]) for n in "qk"})
    conv = [repeat_heads(w[p + "q_conv1d.weight"]), repeat_heads(w[p + "k_conv1d.weight"]), w[p + "v_conv1d.weight"]]
    state["conv1d.weight"] = torch.cat(conv)
    layer.load_state_dict(state)
    return layer.eval()


def fla_hgrn2(x, w, p, config, layer, lower_bound):
    """fla/layers/hgrn2.py on one sequence, as a recurrence: ``S_t = Diag(exp g_t) S_{t-1} + k_t i_t^T``,
    ``o_t = S_t^T (q_t / sqrt(dk))`` (chunk_gla's default scale), g_norm, o_proj."""
    ratio = config["expand_ratio"]
    heads = HIDDEN // ratio
    q = F.silu(x @ w[p + "q_proj.weight"].T)
    g = F.logsigmoid(x @ w[p + "f_proj.weight"].T)
    if layer > 0:
        g = torch.logaddexp(lower_bound.log(), torch.log1p(-lower_bound) + g)
    k = 1 - g.exp()
    i = x @ w[p + "i_proj.weight"].T
    q, k, g = (t.view(-1, heads, ratio) for t in (q, k, g))
    i = i.view(-1, heads, HIDDEN // heads)
    state, out = torch.zeros(heads, ratio, HIDDEN // heads), []
    for t in range(x.shape[0]):
        state = g[t].exp()[..., None] * state + k[t][..., None] * i[t][:, None]
        out.append(torch.einsum("hk,hkv->hv", q[t] * ratio**-0.5, state).reshape(HIDDEN))
    weight = w.get(p + "g_norm.weight", torch.ones(HIDDEN))
    return rms_norm(torch.stack(out), weight, config["norm_eps"]) @ w[p + "o_proj.weight"].T


def per_head_output(o, w, name, config, gate=None):
    """fla's per-head output norm ``o [T, H, dv]`` (weight ``name``, ones when absent), times ``swish(gate)``."""
    weight = w.get(name, torch.ones(o.shape[-1]))
    out = rms_norm(o, weight, config["norm_eps"]).flatten(1)
    return out if gate is None else out * F.silu(gate)


def fla_gla(x, w, p, config):
    """fla/layers/gla.py on one sequence, as a recurrence: ``gk = logsigmoid(gk_proj(x)) / 16``,
    ``S_t = Diag(exp gk_t) S_{t-1} + k_t v_t^T``, ``o_t = S_t^T (q_t / sqrt(dk))``, norm * swish(g_proj(x))."""
    heads = config["num_heads"]
    q, k, v = (x @ w[f"{p}{n}_proj.weight"].T for n in "qkv")
    gk = F.logsigmoid((x @ w[p + "gk_proj.0.weight"].T) @ w[p + "gk_proj.1.weight"].T + w[p + "gk_proj.1.bias"]) / 16
    q, k, v, gk = (t.view(x.shape[0], heads, -1) for t in (q, k, v, gk))
    state, out = torch.zeros(heads, q.shape[-1], v.shape[-1]), []
    for t in range(x.shape[0]):
        state = gk[t].exp()[..., None] * state + k[t][..., None] * v[t][:, None]
        out.append(torch.einsum("hk,hkv->hv", q[t] * q.shape[-1] ** -0.5, state))
    norm_name = p + ("g_norm_swish_gate.weight" if config["fuse_norm"] else "g_norm.weight")
    gate = x @ w[p + "g_proj.weight"].T
    return per_head_output(torch.stack(out), w, norm_name, config, gate) @ w[p + "o_proj.weight"].T


def fla_delta_net(x, w, p, config):
    """fla/layers/delta_net.py on one sequence, as a recurrence: SiLU short convs, L2-normed q/k (eps 1e-6),
    ``beta = sigmoid(b_proj(x))``, ``S_t = S_{t-1} + beta_t k_t (v_t - S_{t-1}^T k_t)^T``,
    ``o_t = S_t^T (q_t / sqrt(dk))``, o_norm (times swish(g_proj(x)) with use_gate)."""
    heads, T = config["num_heads"], x.shape[0]

    def conv(name):  # nn.Conv1d's causal depthwise form, as fla's ShortConvolution without a cache
        y = x @ w[f"{p}{name}_proj.weight"].T
        weight = w[f"{p}{name}_conv1d.weight"]
        return F.silu(F.conv1d(y.T[None], weight, padding=weight.shape[-1] - 1, groups=y.shape[1])[0, :, :T].T)

    def l2norm(t):
        return t * torch.rsqrt(t.pow(2).sum(-1, keepdim=True) + 1e-6)

    q, k, v = (conv(n).view(T, heads, -1) for n in "qkv")
    q, k = l2norm(q), l2norm(k)
    beta = (x @ w[p + "b_proj.weight"].T).sigmoid() * (2.0 if config["allow_neg_eigval"] else 1.0)
    state, out = torch.zeros(heads, q.shape[-1], v.shape[-1]), []
    for t in range(T):
        error = v[t] - torch.einsum("hkv,hk->hv", state, k[t])
        state = state + beta[t][:, None, None] * k[t][..., None] * error[:, None]
        out.append(torch.einsum("hk,hkv->hv", q[t] * q.shape[-1] ** -0.5, state))
    gate = x @ w[p + "g_proj.weight"].T if config["use_gate"] else None
    return per_head_output(torch.stack(out), w, p + "o_norm.weight", config, gate) @ w[p + "o_proj.weight"].T


@torch.no_grad()
def fla_reference_logits(config: dict, w: dict, ids: torch.Tensor) -> torch.Tensor:
    """fla's model on one unpadded sequence ``ids [T]`` -> logits ``[T, V]``."""
    eps, attention = config["norm_eps"], attention_layers(config)
    if config["model_type"] == "hgrn2":
        probs = w["model.lower_bounds"].softmax(0)
        lower_bounds = probs.cumsum(0) - probs[0]
    x = w["model.embeddings.weight"][ids]
    for layer in range(config["num_hidden_layers"]):
        p = f"model.layers.{layer}."
        h = rms_norm(x, w[p + "attn_norm.weight"], eps)
        if layer in attention:
            h = fla_attention(h, w, p + "attn.", attention[layer])
        elif config["model_type"] == "gated_deltanet":
            h = olmo_gated_deltanet(config, w, p + "attn.")(h[None])[0]
        elif config["model_type"] == "gla":
            h = fla_gla(h, w, p + "attn.", config)
        elif config["model_type"] == "delta_net":
            h = fla_delta_net(h, w, p + "attn.", config)
        else:
            h = fla_hgrn2(h, w, p + "attn.", config, layer, lower_bounds[layer])
        x = x + h
        h = rms_norm(x, w[p + "mlp_norm.weight"], eps)
        x = x + (F.silu(h @ w[p + "mlp.gate_proj.weight"].T) * (h @ w[p + "mlp.up_proj.weight"].T)) @ w[
            p + "mlp.down_proj.weight"].T
    return rms_norm(x, w["model.norm.weight"], eps) @ w["lm_head.weight"].T


def relative_error(actual, expected) -> float:
    return float((actual - expected).abs().max() / expected.abs().max())


VARIANTS = {
    "gdn": gdn_config(),
    "gdn_hybrid": gdn_config(4, attn={"layers": [1, 3], "num_heads": 4, "num_kv_heads": 2, "qkv_bias": True,
                                      "window_size": None, "rope_theta": 10000.0}, intermediate_size=96,
                             allow_neg_eigval=False),
    "gdn_grouped_values": gdn_config(2, attn={"layers": [1], "num_heads": 2}, num_v_heads=4, expand_v=1.0),
    "gdn_hybrid_window": gdn_config(4, attn={"layers": [2], "num_heads": 2, "window_size": 5, "rope_theta": 500.0}),
    "hgrn2": hgrn2_config(),
    "hgrn2_hybrid": hgrn2_config(4, attn={"layers": [2], "num_heads": 4, "num_kv_heads": 4, "qkv_bias": False,
                                          "window_size": None, "rope_theta": 10000.0}, elementwise_affine=False),
    "gla": gla_config(),
    "gla_hybrid": gla_config(4, attn={"layers": [1], "num_heads": 4, "num_kv_heads": 2}, fuse_norm=False,
                             expand_k=1.0, num_heads=2),
    "gla_no_affine": gla_config(2, attn={"layers": [1], "num_heads": 4}, elementwise_affine=False,
                                share_conv_kernel=True),  # older fla's key, inert without short convs
    "delta_net": deltanet_config(),
    "delta_net_hybrid": deltanet_config(4, attn={"layers": [3], "num_heads": 4, "window_size": 6}, use_gate=True,
                                        allow_neg_eigval=True, expand_v=2.0, num_heads=2, norm_eps=1e-5),
}


@pytest.mark.parametrize("variant", VARIANTS)
def test_converted_model_matches_the_fla_reference(tmp_path, variant):
    config = VARIANTS[variant]
    weights = write_fla(tmp_path / "fla", config)
    model = from_pretrained(tmp_path / "fla")
    attention = attention_layers(config)
    assert [i for i, m in enumerate(model.config.mixer_types) if m.endswith("attention")] == sorted(attention)

    lengths = (13, 8)
    rows = [torch.randint(3, VOCAB, (n,)) for n in lengths]
    ids = torch.zeros(2, max(lengths), dtype=torch.long)
    mask = torch.zeros_like(ids)
    for r, row in enumerate(rows):  # left padding
        ids[r, -len(row):], mask[r, -len(row):] = row, 1
    with torch.no_grad():
        logits = model(ids, attention_mask=mask).logits
    for r, row in enumerate(rows):
        assert relative_error(logits[r, -len(row):], fla_reference_logits(config, weights, row)) < 1e-4

    layer_types = set(model.config.layer_types)
    if TRANSFORMERS_VERSION < (5, 24) and not {"full_attention", "sliding_attention"} & layer_types:
        pytest.skip("transformers < 5.24: generate asks a cache without attention layers for its length")
    if TRANSFORMERS_VERSION < (5, 23) and "sliding_attention" in layer_types:
        pytest.skip("transformers < 5.23: left-padded generation with sliding-window layers differs")
    generate = dict(attention_mask=mask, max_new_tokens=20, do_sample=False, pad_token_id=0, eos_token_id=None)
    cached = model.generate(ids, **generate)
    assert torch.equal(model.generate(ids, use_cache=False, **generate), cached)
    # the shorter row's greedy continuation, token by token with the reference
    sequence = rows[1]
    for _ in range(20):
        next_token = fla_reference_logits(config, weights, sequence)[-1].argmax()
        sequence = torch.cat([sequence, next_token[None]])
    assert torch.equal(cached[1, -28:], sequence)


def test_hgrn2_lower_bounds_reparametrized_for_hybrids(tmp_path):
    """memlm keeps one lower-bound row per HGRN-2 layer; fla one per layer of the model, attention included."""
    config = VARIANTS["hgrn2_hybrid"]
    weights = write_fla(tmp_path / "fla", config)
    bounds = from_pretrained(tmp_path / "fla").model.forget_lower_bounds()
    probs = weights["model.lower_bounds"].softmax(0)
    expected = (probs.cumsum(0) - probs[0])[[0, 1, 3]]
    torch.testing.assert_close(bounds, expected, rtol=1e-5, atol=1e-6)


def test_convert_writes_a_memlm_checkpoint(tmp_path):
    config = VARIANTS["gdn_hybrid_window"]
    write_fla(tmp_path / "fla", config)
    convert(tmp_path / "fla", tmp_path / "memlm")
    written = json.loads((tmp_path / "memlm" / "config.json").read_text())
    assert written["mixer_types"] == ["gated_deltanet", "gated_deltanet", "sliding_attention", "gated_deltanet"]
    assert written["sliding_window"] == 5 and written["linear_allow_neg_eigval"] is True


BAD = {
    "use_gate": (gdn_config(use_gate=False), "use_gate=False"),
    "short_conv": (gdn_config(use_short_conv=False), "use_short_conv=False"),
    "sigmoid_gate": (gdn_config(output_gate_activation="sigmoid"), "output_gate_activation='sigmoid'"),
    "attnres": (gdn_config(attnres_block_size=2), "attnres_block_size=2"),
    "powlu": (gdn_config(hidden_act="powlu"), "hidden_act='powlu'"),
    "qk_norm": (gdn_config(4, attn={"layers": [1], "num_heads": 4, "qk_norm": True}), "attn.qk_norm=True"),
    "unknown_key": (gdn_config(norm_first=False), "norm_first"),
    "attn_layer": (gdn_config(attn={"layers": [7], "num_heads": 4}), "attn.layers"),
    "two_windows": (gdn_config(4, attn=[{"layers": [1], "num_heads": 4, "window_size": 8},
                                        {"layers": [3], "num_heads": 4, "window_size": 16}]), "attn.window_size"),
    "hgrn2_conv": (hgrn2_config(use_short_conv=True), "use_short_conv=True"),
    "hgrn2_no_bounds": (hgrn2_config(use_lower_bound=False), "use_lower_bound=False"),
    "hgrn2_attention_first": (hgrn2_config(attn={"layers": [0], "num_heads": 4}), "attn.layers=\\[0\\]"),
    "hgrn2_ratio": (hgrn2_config(expand_ratio=24), "expand_ratio=24"),
    "gla_kv_heads": (gla_config(num_kv_heads=2), "num_kv_heads=2"),
    "gla_feature_map": (gla_config(feature_map="relu"), "feature_map='relu'"),
    "gla_conv": (gla_config(use_short_conv=True), "use_short_conv=True"),
    "gla_no_gate": (gla_config(use_output_gate=False), "use_output_gate=False"),
    "gla_clamp": (gla_config(clamp_min=-1.0), "clamp_min=-1.0"),
    "gla_expand": (gla_config(expand_k=0.3), "expand_k=0.3"),
    "delta_net_no_conv": (deltanet_config(use_short_conv=False), "use_short_conv=False"),
    "delta_net_no_beta": (deltanet_config(use_beta=False), "use_beta=False"),
    "delta_net_relu": (deltanet_config(qk_activation="relu"), "qk_activation='relu'"),
    "delta_net_sum_norm": (deltanet_config(qk_norm="sum"), "qk_norm='sum'"),
    "delta_net_shared_conv": (deltanet_config(share_conv_kernel=True), "share_conv_kernel=True"),
}


@pytest.mark.parametrize("case", BAD)
def test_bad_sources_are_refused_before_writing(tmp_path, case):
    config, named = BAD[case]
    (tmp_path / "fla").mkdir()
    (tmp_path / "fla" / "config.json").write_text(json.dumps(config))
    save_file({"unread": torch.zeros(1)}, tmp_path / "fla" / "model.safetensors")  # never read: config comes first
    with pytest.raises(ConversionError, match=named):
        convert(tmp_path / "fla", tmp_path / "memlm")
    assert not (tmp_path / "memlm").exists()
